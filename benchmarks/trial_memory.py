"""Peak memory per trial of the paper's CIFAR-100 study, and the packing it suggests.

Profiles each kind of trial of the study (WRN-28-4 teacher, WRN-16-4 and WRN-16-2 on labels,
students from a teacher-logit bank) on full-size synthetic CIFAR-100-shaped data (50k / 10k),
each in a fresh process, and prints what `kdsweep plan --measure` would suggest. On a GPU the
figures are GPU memory and the suggestion holds GPU fractions; on the CPU, host memory.

    python benchmarks/trial_memory.py --device cpu --steps 3
    python benchmarks/trial_memory.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from kd_core import TrainConfig
from kd_core.data import load_dataset
from kd_core.profile import GiB, MemoryProfile, Shape, profile_run
from kd_core.run import RunSpec

SHAPES = [
    Shape("wrn-28-4"),
    Shape("wrn-16-4"),
    Shape("wrn-16-2"),
    Shape("wrn-16-2", "wrn-28-4", "shared"),
    Shape("wrn-16-4", "wrn-28-4", "shared"),
    Shape("wrn-16-2", "wrn-16-4", "private"),
    Shape("wrn-16-2", "wrn-28-4", "online"),
]


def profile(shape: Shape, args) -> MemoryProfile:
    loss = "ce" if shape.teacher is None else "kl"
    cfg = TrainConfig(epochs=200, loss=loss, tau=4.0, device=args.device, teacher_bank="auto")
    data = load_dataset("synthetic", n_train=args.n_train, n_test=args.n_test, num_classes=100)
    return profile_run(RunSpec("synthetic", shape.model, cfg), shape.teacher, shape.logit_source,
                       args.steps, data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    measured = {}
    for shape in SHAPES:  # one fresh process each: a peak belongs to one run
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            measured[shape] = pool.submit(profile, shape, args).result()
        m = measured[shape]
        print(f"{shape.model:<9} {shape.label:<24} footprint {m.footprint / GiB:6.2f} GiB "
              f"(context {m.context / GiB:.2f}), host {m.host_peak / GiB:5.2f} GiB, "
              f"step {m.step_seconds * 1e3:7.1f} ms, eval {m.eval_seconds:6.2f} s, "
              f"epoch {m.epoch_seconds:7.1f} s  on {m.device}", flush=True)
    try:  # the suggestion is sweeps' packing policy (Ray and pydantic); a bare GPU image may
        from sweeps.ray.packing import suggest  # hold only torch: the figures above still stand

        s = suggest(measured)
        models = s.models
        print(yaml.safe_dump({"resources": {"models": models}}, default_flow_style=None), end="")
        for w in s.warnings:
            print("warning:", w)
    except ImportError as e:
        models = None
        print(f"no packing suggestion: {e} (install the project to get it)")
    if args.json:
        rows = {f"{sh.model} {sh.label}": {"footprint_gib": m.footprint / GiB,
                                           "step_ms": m.step_seconds * 1e3,
                                           "epoch_s": m.epoch_seconds}
                for sh, m in measured.items()}
        Path(args.json).write_text(json.dumps({"shapes": rows, "models": models}, indent=1))


if __name__ == "__main__":
    main()
