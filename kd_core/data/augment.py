"""Whole-batch random crop + horizontal flip on the training device, by *view index*.

An image padded by p has (2p+1)^2 crop offsets times 2 flips = n_views distinct augmented views.
Augmentation draws one view index per image and renders exactly that view; naming the view
(instead of drawing offsets ad hoc) is what lets a teacher-logit bank look up the teacher's output
for the very view the student sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    padding: int = 0  # random-crop padding in pixels; 0 = no crop
    flip: bool = False  # random horizontal flip

    @property
    def n_views(self) -> int:
        return (2 * self.padding + 1) ** 2 * (2 if self.flip else 1)

    @property
    def enabled(self) -> bool:
        return self.n_views > 1


def draw_views(aug: Augment, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """One view index in [0, n_views) per image."""
    return torch.randint(0, aug.n_views, (n,), generator=generator, device=device)


def render_views(images: torch.Tensor, views: torch.Tensor, aug: Augment) -> torch.Tensor:
    """Apply each image's view: crop at the view's offset from the zero-padded image, then flip.

    ``images`` is (B, C, H, W) in raw pixel units, so the zero padding is black as in
    torchvision's RandomCrop(padding=p) applied before Normalize.
    """
    if not aug.enabled:
        return images
    b, c, h, w = images.shape
    p = aug.padding
    n_flip = 2 if aug.flip else 1
    flip = (views % n_flip).bool()
    offset = views // n_flip
    dy, dx = offset // (2 * p + 1), offset % (2 * p + 1)
    if p:
        padded = F.pad(images, (p, p, p, p))
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        chan = torch.arange(c, device=images.device)[None, :, None, None]
        images = padded[batch, chan, rows, cols]
    if aug.flip:
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images
