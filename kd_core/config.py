"""The one typed config for a training run; defaults are the paper's CIFAR-100 recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .losses import check_loss_params


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # conv/linear weights only; BatchNorm and biases undecayed
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs` where lr *= lr_gamma
    lr_gamma: float = 0.1
    loss: str = "ce"  # "ce" for teachers and baselines; "kl" or "mse" to distil
    tau: float = 1.0
    alpha: float = 1.0
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

    def __post_init__(self):
        check_loss_params(self.loss, self.tau, self.alpha)
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if any(not 0 < m <= 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions in (0, 1], got {self.lr_milestones}")
        if self.teacher_bank not in ("auto", "on", "off"):
            raise ValueError(f"teacher_bank must be auto, on or off, got {self.teacher_bank!r}")
        if self.bank_dtype not in ("float16", "float32"):
            raise ValueError(f"bank_dtype must be float16 or float32, got {self.bank_dtype!r}")
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(m * self.epochs)) for m in self.lr_milestones})

    def to_dict(self) -> dict:
        return asdict(self)
