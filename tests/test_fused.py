"""Fused siblings (kd_core/fused.py): a member's trajectory is that of separate training,
bit-for-bit in float64 on the CPU: weights, BatchNorm running statistics, optimizer state (weight
decay, momentum), the LR schedule, the generator and every epoch's metrics."""

import contextlib
import math

import pytest
import torch

import kd_core.fused as kd_fused
from kd_core import metrics
from kd_core.bank import bank_for
from kd_core.checkpoint import load_checkpoint
from kd_core.config import TrainConfig
from kd_core.data import synthetic
from kd_core.fused import FusedGroup, fit_group
from kd_core.loop import CheckpointFile
from kd_core.train import Trainer, init_model

# KL at a finite and an infinite tau, and MSE with a label term: one group
SETTINGS = [("kl", 4.0, 1.0), ("kl", math.inf, 1.0), ("mse", 1.0, 0.9)]
STEPS = 10  # per epoch: 2 epochs are 20 steps, the LR dropping after the first (milestone 0.5)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def setup(model: str, channels: int, banked: bool, epochs: int = 2, validation: float = 0.0,
          eval_every: int = 1, cousins: bool = False):
    """``make()`` builds one trainer per setting; siblings share one teacher, ``cousins``
    each have their own (a bank each, or an online teacher each)."""
    data = synthetic(n_train=STEPS * 8, n_test=24, num_classes=10, image_size=8,
                     channels=channels)
    if validation:
        data = data.with_validation(validation, 3)
    teachers = [init_model(model, data, 99 + i) for i in range(len(SETTINGS) if cousins else 1)]
    banks = [bank_for(t, data, "cpu", dtype=torch.get_default_dtype()) if banked else None
             for t in teachers]

    def make(settings=SETTINGS, seed=3):
        return [Trainer(init_model(model, data, seed), data,
                        TrainConfig(epochs=epochs, batch_size=8, lr=0.05, loss=loss, tau=tau,
                                    alpha=alpha, seed=seed, device="cpu", teacher_bank="off",
                                    lr_milestones=(0.5,), eval_every=eval_every),
                        teacher=None if banked else teachers[i % len(teachers)],
                        bank=banks[i % len(banks)])
                for i, (loss, tau, alpha) in enumerate(settings)]

    return make


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("_time")} for h in history]


def assert_same(a: Trainer, b: Trainer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for name, t in sa["model"].items():  # BatchNorm running stats and counts among them
        assert torch.equal(t, sb["model"][name]), f"{a.config.loss}/{a.config.tau}: {name}"
    for i, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], sb["optimizer"]["state"][i]["momentum_buffer"])
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
    assert sa["scheduler"] == sb["scheduler"]
    assert torch.equal(sa["generator"], sb["generator"])
    assert sa["epoch"] == sb["epoch"]
    assert untimed(sa["history"]) == untimed(sb["history"])


@pytest.mark.parametrize("model,channels,banked,cousins", [
    ("cnn-small", 1, True, False), ("wrn-10-1", 3, False, False),
    ("cnn-small", 1, True, True), ("wrn-10-1", 3, False, True)])
def test_fused_is_separate_training_bit_for_bit_in_float64(float64, model, channels, banked,
                                                           cousins):
    """Siblings (one teacher) and cousins (a teacher each: a bank each, or an online teacher
    each; the members read their own teacher's logits every batch)."""
    make = setup(model, channels, banked, cousins=cousins)
    separate = make()
    for t in separate:
        list(t.epochs())
    fused = make()
    seen = [(t.config.loss, t.config.tau, m.epoch) for t, m in FusedGroup(fused).epochs()]
    assert sorted(seen) == sorted((s[0], s[1], e) for s in SETTINGS for e in (1, 2))
    assert separate[0].history[-1]["lr"] < separate[0].history[0]["lr"]  # the schedule stepped
    assert separate[0].state_dict()["optimizer"]["param_groups"][0]["weight_decay"] > 0
    for a, b in zip(separate, fused, strict=True):
        assert_same(a, b)
    # the members did learn different things (the test could not pass by sharing weights)
    w = [t.model.head.weight for t in fused]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    if cousins:  # each member did read its own teacher: theirs differ
        assert len({id(t.teacher) for t in fused}) == len(fused)
        assert not torch.equal(fused[0]._teacher_test(), fused[1]._teacher_test())


def test_validation_split_and_sparse_evaluation_match_too(float64):
    """A held-out validation split and evaluation every other epoch: the fused group's one
    evaluation pass gives each member the metrics its own would."""
    make = setup("cnn-small", 1, banked=False, epochs=3, validation=0.25, eval_every=2)
    separate, fused = make(), make()
    for t in separate:
        list(t.epochs())
    list(FusedGroup(fused).epochs())
    assert "val_acc" in separate[0].history[1] and "test_acc" not in separate[0].history[0]
    for a, b in zip(separate, fused, strict=True):
        assert_same(a, b)


