"""Distillation objectives of Kim et al. (IJCAI 2021): CE, KL at any temperature, MSE on logits.

KL:  (1 - alpha) * CE(z_s, y) + alpha * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau))
MSE: (1 - alpha) * CE(z_s, y) + alpha * mean((z_s - z_t)^2)

tau = inf is the exact limit of tau^2 * KL (paper, Theorem 1): with d = z_s - z_t per sample,
    tau^2 * KL -> ||d - mean_k(d)||^2 / (2K),  whose gradient is (d - mean_k(d)) / K.
It is written as an ordinary differentiable loss, so the trainer needs no special case.

Each loss is registered by name (kd_core.registry.register_loss), as a plugin's losses are;
``distillation_loss`` calls the one registered under ``loss``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .names import LOSSES, check_loss_params  # noqa: F401 (kd_core.losses' API)
from .registry import loss_entry, register_loss


def kl_limit_inf(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """tau -> inf limit of tau^2 * KL: mean-shift-invariant logit matching, batch-mean."""
    d = student_logits - teacher_logits
    d = d - d.mean(dim=1, keepdim=True)
    return d.pow(2).sum(dim=1).mean() / (2 * d.shape[1])


def kl_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float
) -> torch.Tensor:
    """tau^2 * KL(softmax(z_t/tau) || softmax(z_s/tau)), batch-mean; tau may be inf."""
    if math.isinf(tau):
        return kl_limit_inf(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits / tau, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * tau**2


@register_loss("ce")
def cross_entropy(student_logits, teacher_logits, targets):
    """Labels only: teachers and baselines."""
    return F.cross_entropy(student_logits, targets)


def _mix(kd: torch.Tensor, student_logits, targets, alpha: float) -> torch.Tensor:
    if alpha == 1.0:
        return kd
    return (1.0 - alpha) * F.cross_entropy(student_logits, targets) + alpha * kd


@register_loss("kl", params=("tau", "alpha"))
def kl(student_logits, teacher_logits, targets, *, tau: float, alpha: float):
    return _mix(kl_divergence(student_logits, teacher_logits, tau), student_logits, targets, alpha)


@register_loss("mse", params=("alpha",))
def mse(student_logits, teacher_logits, targets, *, alpha: float):
    return _mix(F.mse_loss(student_logits, teacher_logits), student_logits, targets, alpha)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor | None,
    *,
    loss: str,
    tau: float = 1.0,
    alpha: float = 1.0,
    **params: float,
) -> torch.Tensor:
    """The training objective for one batch; teacher logits are treated as constants.

    loss="ce" ignores the teacher; "kl" and "mse" mix a label term with weight (1 - alpha); any
    other registered loss gets the params it declares (tau, alpha and ``params``).
    Computed in fp32 whatever the logits' dtype, so bf16 autocast cannot erode tau = inf.
    """
    check_loss_params(loss, tau, alpha, params)
    entry = loss_entry(loss)
    if student_logits.dim() != 2:
        raise ValueError(
            f"student_logits must be (batch, classes), got {tuple(student_logits.shape)}"
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 -> fp32; fp64 stays
    z_s = student_logits.to(dtype)
    # a plugin loss may read the labels whatever its alpha: hand them over when there are some
    needs_labels = loss == "ce" or alpha < 1.0
    if needs_labels:
        if targets is None:
            raise ValueError(f"loss={loss!r} with alpha={alpha} needs targets")
        if targets.shape != z_s.shape[:1]:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} does not match batch {z_s.shape[0]}"
            )
    fn = entry.load()
    if loss == "ce":
        return fn(z_s, None, targets)

    if teacher_logits is None:
        raise ValueError(f"loss={loss!r} needs teacher_logits")
    if teacher_logits.shape != z_s.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} != "
            f"student_logits shape {tuple(z_s.shape)}"
        )
    z_t = teacher_logits.detach().to(dtype)
    given = {"tau": tau, "alpha": alpha, **entry.defaults, **params}
    if missing := [p for p in entry.params if p not in given]:
        raise ValueError(f"loss {loss!r} takes {', '.join(missing)}, which has no default: "
                         "give a value")
    return fn(z_s, z_t, targets, **{p: given[p] for p in entry.params})
