"""Fused against separate training of the demo's sibling students (kd_core/fused.py): one
epoch of K students of one teacher and seed (the demo's 7 settings: kl at tau 0.5, 4, 20, inf,
mse, and kl at alpha 0.1 with tau 4 and 20), trained one after another (K Trainers, as K
trials with `fuse: off` do) or as one FusedGroup, on digits with the demo's recipe (batch 64,
lr 0.05), teacher logits from a shared bank, one torch thread (the demo's `resources.cpu: 1`).
Counted: student-epochs per second (evaluation included, as a trial's epoch has it), the modes
interleaved over rounds (rotated each round), min and median.

    PYTHONPATH=. .venv/bin/python benchmarks/fused_epoch.py --models cnn-small,cnn-medium \
        --rounds 3
    PYTHONPATH=. python3 benchmarks/fused_epoch.py --device cuda --dataset synthetic \
        --models wrn-16-2 --k 8 --n-train 5000 --batch-size 128 --rounds 2   # GPU suite

On CUDA the Trainer's fast path applies to both modes (bf16 autocast, channels_last, fused SGD);
a synthetic dataset has CIFAR-100's shapes (its teacher: wrn-16-2, untrained: the logits'
values do not change the cost).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt, interleaved, min_med, paired, timed  # noqa: E402

from kd_core.bank import bank_for  # noqa: E402
from kd_core.config import TrainConfig  # noqa: E402
from kd_core.data import load_dataset, synthetic  # noqa: E402
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
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default="digits", choices=["digits", "synthetic"])
    p.add_argument("--n-train", type=int, default=5000, help="synthetic only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.dataset == "digits":
        data, teacher = load_dataset("digits"), "cnn-large"
    else:
        data, teacher = synthetic(n_train=args.n_train, n_test=1000), "wrn-16-2"
    bank = bank_for(init_model(teacher, data, 0), data, args.device)
    settings = [DEMO[i % len(DEMO)] for i in range(args.k)]
    print(f"{args.dataset}, K = {args.k}, {args.device}, {args.threads} thread(s), "
          f"torch {torch.__version__}; student-epochs/s, min / median over {args.rounds} rounds")
    print("| student | separate | fused | fused / separate (paired, min / median) |")
    print("| --- | --- | --- | --- |")
    rows = []
    for model in args.models.split(","):
        lo, med, out = measure(model, data, bank, settings, args)
        rows.append({"model": model, "k": args.k, **out, "ratio_min": lo, "ratio_median": med})
        print(f"| {model} | {fmt(out['separate'], 2)} | {fmt(out['fused'], 2)} | "
              f"{lo:.2f}x / {med:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


def measure(model, data, bank, settings, args):
    def trainers():
        return [Trainer(init_model(model, data, 0), data,
                        TrainConfig(epochs=1000, batch_size=args.batch_size, lr=0.05, loss=loss,
                                    tau=tau, alpha=alpha, device=args.device), bank=bank)
                for loss, tau, alpha in settings]

    k, sep = len(settings), trainers()
    group_epochs = FusedGroup(trainers()).epochs()

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def separate():
        its = [t.epochs() for t in sep]
        return k / timed(lambda: [next(it) for it in its], sync)

    def fused():
        return k / timed(lambda: [next(group_epochs) for _ in range(k)], sync)

    separate(), fused()  # warm-up
    out = interleaved({"separate": separate, "fused": fused}, args.rounds)
    lo, med = min_med(paired(out["fused"], out["separate"]))
    return lo, med, out

if __name__ == "__main__":
    main()
