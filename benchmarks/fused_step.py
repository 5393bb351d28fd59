"""A fused group's optimizer step (issue 44): the demo's 7 siblings of one architecture on
digits (a cnn-large bank, batch 64, one thread), CPU seconds per fused training step (the
process's: a loaded machine's wall time says little) with each
member's own SGD step (before) against one multi-tensor step over all members
(kd_core.fused.step_members, after), interleaved over rounds; and the step's share of the
process's CPU seconds over the timed steps.

    PYTHONPATH=. .venv/bin/python benchmarks/fused_step.py --model cnn-small --rounds 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import kd_core.fused as fused
from kd_core.bank import bank_for
from kd_core.config import TrainConfig
from kd_core.data.datasets import load_dataset
from kd_core.train import Trainer, init_model

# the demo's 7 settings per teacher and seed (sweeps/configs/digits.yaml)
SETTINGS = [("kl", 0.5, 1.0), ("kl", 4.0, 1.0), ("kl", 20.0, 1.0), ("kl", float("inf"), 1.0),
            ("mse", 1.0, 1.0), ("kl", 4.0, 0.9), ("kl", 20.0, 0.9)]


def each_own(optimizers) -> None:
    """Before: each member's own ``optimizer.step()``."""
    for o in optimizers:
        o.step()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits")
    bank = bank_for(init_model("cnn-large", data, 1), data, "cpu")

    def group() -> fused.FusedGroup:
        return fused.FusedGroup([Trainer(
            init_model(args.model, data, 0), data,
            TrainConfig(epochs=20, batch_size=64, lr=0.05, loss=loss, tau=tau, alpha=alpha,
                        seed=0, device="cpu"), bank=bank) for loss, tau, alpha in SETTINGS])

    after = fused.step_members
    spent = [0.0]

    def timed(step):
        def run(optimizers):
            t0 = time.process_time()
            step(optimizers)
            spent[0] += time.process_time() - t0
        return run

    ms: dict[str, list[float]] = {"before": [], "after": []}
    share: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = [("before", each_own), ("after", after)]
        for name, step in order if r % 2 == 0 else order[::-1]:
            g = group()
            fused.step_members = timed(step)
            g.time_steps(2)  # warm
            spent[0] = 0.0
            c0 = time.process_time()
            g.time_steps(args.steps, warmup=0)
            cpu = time.process_time() - c0
            ms[name].append(cpu / args.steps * 1e3)
            share[name].append(spent[0] / cpu)
    fused.step_members = after
    for name in ms:
        print(f"{args.model}, {len(SETTINGS)} members, {name}: "
              f"{min(ms[name]):.2f} / {statistics.median(ms[name]):.2f} CPU ms per fused step "
              f"(min / median of {args.rounds}); the optimizer step "
              f"{statistics.median(share[name]) * 100:.1f}% of its CPU seconds")


if __name__ == "__main__":
    main()
