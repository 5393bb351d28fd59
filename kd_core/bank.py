"""Teacher-logit bank: the frozen teacher's logits for every augmented view of every image.

Random crop (padding p) + flip give exactly (2p+1)^2 * 2 views per image, and the trainer names
the view it renders (data/augment.py), so a student can read ``logits[image, view]`` instead of
running the teacher: the same numbers, up to the stored precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .data import Augment, render_views


@dataclass
class TeacherBank:
    """A bank lives in host memory, never on a GPU: a shared one is the memory-mapped
    node-cache file (one page-cache copy for every trial of its teacher on the node), a private
    one is built into host memory. Each epoch gathers its N rows from it (``epoch``)."""

    logits: torch.Tensor  # (N, n_views, K), fp16 by default
    test_logits: torch.Tensor  # (N_test, K), fp32
    augment: Augment

    def epoch(self, order: torch.Tensor, views: torch.Tensor | None, device) -> torch.Tensor:
        """The logits of one epoch's views in training order, (N, K), on ``device``. Gathered
        where the bank lives and moved once per epoch: a GPU holds one view per image of the
        bank (N x K), never the bank (N x n_views x K), and the host copy stays shared."""
        home = self.logits.device
        v = torch.zeros_like(order) if views is None else views
        rows = self.logits[order.to(home), v.to(home)]  # the epoch's one host sync on a GPU
        return rows.to(device, non_blocking=True)

    def state_dict(self) -> dict:
        return {
            "logits": self.logits,
            "test_logits": self.test_logits,
            "padding": self.augment.padding,
            "flip": self.augment.flip,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> TeacherBank:
        aug = Augment(int(state["padding"]), bool(state["flip"]))
        return cls(state["logits"], state["test_logits"], aug)


def bank_for(teacher: nn.Module, data, device, dtype=torch.float16) -> TeacherBank:
    """The bank of ``teacher`` over ``data``'s training views, built on ``device``."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    norm = data.normalizer(device)
    return build_bank(
        teacher.to(device, memory_format=fmt),
        data.train_images.to(device),
        data.test_images.to(device),
        data.augment,
        lambda x: norm(x).contiguous(memory_format=fmt),
        dtype=dtype,
        autocast=cuda,
    )


def bank_nbytes(n_images: int, augment: Augment, num_classes: int, dtype=torch.float16) -> int:
    return n_images * augment.n_views * num_classes * torch.finfo(dtype).bits // 8


# How much a bank must save, in teacher passes over the training set, before it is built.
# A shared bank is built by its own job, which its students wait for, and travels through
# storage (one upload, a download per node): it must save half its build again. A private bank
# is built inside the one trial that reads it and held in that trial's memory for the whole run
# (on the GPU too): it must save twice its build.
SHARED_MARGIN = 1.5
PRIVATE_MARGIN = 2.0


def logit_source(
    students: int, epochs: int, n_views: int, bank_bytes: int, budget_bytes: float, mode="auto"
) -> tuple[str, str]:
    """How ``students`` students of one teacher get its logits, and why: "shared" (one bank,
    built once and read by all of them), "private" (a bank built inside a student's own
    trial), or "online" (the teacher runs in every step). Costs in teacher passes over the
    training set: online, students x epochs; a bank, one per view (n_views), once per bank.
    ``mode`` is TrainConfig.teacher_bank; the trainer asks with students=1, a sweep with the
    plan's count. The one policy of the trainer, the sweep and `kdsweep plan`."""
    if mode == "off" or students == 0:
        return "online", "teacher_bank: off" if mode == "off" else "no students"
    if bank_bytes > budget_bytes:
        why = f"a bank needs {bank_bytes / 2**30:.2f} GiB > bank_budget_gb {budget_bytes / 2**30:g}"
        if mode == "on":
            raise ValueError(f"teacher_bank: on, but {why}")
        return "online", why
    if mode == "on":
        return ("shared" if students > 1 else "private"), "teacher_bank: on"
    work = f"{students} student(s) x {epochs} epochs"
    if students > 1 and n_views * SHARED_MARGIN <= students * epochs:
        return "shared", f"{work} >= {SHARED_MARGIN} x {n_views} views"
    if n_views * PRIVATE_MARGIN <= epochs:
        return "private", f"{epochs} epochs >= {PRIVATE_MARGIN} x {n_views} views"
    return "online", f"{work}: a bank of {n_views} views does not pay"


@torch.no_grad()
def build_bank(
    teacher: nn.Module,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    augment: Augment,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    dtype=torch.float16,
    batch_size: int = 1024,
    autocast: bool = False,
) -> TeacherBank:
    """Run the teacher once over every view of every training image (and the test split)."""
    teacher.eval()
    device = train_images.device
    n, v_total = len(train_images), augment.n_views

    def logits_of(x):
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            return teacher(prepare(x)).float()

    k = logits_of(train_images[:2]).shape[1]
    out = torch.empty(n, v_total, k, dtype=dtype)  # in host memory (TeacherBank)
    view = torch.empty(n, k, dtype=dtype, device=device)
    for v in range(v_total):
        for s in range(0, n, batch_size):
            x = train_images[s : s + batch_size]
            views = torch.full((len(x),), v, device=device, dtype=torch.long)
            view[s : s + batch_size] = logits_of(render_views(x, views, augment)).to(dtype)
        out[:, v] = view  # one copy to the host per view
    test = torch.cat(
        [logits_of(test_images[s : s + batch_size]) for s in range(0, len(test_images), batch_size)]
    )
    return TeacherBank(out, test.cpu(), augment)
