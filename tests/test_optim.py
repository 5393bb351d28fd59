"""kd_core.optim against torch.optim: the same weights, momentum buffers and rates, bit for bit,
step after step across the schedule's milestones; checkpoints of torch's classes load and go on
alike; and a process that trains never imports torch._dynamo (the ~1.3 CPU-s kd_core.optim
exists to save in every trial actor)."""

import io
import subprocess
import sys

import pytest
import torch
from torch import nn

from kd_core.optim import SGD, MilestoneLR
from kd_core.train import _param_groups
from testkit import HANG

STEPS, MILESTONES, GAMMA = 12, [3, 7, 7, 10], 0.2  # 7 twice: two cuts at once, as MultiStepLR


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 10))


def _pair(cls_opt, model, nesterov):
    groups = _param_groups(model, 5e-4)
    if cls_opt is torch.optim.SGD:
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=nesterov)
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, MILESTONES, GAMMA)
    opt = SGD(groups, lr=0.1, momentum=0.9, nesterov=nesterov)
    return opt, MilestoneLR(opt, MILESTONES, GAMMA)


def _epoch(model, opt, sched, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()


def _same(a: nn.Module, b: nn.Module, oa, ob) -> None:
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert torch.equal(oa.state[pa]["momentum_buffer"], ob.state[pb]["momentum_buffer"])
    assert [g["lr"] for g in oa.param_groups] == [g["lr"] for g in ob.param_groups]


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_and_its_schedule_are_torchs_bit_for_bit(nesterov):
    theirs, mine = _model(0), _model(0)
    opt_t, lr_t = _pair(torch.optim.SGD, theirs, nesterov)
    opt_m, lr_m = _pair(SGD, mine, nesterov)
    rates = []
    for step in range(STEPS):
        _epoch(theirs, opt_t, lr_t, step)
        _epoch(mine, opt_m, lr_m, step)
        _same(theirs, mine, opt_t, opt_m)
        rates.append(opt_m.param_groups[0]["lr"])
    assert len(set(rates)) == 4  # the rate was cut at 3, at 7 (twice at once) and at 10
    assert opt_m.state_dict()["param_groups"] == [
        {k: v for k, v in g.items() if k != "initial_lr"}
        for g in opt_t.state_dict()["param_groups"]]


def _checkpoint(model, opt, sched) -> dict:
    """What a checkpoint holds of a run, written and read back as kd_core's are (weights only)."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_a_checkpoint_of_torchs_classes_loads_and_goes_on_alike():
    """A checkpoint written before kd_core.optim (torch's state_dicts, through torch.save and
    a weights-only load), resumed mid-schedule, ends where torch's own run ends; and this
    class's state_dict round-trips the same way."""
    theirs = _model(1)
    opt_t, lr_t = _pair(torch.optim.SGD, theirs, True)
    for step in range(5):
        _epoch(theirs, opt_t, lr_t, step)
    saved = _checkpoint(theirs, opt_t, lr_t)

    mine = _model(2)  # other weights: all of them come from the checkpoint
    mine.load_state_dict(saved["model"])
    opt_m, lr_m = _pair(SGD, mine, True)
    opt_m.load_state_dict(saved["optimizer"])
    lr_m.load_state_dict(saved["scheduler"])
    again = _model(3)
    opt_a, lr_a = _pair(SGD, again, True)
    for step in range(5, STEPS):
        _epoch(theirs, opt_t, lr_t, step)
        _epoch(mine, opt_m, lr_m, step)
        if step == 8:  # this class's own checkpoint, mid-way
            own = _checkpoint(mine, opt_m, lr_m)
            again.load_state_dict(own["model"])
            opt_a.load_state_dict(own["optimizer"])
            lr_a.load_state_dict(own["scheduler"])
        elif step > 8:
            _epoch(again, opt_a, lr_a, step)
    _same(theirs, mine, opt_t, opt_m)
    _same(theirs, again, opt_t, opt_a)


def test_a_wrong_optimizer_state_is_refused():
    opt, _ = _pair(SGD, _model(0), True)
    state = opt.state_dict()
    state["param_groups"][0]["params"].pop()
    with pytest.raises(ValueError, match="different size"):
        opt.load_state_dict(state)


def test_training_imports_no_torch_dynamo():
    code = ("import sys\n"
            "from kd_core.config import TrainConfig\n"
            "from kd_core.data import load_dataset\n"
            "from kd_core.train import Trainer, init_model\n"
            "data = load_dataset('digits')\n"
            "cfg = TrainConfig(epochs=2, batch_size=256)\n"
            "t = Trainer(init_model('cnn-small', data, 0), data, cfg)\n"
            "for m in t.epochs(): pass\n"
            "t.load_state_dict(t.state_dict())\n"
            "print(*[m for m in ('torch._dynamo', 'sympy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=HANG / 2)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    assert out.stdout.decode().split() == []
