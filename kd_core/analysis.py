"""The paper's analyses of a trained student and its teacher (Kim et al. 2021, section 4), run once
on the final models in eval mode:

- logit matching: the distribution over samples of ||z_s - z_t||_2, on the unaugmented training
  set and on the test set (the per-epoch `logit_distance` is a running mean over augmented views
  in train mode: a training signal, not this measure);
- the penultimate feature norm ||r||_2, and a 2-D projection of three classes' penultimate
  features onto the plane through those classes' templates (rows of the final linear layer);
- the teacher's predictive entropy, and the top-label distance: z_true - z_runner_up when the
  prediction is right, z_true - z_top1 when it is wrong;
- the similarity of the student's penultimate features to the teacher's as one number, linear
  CKA (Kornblith et al. 2019): the projections' "keeps the teacher's shape" made measurable
  (1 = the same up to rotation and scale; it compares features of different widths).

Pure tensors in, plain numbers and lists out (JSON-ready); and per test image, compact arrays
(``predictions``: the predicted class, its probability, the true class's probability, the
teacher's predicted class; float16 logits on request) for paired tests between arms on the same
images, per-class views and reliability diagrams.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# The scalars `Trainer.analyse` returns, each for the "train" and "test" split: the names
# results and reports carry (train_logit_distance_median, test_feature_norm, ...).
MEASURES = (
    "logit_distance_mean",
    "logit_distance_q25",
    "logit_distance_median",
    "logit_distance_q75",
    "feature_norm",
    "entropy",
    "top_label_distance",
    "teacher_entropy",
    "teacher_top_label_distance",
    "feature_cka",
)
SCALARS = tuple(f"{split}_{m}" for split in ("train", "test") for m in MEASURES)
HIST_BINS = 40
PROJECTION_CLASSES = (0, 1, 2)
PROJECTION_POINTS = 200  # per class: enough to see a cluster's shape, small as JSON


@torch.no_grad()
def outputs(model: torch.nn.Module, images: torch.Tensor, prepare: Callable, batch_size: int):
    """(logits, penultimate features) of ``model`` on raw ``images``, in eval mode, fp32."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        z, r = model(prepare(images[i : i + batch_size]), return_features=True)
        logits.append(z.float())
        feats.append(r.float().flatten(1))
    model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


def logit_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||z_s - z_t||_2 per sample."""
    return (student - teacher).norm(dim=1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per sample."""
    logp = logits.log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def top_label_distance(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_true - z_runner_up where the top-1 prediction is right, z_true - z_top1 where wrong."""
    top2 = logits.topk(2, dim=1)
    z_true = logits.gather(1, labels[:, None]).squeeze(1)
    right = top2.indices[:, 0] == labels
    other = torch.where(right, top2.values[:, 1], top2.values[:, 0])
    return z_true - other


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices over the same n samples (n x d1, n x d2), in float64:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with columns centred. The d x d form
    costs n * d1 * d2, never n^2 (50k CIFAR images)."""
    x, y = x.double(), y.double()
    x, y = x - x.mean(0), y - y.mean(0)
    cross = (y.T @ x).square().sum()
    norm = (x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt()
    return float(cross / norm) if norm > 0 else float("nan")


def describe(x: torch.Tensor) -> dict[str, float]:
    """Mean, median and quartiles of a distribution."""
    x = x.double()
    q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype))
    return {"mean": float(x.mean()), "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])}


def histogram(x: torch.Tensor, bins: int = HIST_BINS) -> dict[str, list[float]]:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts = torch.histc(x.double(), bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts]}


def template_plane(weight: torch.Tensor, classes=PROJECTION_CLASSES) -> tuple:
    """Origin and orthonormal basis (2 x d) of the plane through the templates of ``classes``."""
    a, b, c = (weight[k].double() for k in classes)
    e1 = (b - a) / (b - a).norm()
    u = (c - a) - ((c - a) @ e1) * e1
    return a, torch.stack([e1, u / u.norm()])


def project(
    feats: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, classes=PROJECTION_CLASSES,
    per_class: int = PROJECTION_POINTS,
) -> dict:
    """2-D coordinates of the first ``per_class`` samples of each of ``classes`` on the plane
    through their templates; the templates' own coordinates too (the triangle's corners)."""
    origin, basis = template_plane(weight, classes)
    out = {"classes": list(classes), "templates": ((weight[list(classes)].double() - origin)
                                                   @ basis.T).tolist(), "points": {}}
    for k in classes:
        r = feats[labels == k][:per_class].double()
        out["points"][str(k)] = ((r - origin) @ basis.T).tolist()
    return out


def analyse(
    student: tuple[torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor] | None,
    labels: torch.Tensor,
    head_weight: torch.Tensor,
) -> tuple[dict[str, float], dict]:
    """Scalars (for the result record) and distributions (for an artifact) of one split.
    ``student``/``teacher``: (logits, features) on the same samples; ``labels``: the clean ones."""
    z, r = student
    scalars = {
        "feature_norm": float(r.norm(dim=1).mean()),
        "entropy": float(entropy(z).mean()),
        "top_label_distance": float(top_label_distance(z, labels).mean()),
    }
    dists = {
        "top_label_distance": histogram(top_label_distance(z, labels)),
        "projection": project(r, labels, head_weight),
    }
    if teacher is not None:
        zt, rt = teacher
        d = logit_distance(z, zt)
        scalars["feature_cka"] = linear_cka(r, rt)
        scalars.update({f"logit_distance_{k}": v for k, v in describe(d).items()})
        scalars["teacher_entropy"] = float(entropy(zt).mean())
        scalars["teacher_top_label_distance"] = float(top_label_distance(zt, labels).mean())
        dists["logit_distance"] = histogram(d)
    return scalars, dists


def predictions(
    logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None,
    keep_logits: bool = False,
) -> dict[str, np.ndarray]:
    """Per sample: ``label`` (the clean one), ``pred`` (top-1 class), ``confidence`` (its
    probability), ``p_true`` (the true class's probability); ``teacher_pred`` with a teacher;
    ``logits`` (float16) with ``keep_logits``. Classes as int16, probabilities as float16."""
    p = logits.float().softmax(dim=1)
    conf, pred = p.max(dim=1)
    out = {
        "label": labels.cpu().to(torch.int16).numpy(),
        "pred": pred.cpu().to(torch.int16).numpy(),
        "confidence": conf.cpu().half().numpy(),
        "p_true": p.gather(1, labels[:, None].to(p.device)).squeeze(1).cpu().half().numpy(),
    }
    if teacher is not None:
        out["teacher_pred"] = teacher.argmax(dim=1).cpu().to(torch.int16).numpy()
    if keep_logits:
        out["logits"] = logits.cpu().half().numpy()
    return out

