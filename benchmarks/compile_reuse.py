"""torch.compile is paid once per architecture per process, not once per trial.

Tune keeps its trial workers (reuse_actors), so the trials of one architecture that land on a
worker build a fresh model each but share Dynamo's compiled graph: parameters are graph inputs
(torch >= 2.5 inlines nn.Module calls), so a new instance of the same architecture passes the
guards. A new process recompiles, but finds Inductor's kernels in its on-disk cache.

    PYTHONPATH=. python benchmarks/compile_reuse.py --trainers 3
"""

from __future__ import annotations

import argparse
import time

import torch._dynamo.utils

from kd_core import TrainConfig
from kd_core.run import RunSpec, build_trainer, load_run_data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--trainers", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    for i in range(args.trainers):
        cfg = TrainConfig(epochs=1, batch_size=64, compile=True, device=args.device, seed=i)
        spec = RunSpec("digits", args.model, cfg)
        trainer, _ = build_trainer(spec, data=load_run_data(spec))
        t0 = time.perf_counter()
        trainer._train_epoch(1).tolist()  # the first step compiles (or reuses) the graph
        first = time.perf_counter() - t0
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        print(f"trainer {i}: first step {first:7.2f} s, graphs compiled so far {graphs}")


if __name__ == "__main__":
    main()
