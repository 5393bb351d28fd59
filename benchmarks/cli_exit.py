"""What a `kdsweep` command spends after its work is done: Python's teardown of every loaded
module (torch, Ray, MLflow, pandas) against the CLI's quick exit (sweeps.cli._exit: threads
joined and exit handlers run, then os._exit).

Each variant runs the same command in a fresh process: `plan SPEC --offline` (no Ray) and
`run SPEC` of one trial of one epoch on a fresh store (a local Ray started and shut down).
Measured: the whole command's wall time and its tail (from main() returning to the process
having exited, as its parent sees it). Bound: the quick exit's tail cannot be below zero, and
the two variants' walls may differ by no more than their tails do (plus noise): a larger gap
would be the machine, not the exit.

    PYTHONPATH=. .venv/bin/python benchmarks/cli_exit.py --rounds 4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt, interleaved, paired  # noqa: E402

CODE = """
import sys, time
from sweeps.cli import _exit, main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(repr(time.time()))
{exit}
"""
EXITS = {"teardown": "sys.exit(code)", "quick exit": "_exit(code)"}


def spec(folder: Path) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "name": "exit", "dataset": {"name": "digits"}, "chains": [["cnn-small"]],
        "train": {"epochs": 1, "batch_size": 64},
        "grid": {"loss": ["kl"], "tau": [4], "seeds": [0], "baselines": False},
        "storage": str(folder / "store"), "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}))
    return path


def once(exit_line: str, command: str) -> tuple[float, float]:
    """(wall, tail) seconds of one command in a fresh process and a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="kdexit-", dir="/tmp") as d:
        path, stamp = spec(Path(d)), Path(d) / "returned"
        args = ["plan", str(path), "--offline"] if command == "plan" else ["run", str(path)]
        t0 = time.time()
        subprocess.run([sys.executable, "-c", CODE.format(exit=exit_line), str(stamp), *args],
                       check=True, capture_output=True, cwd=d, env={"RAY_TMPDIR": d,
                                                                    **__import__("os").environ})
        end = time.time()
        return end - t0, end - float(stamp.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    for command in ("plan", "run"):
        figures = interleaved(
            {name: (lambda e=e, c=command: once(e, c)) for name, e in EXITS.items()},
            args.rounds)
        walls = {k: [w for w, _ in v] for k, v in figures.items()}
        tails = {k: [t for _, t in v] for k, v in figures.items()}
        print(f"== kdsweep {command}  (seconds, min / median over rounds, variants rotated)")
        for name in EXITS:
            print(f"  {name:10s}  wall {fmt(walls[name], 2)}   tail {fmt(tails[name], 2)}")
        saved = [a - b for a, b in zip(walls["teardown"], walls["quick exit"], strict=True)]
        print(f"  wall saved per round  {fmt(saved, 2)}   "
              f"ratio quick/teardown {fmt(paired(walls['quick exit'], walls['teardown']), 3)}")
        if min(tails["quick exit"]) < 0:
            print("  MEASURING ERROR: a tail below zero")


if __name__ == "__main__":
    main()
