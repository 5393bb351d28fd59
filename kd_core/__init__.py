"""kd_core: the pure-PyTorch distillation core: losses, models, data, trainer. No Ray or MLflow.

The names below load their module on first use (PEP 562), so that importing a light module such
as kd_core.names or kd_core.config (a spec check, `kdsweep status`) does not import torch.
"""

from importlib import import_module

_API = {
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainConfig": "config",
    "distillation_loss": "losses",
    "EpochMetrics": "metrics",
    "build_model": "models",
    "Trainer": "train",
    "init_model": "train",
    "load_model": "train",
    "train": "train",
    "register_loss": "registry",
    "register_model": "registry",
    "register_dataset": "registry",
    "load_plugin": "registry",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'kd_core' has no attribute {name!r}")
