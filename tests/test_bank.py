"""The exact teacher-logit bank: the same logits, losses and gradients as the online teacher."""

import pytest
import torch

from kd_core import TrainConfig
from kd_core.bank import TeacherBank, bank_for, logit_source
from kd_core.data import draw_views, load_dataset, render_views
from kd_core.losses import distillation_loss
from kd_core.train import Trainer, init_model


@pytest.fixture(scope="session")
def setup(tmp_path_factory, worker_id):
    """The teacher (seeded) and its two banks (about 15 s of CPU each on 2 cores): built once
    per test run by the first test process to ask, under a file lock, and read by the other
    (xdist) from their tensor-only state (xdist's how-to for a session fixture executed once)."""
    from filelock import FileLock

    data = load_dataset("synthetic", n_train=24, n_test=8, num_classes=10)  # crop 4 + flip
    torch.manual_seed(0)
    teacher = init_model("cnn-medium", data, seed=0).eval()
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # the run's own, shared by workers
    path = root / "test_bank.pt"
    with FileLock(str(root / "test_bank.lock")):
        if not path.exists():
            banks = [bank_for(teacher, data, "cpu", dtype) for dtype in (torch.float32,
                                                                           torch.float16)]
            torch.save([b.state_dict() for b in banks], root / "test_bank.pt.tmp")
            (root / "test_bank.pt.tmp").rename(path)
            return data, teacher, *banks
    bank32, bank16 = (TeacherBank.from_state_dict(s) for s in torch.load(path, weights_only=True))
    return data, teacher, bank32, bank16


def _online(teacher, data, idx, views):
    tr = Trainer(init_model("cnn-small", data, 0), data, TrainConfig(epochs=1))
    x = tr.prepare(render_views(data.train_images[idx], views, data.augment))
    with torch.no_grad():
        return teacher(x), x


def test_bank_holds_every_view(setup):
    data, teacher, bank32, bank16 = setup
    assert bank32.logits.shape == (24, 162, 10) and bank16.logits.dtype == torch.float16
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 24, (64,), generator=g)
    views = draw_views(data.augment, 64, g, "cpu")
    online, _ = _online(teacher, data, idx, views)
    torch.testing.assert_close(bank32.epoch(idx, views, "cpu"), online, rtol=1e-5, atol=1e-5)
    half = bank16.epoch(idx, views, "cpu").float()
    torch.testing.assert_close(half, online, rtol=1e-2, atol=1e-2)
    all_views = torch.arange(162)
    first, _ = _online(teacher, data, torch.zeros(162, dtype=torch.long), all_views)
    torch.testing.assert_close(bank32.logits[0], first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss, tau", [("kl", 4.0), ("kl", float("inf")), ("mse", 1.0)])
def test_student_step_matches_online_teacher(setup, loss, tau):
    data, teacher, bank32, bank16 = setup
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 24, (16,), generator=g)
    views = draw_views(data.augment, 16, g, "cpu")
    z_t, x = _online(teacher, data, idx, views)
    student = init_model("cnn-small", data, 0)

    def step(z):
        student.zero_grad()
        out = distillation_loss(student(x), z, None, loss=loss, tau=tau)
        out.backward()
        return out.detach(), [p.grad.clone() for p in student.parameters()]

    ref_loss, ref_grads = step(z_t)
    for bank, tol in ((bank32, 1e-5), (bank16, 2e-2)):
        b_loss, b_grads = step(bank.epoch(idx, views, "cpu").float())
        torch.testing.assert_close(b_loss, ref_loss, rtol=tol, atol=tol)
        for a, b in zip(b_grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_short_training_run_matches_online(setup):
    data, teacher, bank32, _ = setup
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, loss="kl", tau=4.0, teacher_bank="off")
    online = Trainer(init_model("cnn-small", data, 0), data, cfg, teacher=teacher)
    banked = Trainer(init_model("cnn-small", data, 0), data, cfg, bank=bank32)
    assert (online.logit_source, banked.logit_source) == ("online", "shared")
    # the trainer reads the bank where it lies (a mapped file, shared): no copy of it is made
    assert banked.teacher.logits.data_ptr() == bank32.logits.data_ptr()
    h_online, h_bank = list(online.epochs()), list(banked.epochs())
    for a, b in zip(online.model.state_dict().values(), banked.model.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)
    assert h_online[-1].train_loss == pytest.approx(h_bank[-1].train_loss, rel=1e-4)


def test_bank_round_trips_through_a_tensor_only_state(setup):
    _, _, bank32, _ = setup
    again = TeacherBank.from_state_dict(bank32.state_dict())
    assert torch.equal(again.logits, bank32.logits) and again.augment == bank32.augment


def test_auto_picks_the_cheaper_path_and_on_respects_the_budget(setup):
    data, teacher, _, _ = setup
    digits = load_dataset("digits")
    small = init_model("cnn-small", digits, 0)
    t = init_model("cnn-medium", digits, 0)
    kd = dict(loss="kl", tau=4.0, epochs=4)
    # digits has one view per image: a bank is one teacher pass, always cheaper
    assert Trainer(small, digits, TrainConfig(**kd), teacher=t).logit_source == "private"
    # 162 views for 4 epochs: online is cheaper for a single student
    s = init_model("cnn-small", data, 0)
    assert Trainer(s, data, TrainConfig(**kd), teacher=teacher).logit_source == "online"
    assert Trainer(s, data, TrainConfig(**kd, teacher_bank="on"), teacher=teacher).logit_source \
        == "private"
    with pytest.raises(ValueError, match="bank_budget_gb"):
        Trainer(s, data, TrainConfig(**kd, teacher_bank="on", bank_budget_gb=1e-6),
                teacher=teacher)


def test_teacher_path_counts_students_epochs_views_and_memory():
    gib = 2**30
    cifar = dict(n_views=162, bank_bytes=int(1.51 * gib), budget_bytes=4 * gib)
    # the paper's generation-0 teacher: 18 students x 200 epochs dwarf 162 views: one bank
    assert logit_source(18, 200, **cifar)[0] == "shared"
    # a generation-1 teacher with one student: 200 epochs < 2 x 162 views: online, no bank
    path, why = logit_source(1, 200, **cifar)
    assert path == "online" and "does not pay" in why
    # one student that trains long enough builds a bank of its own (never published)
    assert logit_source(1, 400, **cifar)[0] == "private"
    # two students, 100 epochs each: 200 < 1.5 x 162, and each alone is short: online
    assert logit_source(2, 100, **cifar)[0] == "online"
    # memory: a bank over the budget is never built; "on" then refuses
    assert logit_source(18, 200, 162, 5 * gib, 4 * gib)[0] == "online"
    with pytest.raises(ValueError, match="bank_budget_gb"):
        logit_source(18, 200, 162, 5 * gib, 4 * gib, mode="on")
    assert logit_source(18, 200, **cifar, mode="off")[0] == "online"
    assert logit_source(1, 10, **cifar, mode="on")[0] == "private"
