"""Two distillation losses from the literature, as a kdsweep plugin: one file, one line of YAML
(``plugins: [kd_losses.py]``) and their names in ``grid.loss``.

Each gets the student's logits (fp32), the teacher's (detached) and the labels, plus the params
it declares: ``tau`` and ``alpha`` from the grid's own fields, any other from ``grid.params``
(or its default here).
"""

import torch
import torch.nn.functional as F

import kd_core


@kd_core.register_loss("rkl", params=("tau", "alpha"))
def reverse_kl(student_logits, teacher_logits, targets, *, tau, alpha):
    """Reverse KL, tau^2 KL(p_s || p_t) (mode-seeking; Wu et al. 2024 compare it for LLMs),
    mixed with CE on the labels as kdsweep's kl is: (1 - alpha) CE + alpha tau^2 KL."""
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits / tau, dim=1)
    kd = F.kl_div(log_p_t, log_p_s, reduction="batchmean", log_target=True) * tau**2
    if alpha == 1.0:
        return kd
    return (1.0 - alpha) * F.cross_entropy(student_logits, targets) + alpha * kd


@kd_core.register_loss("dkd", params=("tau", "alpha", "beta"))
def decoupled_kd(student_logits, teacher_logits, targets, *, tau, alpha, beta=8.0):
    """Decoupled KD (Zhao et al., CVPR 2022): tau^2 (alpha TCKD + beta NCKD). TCKD is the KL of
    the binary target / non-target split; NCKD the KL among the non-target classes. Here alpha
    is DKD's own TCKD weight (the grid's alpha; 1 in the paper) and beta its NCKD weight (8 on
    CIFAR-100); the labels pick the target class."""
    target = F.one_hot(targets, student_logits.shape[1]).bool()
    p_s = F.softmax(student_logits / tau, dim=1)
    p_t = F.softmax(teacher_logits / tau, dim=1)
    # target / non-target probabilities: (batch, 2)
    b_s = split(p_s, target)
    b_t = split(p_t, target)
    tckd = (b_t * (b_t.clamp_min(1e-12).log() - b_s.clamp_min(1e-12).log())).sum(1).mean()
    # among the non-target classes: the target's logit pushed out of the softmax
    masked_s = (student_logits / tau).masked_fill(target, -1e9)
    masked_t = (teacher_logits / tau).masked_fill(target, -1e9)
    nckd = F.kl_div(F.log_softmax(masked_s, dim=1), F.log_softmax(masked_t, dim=1),
                    reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * tau**2


def split(p, target):
    """(batch, 2): the probability of the target class and of all the others."""
    pt = (p * target).sum(1, keepdim=True)
    return torch.cat([pt, 1 - pt], dim=1)
