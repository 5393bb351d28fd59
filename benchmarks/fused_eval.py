"""A fused group's evaluation and step against its members' own (issue 44, the physical
bound on a CPU): the demo's 7 siblings of one architecture on digits (a cnn-large bank,
batch 64, one thread), the process's CPU seconds (a loaded machine's wall says little) of

- training: 7 members' own epochs (each ``Trainer``'s, its bank's rows gathered, every step)
  against one fused epoch of 7 (one gather, one fused step per batch);
- evaluation: each member's own pass over the test split (``metrics.predict``; batch 1024 is
  what ``Trainer.end_epoch`` runs) against one fused pass over the 7 members' weights
  (``FusedModel`` in eval mode, as ``FusedGroup._eval`` runs it), each in chunks of
  ``--chunks`` images; the fused logits' largest difference from the members' own printed.

The variants interleaved over rounds (the order flipped each round); min / median.

    PYTHONPATH=. .venv/bin/python benchmarks/fused_eval.py --model cnn-small --rounds 4
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
from kd_core.metrics import predict
from kd_core.train import Trainer, init_model

# the demo's 7 settings per teacher and seed (sweeps/configs/digits.yaml)
SETTINGS = [("kl", 0.5, 1.0), ("kl", 4.0, 1.0), ("kl", 20.0, 1.0), ("kl", float("inf"), 1.0),
            ("mse", 1.0, 1.0), ("kl", 4.0, 0.9), ("kl", 20.0, 0.9)]


def cpu_of(fn, repeat: int) -> float:
    """CPU ms per call of ``fn`` (the process's), over ``repeat`` calls after one warm call."""
    fn()
    c0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - c0) / repeat * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1, help="timed training epochs per call")
    p.add_argument("--evals", type=int, default=5)
    p.add_argument("--chunks", default="1024,256,128,64")
    p.add_argument("--teachers", action="store_true",
                   help="instead: CPU ms of an epoch (and its evaluation) of each model trained "
                        "on labels alone (what never fuses: the demo's teachers and baselines), "
                        "and of a cnn-large bank's build")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits")
    if args.teachers:
        return teachers(data, args.rounds)
    bank = bank_for(init_model("cnn-large", data, 1), data, "cpu")
    members = [Trainer(init_model(args.model, data, 0), data,
                       TrainConfig(epochs=20, batch_size=64, lr=0.05, loss=loss, tau=tau,
                                   alpha=alpha, seed=0, device="cpu"), bank=bank)
               for loss, tau, alpha in SETTINGS]
    group = fused.FusedGroup(members)
    group.time_steps(2)  # trained a little: running statistics not the initial ones
    lead = members[0]
    x = lead.x_test
    model, _ = group._fused(members)

    def own_epochs():
        for t in members:
            t._train_epoch().tolist()

    def fused_epoch():
        group._train_epoch(members)

    def own_eval(chunk=1024):
        return lambda: [predict(t.model, x, t.prepare, chunk) for t in members]

    def fused_eval(chunk):
        def run():
            model.load()
            model.eval()
            outs = []
            with torch.no_grad():
                for i in range(0, len(x), chunk):
                    outs.append(model(lead.prepare(x[i:i + chunk])))
            return [torch.cat(col) for col in zip(*outs, strict=True)]
        return run

    chunks = [int(c) for c in args.chunks.split(",")]
    variants = {"train: 7 own epochs": (own_epochs, args.epochs),
                "train: 1 fused epoch of 7": (fused_epoch, args.epochs)}
    variants.update({f"eval: 7 own passes, chunks of {c}": (own_eval(c), args.evals)
                     for c in chunks})
    variants.update({f"eval: 1 fused pass of 7, chunks of {c}": (fused_eval(c), args.evals)
                     for c in chunks})
    ms: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants.items())
        for name, (fn, repeat) in order if r % 2 == 0 else order[::-1]:
            ms[name].append(cpu_of(fn, repeat))
    ref = own_eval()()
    for c in chunks:
        got = fused_eval(c)()
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, got, strict=True))
        print(f"chunks of {c}: fused logits' largest difference from the members' own {diff:.2e}")
    print(f"{args.model}, {len(SETTINGS)} members, {len(x)} test images, one thread; "
          f"CPU ms per call, min / median of {args.rounds} rounds:")
    for name, v in ms.items():
        print(f"  {name}: {min(v):.2f} / {statistics.median(v):.2f}")


def teachers(data, rounds: int) -> None:
    ms: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name in ("cnn-large", "cnn-medium", "cnn-small"):
            t = Trainer(init_model(name, data, 0), data,
                        TrainConfig(epochs=20, batch_size=64, lr=0.05, loss="ce", seed=0,
                                    device="cpu"))
            ms.setdefault(f"{name} on labels: an epoch", []).append(
                cpu_of(lambda t=t: t._train_epoch().tolist(), 1))
            ms.setdefault(f"{name} on labels: its evaluation", []).append(
                cpu_of(lambda t=t: predict(t.model, t.x_test, t.prepare, 1024), 3))
        ms.setdefault("a cnn-large bank's build", []).append(
            cpu_of(lambda: bank_for(init_model("cnn-large", data, 1), data, "cpu"), 1))
    print(f"one thread; CPU ms, min / median of {rounds} rounds:")
    for name, v in ms.items():
        print(f"  {name}: {min(v):.1f} / {statistics.median(v):.1f}")


if __name__ == "__main__":
    main()