def test_members_at_other_epochs_catch_up_and_a_dropped_member_stops(float64):
    """A group formed after a preemption: one member resumed at epoch 1, one fresh; the fresh
    one trains alone until it catches up, then both train fused. A member dropped after its
    first epoch trains no more; the others go on."""
    make = setup("cnn-small", 1, banked=True, epochs=3)
    separate = make()
    for t in separate:
        list(t.epochs())
    resumed = make()
    ahead = make()[0]
    next(ahead.epochs())  # member 0 trained epoch 1 before the kill
    resumed[0].load_state_dict(ahead.state_dict())
    group = FusedGroup(resumed)
    order = []
    for t, m in group.epochs():
        order.append((resumed.index(t), m.epoch))
        if t is resumed[2] and m.epoch == 1:
            group.drop(t)
    assert order[:2] == [(1, 1), (2, 1)]  # the fresh ones first, alone
    assert sorted(order[2:]) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert_same(separate[0], resumed[0])
    assert_same(separate[1], resumed[1])
    assert resumed[2].epoch == 1


def test_float32_fused_matches_to_rounding():
    make = setup("cnn-small", 1, banked=True, epochs=1)
    separate, fused = make(), make()
    for t in separate:
        list(t.epochs())
    list(FusedGroup(fused).epochs())
    for a, b in zip(separate, fused, strict=True):
        for name, p in a.model.state_dict().items():
            if p.is_floating_point():
                torch.testing.assert_close(p, b.model.state_dict()[name], rtol=1e-3, atol=1e-4)


def test_float32_fused_evaluation_is_each_members_own_to_rounding(monkeypatch):
    """The group's one fused pass per split, in chunks (here 3 over 24 test images), gives
    each member the test metrics its own model's pass gives, to float32 rounding."""
    monkeypatch.setattr(kd_fused, "EVAL_CHUNK_CPU", 10)
    members = setup("cnn-small", 1, banked=True, epochs=1)()
    seen = {}
    for t, m in FusedGroup(members).epochs():
        own = metrics.test_metrics(t._predict(t.model, t.x_test), t.y_test, t._teacher_test())
        assert own.keys() <= m.as_dict().keys()
        for k, v in own.items():
            assert getattr(m, k) == pytest.approx(v, rel=1e-5, abs=1e-6), k
        seen[t.config.loss, t.config.tau] = m.test_loss
    assert len(set(seen.values())) == len(SETTINGS)  # each member's own logits, not one's


def test_only_siblings_fuse():
    make = setup("cnn-small", 1, banked=True, epochs=1)
    with pytest.raises(ValueError, match="seed"):
        FusedGroup([*make(SETTINGS[:1]), *make(SETTINGS[1:2], seed=4)])


def test_a_diverged_member_leaves_and_its_siblings_are_untouched(float64):
    """NaN weights in one member (its epoch 2 diverges): it is published diverged and leaves;
    the others train on, still bit-for-bit separate training (nothing leaks across members)."""
    make = setup("cnn-small", 1, banked=True, epochs=3)
    separate = make()
    for t in separate:
        list(t.epochs())
    members = make()
    published = {}

    def poison(t, epoch):
        if t is members[1] and epoch == 1:
            with torch.no_grad():
                t.model.head.weight.fill_(math.nan)

    ends = [(members.index(t), m.epoch, p.get("state")) for t, m, p in fit_group(
        FusedGroup(members), {t: CheckpointFile(None) for t in members},
        publish=lambda t, outcome: published.setdefault(members.index(t), outcome) and
        {"state": outcome.state}, after_epoch=poison)]
    assert published[1].state == "diverged" and members[1].epoch == 2
    assert (1, 2, "diverged") in ends and not any(i == 1 and e == 3 for i, e, _ in ends)
    assert published[0].state == published[2].state == "done"
    assert_same(separate[0], members[0])
    assert_same(separate[2], members[2])


class Killed(Exception):
    pass


def test_a_group_killed_mid_run_resumes_each_member_from_its_own_checkpoint(float64, tmp_path):
    """A fused group dies after member 0 saved epoch 2 (members 1 and 2 trained it, not yet
    saved); the rerun loads each member's own checkpoint (0 at epoch 2, the others at 1), trains
    each epoch it lacks once, and ends bit-for-bit where uninterrupted separate runs end."""
    make = setup("cnn-small", 1, banked=True, epochs=3)
    separate = make()
    for t in separate:
        list(t.epochs())
    files = [tmp_path / f"m{i}.pt" for i in range(3)]

    def run(members, kill_at=None):
        trained = []

        def after(t, epoch):
            trained.append((members.index(t), epoch))
            if (members.index(t), epoch) == kill_at:
                raise Killed
        for t, f in zip(members, files, strict=True):
            if f.exists():
                t.load_state_dict(load_checkpoint(f))
        cps = {t: CheckpointFile(f) for t, f in zip(members, files, strict=True)}
        with contextlib.suppress(Killed):
            for _ in fit_group(FusedGroup(members), cps, after_epoch=after):
                pass
        return trained

    assert run(make(), kill_at=(0, 2))[-1] == (0, 2)
    assert [load_checkpoint(f)["epoch"] for f in files] == [2, 1, 1]
    resumed = make()
    trained = run(resumed)
    assert sorted(trained) == [(0, 3), (1, 2), (1, 3), (2, 2), (2, 3)]  # each lacking epoch once
    for a, b in zip(separate, resumed, strict=True):
        assert_same(a, b)
