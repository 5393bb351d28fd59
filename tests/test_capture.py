"""The training step compiled (kd_core/capture.py): the single and the fused step give eager
training's trajectory to float32 rounding; CUDA graphs stay off a CPU; the settings are checked
and are no part of the recipe a trial's key is made of."""

import math

import pytest
import torch

from kd_core.bank import bank_for
from kd_core.capture import compile_unavailable, resolve
from kd_core.config import TrainConfig
from kd_core.data import synthetic
from kd_core.fused import FusedGroup
from kd_core.train import Trainer, init_model
from sweeps.domain.spec.sections import TrainSpec

SETTINGS = [("kl", 4.0, 1.0), ("kl", math.inf, 1.0), ("mse", 1.0, 0.9)]
BATCH, STEPS = 8, 4  # one epoch of 4 full batches: one shape, one compilation


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture
def inductor():
    """torch.compile where it can run (else the test is skipped, saying why), compiling in
    this process: no pool of compile workers to start on a busy machine."""
    if reason := compile_unavailable():
        pytest.skip(reason)
    import torch._inductor.config as config

    with config.patch(compile_threads=1):
        yield


def make(step: str, settings=SETTINGS):
    data = synthetic(n_train=BATCH * STEPS, n_test=16, num_classes=10, image_size=8,
                     channels=1)
    bank = bank_for(init_model("cnn-small", data, 99), data, "cpu")
    return [Trainer(init_model("cnn-small", data, 3), data,
                    TrainConfig(epochs=2, batch_size=BATCH, lr=0.05, loss=loss, tau=tau,
                                alpha=alpha, seed=3, device="cpu", lr_milestones=(0.5,),
                                step=step), bank=bank)
            for loss, tau, alpha in settings]


def assert_close_training(eager: list[Trainer], compiled: list[Trainer]) -> None:
    for a, b in zip(eager, compiled, strict=True):
        sb = b.model.state_dict()
        for name, t in a.model.state_dict().items():  # weights and BatchNorm statistics
            if t.is_floating_point():
                torch.testing.assert_close(t, sb[name], rtol=1e-3, atol=1e-4, msg=name)
            else:
                assert torch.equal(t, sb[name]), name
        for ha, hb in zip(a.history, b.history, strict=True):
            assert math.isclose(ha["train_loss"], hb["train_loss"], rel_tol=1e-3, abs_tol=1e-5)
        assert a.epoch == b.epoch == 2
    w = [t.model.head.weight for t in compiled]  # the members learnt different things
    assert len(w) == 1 or not torch.equal(w[0], w[1])


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_single_step_is_eager_training_to_float32_rounding(inductor):
    eager, compiled = make("eager", SETTINGS[2:]), make("compiled", SETTINGS[2:])
    before = compiled_graphs()
    for t in eager + compiled:
        list(t.epochs())
    # it compiled, once (two epochs, one shape): not eager under another name, and not
    # recompiled each step (after Dynamo's limit of recompilations it would run eager)
    assert compiled_graphs() - before == 1
    assert_close_training(eager, compiled)


@pytest.mark.slow
def test_compiled_fused_step_is_eager_fused_training_to_float32_rounding(inductor):
    eager, compiled = make("eager"), make("compiled")
    before = compiled_graphs()
    list(FusedGroup(eager).epochs())
    list(FusedGroup(compiled).epochs())
    assert compiled_graphs() - before == 1  # once, not each step (fused.FusedModel.count_step)
    assert_close_training(eager, compiled)


def test_cuda_graphs_and_the_gpu_switches_stay_off_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    e = resolve("graphs", "auto", "auto", cpu)  # a CPU keeps today's path
    assert (e.step, e.autocast, e.memory_format) == ("eager", False, torch.contiguous_format)
    g = resolve("graphs", "auto", "auto", cuda)  # nothing touches a device: a plan only
    assert (g.step, g.autocast, g.memory_format) == ("graphs", True, torch.channels_last)
    off = resolve("compiled", "off", "off", cuda)
    assert (off.step, off.autocast, off.memory_format) == ("compiled", False,
                                                            torch.contiguous_format)
    assert resolve("eager", "on", "on", cpu).autocast  # forced, for measuring it
    t = make("graphs", SETTINGS[:1])[0]
    assert t.execution.step == "eager" and t.step_loss == t._step_loss


@pytest.mark.parametrize("field,value", [("step", "cudagraphs"), ("bf16", True),
                                         ("channels_last", "yes")])
def test_a_bad_setting_is_one_line_naming_its_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be one of"):
        TrainConfig(**{field: value})


def test_step_settings_are_no_part_of_a_sweeps_recipe():
    """How a step executes is not what a trial learns: not in the spec's `train` section, so
    not in a trial's key (tests/test_plan.py holds the keys from before)."""
    assert not {"step", "bf16", "channels_last"} & set(TrainSpec.model_fields)
    assert TrainConfig().step == "eager"  # off until a GPU measurement says it pays
