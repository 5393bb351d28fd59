import math
import pickle

import pytest
import torch

from kd_core import CheckpointError, TrainConfig, load_checkpoint, save_checkpoint
from kd_core.data import Augment, load_dataset
from kd_core.loop import train
from kd_core.run import RunSpec, build_trainer, load_run_data
from kd_core.train import Trainer, init_model, load_model


def _digits_teacher(epochs=4):
    data = load_dataset("digits")
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=0)
    trainer = Trainer(init_model("cnn-medium", data, 0), data, cfg)
    list(trainer.epochs())
    return trainer.model


@pytest.mark.parametrize("augment", [Augment(), Augment(padding=1, flip=True)])
def test_resume_is_bit_identical_to_uninterrupted(tmp_path, augment):
    teacher = _digits_teacher(2)
    spec = RunSpec(
        "digits",
        "cnn-small",
        TrainConfig(epochs=4, batch_size=64, lr=0.05, loss="kl", tau=4.0, seed=1),
        noise_rate=0.2,
        augment=augment,
    )
    data = load_run_data(spec)

    full, _ = build_trainer(spec, teacher, data)
    straight = list(full.epochs())

    ckpt = tmp_path / "ckpt.pt"
    first, _ = build_trainer(spec, teacher, data)
    for m in first.epochs():
        if m.epoch == 2:
            save_checkpoint(ckpt, first.state_dict())
            break
    resumed, _ = build_trainer(spec, teacher, data)  # a fresh process would start from here
    resumed.load_state_dict(load_checkpoint(ckpt))
    rest = list(resumed.epochs())

    assert [m.epoch for m in rest] == [3, 4]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    strip = lambda h: {k: v for k, v in h.items() if not k.endswith("_time")}  # noqa: E731
    assert [strip(h) for h in resumed.history] == [strip(h) for h in full.history]
    assert rest[-1].test_acc == straight[-1].test_acc


def test_train_generator_checkpoints_and_resumes(tmp_path):
    data = load_dataset("digits")
    cfg = TrainConfig(epochs=3, batch_size=128, lr=0.05)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    it = train(init_model("cnn-small", data, 0), data, cfg, checkpoint_path=ckpt)
    next(it)
    assert load_checkpoint(ckpt)["epoch"] == 1  # written before the epoch was reported
    del it
    rest = list(train(init_model("cnn-small", data, 0), data, cfg, checkpoint_path=ckpt))
    assert [m.epoch for m in rest] == [2, 3]
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 3 and len(state["history"]) == 3


def test_corrupt_or_truncated_checkpoint_names_the_file(tmp_path):
    data = load_dataset("digits")
    trainer = Trainer(init_model("cnn-small", data, 0), data, TrainConfig(epochs=1))
    good = tmp_path / "good.pt"
    save_checkpoint(good, trainer.state_dict())
    raw = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(bad)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/kdsweep-pwned", "w"))


def test_loading_never_executes_code(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "kdsweep-checkpoint-v1", "x": _Payload()}, evil, pickle_module=pickle)
    import os

    if os.path.exists("/tmp/kdsweep-pwned"):
        os.remove("/tmp/kdsweep-pwned")
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not os.path.exists("/tmp/kdsweep-pwned")


def test_load_model_rebuilds_the_architecture(tmp_path):
    model = _digits_teacher(1)
    data = load_dataset("digits")
    trainer = Trainer(model, data, TrainConfig(epochs=1))
    save_checkpoint(tmp_path / "t.pt", trainer.state_dict())
    again = load_model(tmp_path / "t.pt").eval()
    x = data.test_images[:8].float()
    torch.testing.assert_close(again(x), model.eval()(x))


def test_paper_recipe_is_the_default():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.nesterov) == (
        200,
        128,
        0.1,
        0.9,
        True,
    )
    assert cfg.weight_decay == 5e-4 and cfg.milestone_epochs() == [100, 150]
    data = load_dataset("digits")
    trainer = Trainer(init_model("cnn-small", data, 0), data, cfg)
    decayed, undecayed = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(
        p.ndim == 1 for p in undecayed["params"]
    )
    with pytest.raises(ValueError, match="tau"):
        TrainConfig(loss="kl", tau=0)
    with pytest.raises(ValueError, match="teacher"):
        Trainer(init_model("cnn-small", data, 0), data, TrainConfig(loss="kl"))


@pytest.mark.slow
def test_end_to_end_distillation_on_digits():
    """Teacher trained on digits; students distilled with kl (finite and inf tau) and mse."""
    data = load_dataset("digits")
    base = dict(epochs=12, batch_size=64, lr=0.05, seed=0)
    teacher = Trainer(init_model("cnn-large", data, 0), data, TrainConfig(**base))
    t_hist = [m.as_dict() for m in teacher.epochs()]
    assert t_hist[-1]["test_acc"] > 0.93
    assert "logit_distance" not in t_hist[-1]
    for loss, tau in (("kl", 4.0), ("kl", math.inf), ("mse", 1.0)):
        cfg = TrainConfig(**base, loss=loss, tau=tau)
        student = Trainer(init_model("cnn-medium", data, 0), data, cfg, teacher=teacher.model)
        hist = [m.as_dict() for m in student.epochs()]
        last = hist[-1]
        assert len(hist) == 12 and [h["epoch"] for h in hist] == list(range(1, 13))
        for key in (
            "train_loss",
            "train_acc",
            "train_acc_clean",
            "test_loss",
            "test_acc",
            "test_ece",
            "logit_distance",
            "test_logit_distance",
            "test_agreement",
            "epoch_time",
            "lr",
        ):
            assert key in last and math.isfinite(last[key]), (loss, key)
        for key in ("train_acc", "train_acc_clean", "test_acc", "test_ece", "test_agreement"):
            assert 0.0 <= last[key] <= 1.0
        assert last["test_acc"] > 0.85, (loss, tau, last["test_acc"])
        assert last["test_agreement"] > 0.85
        assert hist[-1]["test_logit_distance"] < hist[0]["test_logit_distance"]


def test_cli_train_writes_checkpoint_and_metrics(tmp_path, kdsweep_here):
    def kdsweep(*args):  # in this process: the command's behaviour, not its interpreter
        return kdsweep_here("train", *args)

    teacher = ["--model", "cnn-medium", "--epochs", "2", "--out", tmp_path / "t"]
    code, out, err = kdsweep(*teacher)
    assert code == 0, err
    assert "test_acc=" in out
    # the same command again resumes from its checkpoint: nothing left, the same result
    code, again, err = kdsweep(*teacher)
    assert code == 0, err
    assert again.split("test_acc=")[1] == out.split("test_acc=")[1]
    code, out, err = kdsweep("--model", "cnn-small", "--teacher", tmp_path / "t" / "checkpoint.pt",
                             "--loss", "mse", "--noise-rate", "0.4", "--epochs", "2",
                             "--out", tmp_path / "s")
    assert code == 0, err
    import json

    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["state"] == "done"
    assert 0.3 < metrics["realised_noise_rate"] < 0.5
    assert load_checkpoint(tmp_path / "s" / "checkpoint.pt")["epoch"] == 2
    code, _, err = kdsweep("--model", "cnn-small", "--loss", "kl", "--tau", "-1",
                           "--out", tmp_path / "x")
    assert code == 2 and "tau" in err
