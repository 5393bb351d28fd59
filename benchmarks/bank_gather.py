"""What reading a teacher-logit bank costs per epoch, for the paper's CIFAR-100 shape.

kd_core keeps a bank in host memory (one memory-mapped copy per node) and gathers each epoch's
rows, one view per image in training order, before the epoch starts (TeacherBank.epoch): N x K
values, moved to the device once. The alternative, a copy of the whole bank on the device
indexed every step, costs N x n_views x K of device memory per trial. This times both ways of
getting one epoch's teacher logits:
- host gather + one copy to the device (what kd_core does),
- device-resident bank, indexed in per-step batches (only with --device cuda).
Counted: wall time per epoch, after one untimed epoch (pages faulted in); the two ways run
interleaved, rotated every round (harness.py), min / median over --rounds.

    PYTHONPATH=. .venv/bin/python benchmarks/bank_gather.py
    PYTHONPATH=. python3 benchmarks/bank_gather.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt, interleaved, min_med, timed  # noqa: E402

from kd_core.bank import TeacherBank, bank_nbytes
from kd_core.data import Augment, draw_views


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    aug = Augment(4, True)  # the paper's crop (padding 4) and flip: 162 views
    logits = torch.randn(args.images, aug.n_views, args.classes).to(torch.float16)
    bank = TeacherBank(logits, torch.zeros(10, args.classes), aug)
    g = torch.Generator(device=dev).manual_seed(0)
    order = torch.randperm(args.images, generator=g, device=dev)
    views = draw_views(aug, args.images, g, dev)
    gib = bank_nbytes(args.images, aug, args.classes) / 2**30
    print(f"bank {tuple(logits.shape)} fp16 = {gib:.2f} GiB in host memory; device {dev}")

    variants = {"host": lambda: timed(lambda: bank.epoch(order, views, dev), sync)}
    if dev.type == "cuda":
        on_dev = logits.to(dev)
        bs = args.batch_size

        def per_step():
            for s in range(0, args.images, bs):
                on_dev[order[s : s + bs], views[s : s + bs]].float()

        variants["resident"] = lambda: timed(per_step, sync)
    for fn in variants.values():  # untimed: pages faulted in, kernels loaded
        fn()
    runs = interleaved(variants, args.rounds)
    epoch_mib = args.images * args.classes * 2 / 2**20
    print(f"host gather + copy to {dev}: {fmt([t * 1e3 for t in runs['host']], 1)} ms per "
          f"epoch, {epoch_mib:.1f} MiB on the device")
    if "resident" in runs:
        print(f"device-resident bank, per-step index: "
              f"{fmt([t * 1e3 for t in runs['resident']], 1)} ms per epoch, {gib:.2f} GiB on "
              "the device per trial")
    if args.json:
        out = {k: {"min_ms": min_med(v)[0] * 1e3, "median_ms": min_med(v)[1] * 1e3}
               for k, v in runs.items()}
        Path(args.json).write_text(json.dumps({"bank_gib": gib, **out}, indent=1))


if __name__ == "__main__":
    main()
