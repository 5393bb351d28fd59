"""kd_core.profile: peak memory and step time of a short run, measured in a fresh process."""

import json
import subprocess
import sys

import pytest
import torch

from kd_core import TrainConfig
from kd_core.bank import bank_nbytes
from kd_core.data import load_dataset
from kd_core.profile import profile_run
from kd_core.run import RunSpec, build_trainer
from testkit import HANG

PROFILE = """
import json, sys
from kd_core import TrainConfig
from kd_core.profile import profile_run
from kd_core.data import load_dataset
from kd_core.run import RunSpec
cfg = TrainConfig(epochs=200, batch_size=64, loss="kl", tau=4.0, bank_dtype="float32")
spec = RunSpec("synthetic", "resnet-8", cfg)
data = load_dataset("synthetic", n_train=4096, n_test=64)
print(json.dumps(profile_run(spec, "resnet-8", sys.argv[1], steps=2, data=data).to_dict()))
"""


def _profile_in_fresh_process(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROFILE, path], capture_output=True, text=True,
                         timeout=HANG, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_a_private_bank_counts_in_the_peak_and_a_shared_one_does_not():
    data = load_dataset("synthetic", n_train=4096, n_test=64)
    nbytes = bank_nbytes(len(data.train_labels), data.augment, data.num_classes, torch.float32)
    assert nbytes > 250 * 2**20  # 4096 images x 162 views x 100 classes x fp32
    # A big parent: ru_maxrss would hand its peak to both children and hide the difference.
    ballast = torch.ones(2**28)  # 1 GiB, resident
    online = _profile_in_fresh_process("online")
    private = _profile_in_fresh_process("private")
    shared = _profile_in_fresh_process("shared")
    del ballast
    assert online["logit_source"] == "online" and private["logit_source"] == "private"
    assert online["device"] == "cpu" and online["context"] == 0
    # A private bank is the trial's own memory for the whole run: its bytes are in the peak.
    assert private["peak"] - online["peak"] > 0.7 * nbytes
    # A shared bank's pages are mapped from the node's cache file, held once by the node for
    # all the trials of its teacher: the trial's peak leaves them out.
    assert shared["peak"] - online["peak"] < 0.3 * nbytes
    for p in (online, private, shared):
        assert p["step_seconds"] > 0 and p["eval_seconds"] > 0
        assert p["steps_per_epoch"] == 4096 // 64 and p["peak"] < p["device_total"]


def test_profile_counts_no_epoch_and_checks_its_arguments():
    spec = RunSpec("digits", "cnn-small", TrainConfig(epochs=5, batch_size=64))
    trainer, _ = build_trainer(spec)
    step_s, eval_s = trainer.time_steps(3)
    assert step_s > 0 and eval_s > 0 and trainer.epoch == 0 and trainer.history == []
    p = profile_run(spec, steps=3)
    assert p.logit_source is None and p.epoch_seconds == pytest.approx(
        p.steps_per_epoch * p.step_seconds + p.eval_seconds)
    student = RunSpec("digits", "cnn-small", TrainConfig(epochs=5, loss="mse"))
    with pytest.raises(ValueError, match="logit_source online, private or shared"):
        profile_run(student, "cnn-large", None)
