"""The one typed config for a training run; defaults are the paper's CIFAR-100 recipe.

This is the single home of the recipe: each field's default and reason are here, the checks in
``__post_init__`` are the only recipe rules, and the sweep spec's ``train`` section is derived
from these fields (sweeps/domain/spec/), so ``kdsweep plan`` applies the same rules before any work.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .names import check_loss_params

# The training step's modes and the bf16 / channels_last switches (kd_core/capture.py runs them)
STEPS = ("eager", "compiled", "graphs")
SWITCHES = ("auto", "on", "off")  # auto: on a GPU only

# Fields that describe one trial or how it executes, not the recipe shared by a sweep (the
# spec's grid or the worker sets them; none is part of a trial's key).
PER_RUN = ("loss", "tau", "alpha", "loss_params", "seed", "device", "step", "bf16",
           "channels_last")


# (field, lowest, highest) of the whole-number fields: BatchNorm cannot train on a batch of
# one; the upper bounds are far past any real recipe (the paper: 200 epochs, batch 128) and
# catch a typo before it allocates a batch or plans years of epochs.
LIMITS = (("epochs", 1, 100_000), ("batch_size", 2, 65_536), ("eval_every", 1, 100_000))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128  # >= 2: BatchNorm cannot train on a batch of one
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # conv/linear weights only; BatchNorm and biases undecayed
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs` where lr *= lr_gamma
    lr_gamma: float = 0.1
    loss: str = "ce"  # "ce" for teachers and baselines; "kl" or "mse" to distil
    tau: float = 1.0
    alpha: float = 1.0
    # a registered loss's params beyond tau and alpha (kd_core.registry), as (name, value) pairs
    loss_params: tuple[tuple[str, float], ...] = ()
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    eval_every: int = 1  # test-set evaluation interval in epochs (the last epoch always)
    # Students: read teacher logits from a bank of every augmented view instead of running the
    # teacher. "auto": when it fits bank_budget_gb and building it (one teacher pass per view)
    # is cheaper than running the teacher every epoch; "on": always (error if it does not fit).
    teacher_bank: str = "auto"
    compile: bool = False  # torch.compile the student's training forward (worth it on GPUs)
    bank_dtype: str = "float16"
    bank_budget_gb: float = 4.0
    # How the training step executes (kd_core/capture.py; issue 44 item 4). "eager" until a
    # GPU measurement says another pays: "compiled" (torch.compile of forward + loss) and
    # "graphs" (the same as CUDA graphs, CUDA only; eager elsewhere) are measured by
    # benchmarks/students_per_gpu.py in the GPU suite, not yet run on a device; on CPUs the
    # step is launch-free enough that compiling costs more (18 s per architecture) than it
    # saves in the demo's minutes.
    step: str = "eager"
    # bf16 autocast and channels_last: "auto" is on a GPU only (the fast path the 2026-12-04
    # H200 figures were measured with); a CPU stays float32 and contiguous, so a resumed run is
    # bit-exact there. "on" / "off" force either, for measuring it.
    bf16: str = "auto"
    channels_last: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "loss_params", tuple(tuple(p) for p in self.loss_params))
        check_loss_params(self.loss, self.tau, self.alpha, dict(self.loss_params))
        for name, low, high in LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"{name}: must be a whole number from {low} to {high}, got {value!r}"
                )
        for name in ("lr", "lr_gamma", "bank_budget_gb"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: must be in [0, 1), got {self.momentum}")
        ms = tuple(self.lr_milestones)
        if any(not 0 < m <= 1 for m in ms) or list(ms) != sorted(set(ms)):
            raise ValueError(
                f"lr_milestones: increasing fractions of the epochs in (0, 1], got {list(ms)}"
            )
        if self.teacher_bank not in ("auto", "on", "off"):
            raise ValueError(f"teacher_bank: must be auto, on or off, got {self.teacher_bank!r}")
        if self.bank_dtype not in ("float16", "float32"):
            raise ValueError(f"bank_dtype: must be float16 or float32, got {self.bank_dtype!r}")
        object.__setattr__(self, "lr_milestones", ms)
        for name, allowed in (("step", STEPS), ("bf16", SWITCHES),
                              ("channels_last", SWITCHES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(m * self.epochs)) for m in self.lr_milestones})

    def to_dict(self) -> dict:
        return asdict(self)
