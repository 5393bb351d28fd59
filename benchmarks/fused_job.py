"""Where a fused job's time goes, against its members as separate jobs (issue 44): the worker's
own code (sweeps/ray/trial.py: claims, attempts, the bank read, checkpoints, progress, each
member's publish: analyses, learning curve, model, result), in this process, without Ray or
MLflow (the driver's side: Tune's reports and MLflow writes, not here). A teacher is trained
and its shared bank built once; then a teacher's K sibling students (the demo's 7 settings)
are trained from empty storage either as one fused job (trial.train_group) or as K jobs one
after another (trial.train_trial), interleaved over rounds. With ``--profile``, cProfile of
one fused job and one round of separate jobs, summed by phase.

    PYTHONPATH=. .venv/bin/python benchmarks/fused_job.py --epochs 5 --rounds 2 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt, interleaved, min_med, paired  # noqa: E402

from sweeps.domain.plan import build_plan  # noqa: E402
from sweeps.domain.spec import parse_spec  # noqa: E402
from sweeps.ray import trial as worker  # noqa: E402
from sweeps.ray.teacher_bank import build_shared_bank  # noqa: E402
from sweeps.store.lease import TrialClaim  # noqa: E402
from sweeps.store.ledger import Ledger  # noqa: E402
from sweeps.store.resume import Attempts  # noqa: E402
from sweeps.store.storage import Storage  # noqa: E402

GRID = {"loss": ["kl", "mse"], "tau": [0.5, 4, 20, float("inf")], "seeds": [0], "baselines": False,
        "extra": [{"loss": "kl", "tau": 4, "alpha": 0.9}, {"loss": "kl", "tau": 20, "alpha": 0.9}]}
PHASES = {  # cProfile function -> phase (cumulative time of the outermost one counted)
    "_train_epoch": "train (forward, backward, step)",
    "end_epoch": "end of epoch (evaluation, metrics)",
    "save": "checkpoint writes",
    "remember": "checkpoint writes",
    "write_progress": "progress writes",
    "publish_trial": "publish (all of it)",
    "analyse": "  publish: analyses",
    "learning_curve_png": "  publish: learning curve",
    "build_trainer": "setup: trainers",
    "load_run_data": "setup: data",
    "load_shared_bank": "setup: bank",
    "acquire": "claims",
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--teacher", default="cnn-large")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="kdsweep-fused-job-"))
    raw = {"name": "job", "dataset": {"name": "digits"},
           "chains": [[args.teacher, args.model]],
           "train": {"epochs": args.epochs, "batch_size": 64, "lr": 0.05}, "grid": GRID,
           "resources": {"cpu": 1}}
    base = parse_spec({**raw, "storage": str(work / "base")})
    plan = build_plan(base)
    teacher = next(t for t in plan.trials if t.generation == 0)
    students = [t for t in plan.trials if t.generation == 1]
    ledger = Ledger(Storage(base.storage))
    job(base, ledger, [teacher], fused=False)
    build_shared_bank(base.dataset, base.train.bank_dtype, ledger, teacher.key, teacher.seed)
    print(f"{args.model} x {len(students)} siblings from {args.teacher}, {args.epochs} epochs, "
          "1 thread; teacher and bank ready", flush=True)

    def fresh() -> tuple:
        tmp = Path(tempfile.mkdtemp(dir=work))
        shutil.copytree(base.storage, tmp / "store")
        spec = parse_spec({**raw, "storage": str(tmp / "store")})
        return spec, Ledger(Storage(spec.storage))

    def variant(fused: bool):
        def run() -> float:
            spec, led = fresh()
            t0 = time.perf_counter()
            job(spec, led, students, fused)
            return time.perf_counter() - t0
        return run

    try:
        out = interleaved({"separate": variant(False), "fused": variant(True)}, args.rounds)
        print(f"wall seconds for {len(students)} students: separate {fmt(out['separate'], 1)}, "
              f"fused {fmt(out['fused'], 1)}")
        lo, med = min_med(paired(out["separate"], out["fused"]))
        print(f"separate / fused (paired): {lo:.2f}x / {med:.2f}x")
        if args.profile:
            for fused in (False, True):
                spec, led = fresh()
                prof = cProfile.Profile()
                prof.enable()
                job(spec, led, students, fused)
                prof.disable()
                print(f"--- {'fused (one job)' if fused else 'separate (K jobs)'}: by phase")
                for phase, secs in phases(prof).items():
                    print(f"{phase:<34} {secs:7.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def job(spec, ledger, trials, fused: bool) -> None:
    """The worker's training of ``trials``: one fused job, or a job each."""
    def report(metrics, **note):
        pass

    groups = [trials] if fused else [[t] for t in trials]
    for group in groups:
        claims = {t.key: TrialClaim(ledger.storage, t.key, "bench") for t in group}
        for c in claims.values():
            assert c.acquire(finished=lambda: False)
        try:
            attempts = {t.key: Attempts(ledger.storage, t.key) for t in group}
            if fused:
                worker.train_group(spec, group, ledger, attempts, report, claims, set())
            else:
                t = group[0]
                worker.train_trial(spec, t, ledger, attempts[t.key], report, claims[t.key])
        finally:
            for c in claims.values():
                c.release()


def phases(prof: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds per phase (PHASES), and the total."""
    stats = pstats.Stats(prof).stats
    out: dict[str, float] = {}
    for (_file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
        if name in PHASES and "site-packages" not in _file:
            out[PHASES[name]] = out.get(PHASES[name], 0.0) + ct
    out["total"] = sum(v[3] for k, v in stats.items() if k[2] in ("job",))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    main()
