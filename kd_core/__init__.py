"""kd_core: the pure-PyTorch distillation core: losses, models, data, trainer. No Ray or MLflow."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .losses import distillation_loss
from .metrics import EpochMetrics
from .models import build_model
from .train import Trainer, init_model, load_model, train

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "TrainConfig",
    "distillation_loss",
    "EpochMetrics",
    "build_model",
    "Trainer",
    "init_model",
    "load_model",
    "train",
]
