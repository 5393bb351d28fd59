"""The paper's per-epoch metrics and the evaluation pass that produces them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class EpochMetrics:
    epoch: int  # 1-based: the number of epochs completed
    lr: float
    train_loss: float
    train_acc: float  # against the labels trained on (noisy when noise is on)
    train_acc_clean: float  # against the clean labels
    epoch_time: float  # seconds of wall time for the epoch, evaluation included
    train_time: float = 0.0  # seconds of the training pass alone
    test_loss: float | None = None
    test_acc: float | None = None
    test_ece: float | None = None
    # On the validation set held out of the training split (a run with one), its labels as
    # trained: what a search may select on; the test set never is.
    val_loss: float | None = None
    val_acc: float | None = None
    # Students only: distance to / agreement with the teacher.
    logit_distance: float | None = None  # mean ||z_s - z_t||_2 over this epoch's training views
    test_logit_distance: float | None = None
    test_agreement: float | None = None  # top-1 agreement with the teacher on the test set

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(conf.dtype)
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    which = torch.bucketize(conf, edges[1:-1])
    gap = torch.zeros(bins, device=probs.device, dtype=conf.dtype)
    gap.index_add_(0, which, conf - correct)
    return float(gap.abs().sum() / conf.numel())


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, prepare: Callable, batch_size: int):
    """Logits of ``model`` on raw ``images`` in eval mode, in fp32."""
    was_training = model.training
    model.eval()
    out = [
        model(prepare(images[i : i + batch_size])).float()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor, split: str
                      ) -> dict[str, float]:
    """Cross-entropy and accuracy on a held-out split, named ``<split>_loss``, ``<split>_acc``."""
    return {f"{split}_loss": float(F.cross_entropy(logits, labels)),
            f"{split}_acc": float((logits.argmax(1) == labels).float().mean())}


def val_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return loss_and_accuracy(logits, labels, "val")


def test_metrics(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None
) -> dict[str, float]:
    probs = logits.softmax(dim=1)
    out = {
        **loss_and_accuracy(logits, labels, "test"),
        "test_ece": expected_calibration_error(probs, labels),
    }
    if teacher_logits is not None:
        out["test_logit_distance"] = float((logits - teacher_logits).norm(dim=1).mean())
        out["test_agreement"] = float((logits.argmax(1) == teacher_logits.argmax(1)).float().mean())
    return out
