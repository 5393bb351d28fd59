"""Fused against separate training of the demo's sibling students (kd_core/fused.py): one
epoch of K students of one teacher and seed (the demo's 7 settings: kl at tau 0.5, 4, 20, inf,
mse, and kl at alpha 0.1 with tau 4 and 20), trained one after another (K Trainers, as K
trials with `fuse: off` do) or as one FusedGroup, on digits with the demo's recipe (batch 64,
lr 0.05), teacher logits from a shared bank, one torch thread (the demo's `resources.cpu: 1`).
Counted: student-epochs per second (evaluation included, as a trial's epoch has it), the modes
interleaved over rounds (rotated each round), min and median.

    PYTHONPATH=. .venv/bin/python benchmarks/fused_epoch.py --models cnn-small,cnn-medium \
        --rounds 3
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt, interleaved, min_med, paired, timed  # noqa: E402

from kd_core.bank import bank_for  # noqa: E402
from kd_core.config import TrainConfig  # noqa: E402
from kd_core.data import load_dataset  # noqa: E402
from kd_core.fused import FusedGroup  # noqa: E402
from kd_core.train import Trainer, init_model  # noqa: E402

DEMO = [("kl", 0.5, 1.0), ("kl", 4.0, 1.0), ("kl", 20.0, 1.0), ("kl", math.inf, 1.0),
        ("mse", 1.0, 1.0), ("kl", 4.0, 0.1), ("kl", 20.0, 0.1)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="cnn-small,cnn-medium")
    p.add_argument("--k", type=int, default=len(DEMO))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    bank = bank_for(init_model("cnn-large", data, 0), data, "cpu")
    settings = [DEMO[i % len(DEMO)] for i in range(args.k)]
    print(f"digits, K = {args.k}, {args.threads} thread(s), torch {torch.__version__}; "
          f"student-epochs/s, min / median over {args.rounds} rounds")
    print("| student | separate | fused | fused / separate (paired, min / median) |")
    print("| --- | --- | --- | --- |")
    for model in args.models.split(","):
        lo, med, out = measure(model, data, bank, settings, args.rounds)
        print(f"| {model} | {fmt(out['separate'], 2)} | {fmt(out['fused'], 2)} | "
              f"{lo:.2f}x / {med:.2f}x |")


def measure(model, data, bank, settings, rounds):
    def trainers():
        return [Trainer(init_model(model, data, 0), data,
                        TrainConfig(epochs=1000, batch_size=64, lr=0.05, loss=loss, tau=tau,
                                    alpha=alpha, device="cpu"), bank=bank)
                for loss, tau, alpha in settings]

    k, sep = len(settings), trainers()
    group_epochs = FusedGroup(trainers()).epochs()

    def separate():
        its = [t.epochs() for t in sep]
        return k / timed(lambda: [next(it) for it in its])

    def fused():
        return k / timed(lambda: [next(group_epochs) for _ in range(k)])

    separate(), fused()  # warm-up
    out = interleaved({"separate": separate, "fused": fused}, rounds)
    lo, med = min_med(paired(out["fused"], out["separate"]))
    return lo, med, out

if __name__ == "__main__":
    main()
