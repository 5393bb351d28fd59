"""End-to-end tests before and after their drivers join the test process's local Ray (issue 46:
conftest's ``joined``), interleaved over rounds: each round runs every test once in the tree
of a base commit (``git archive`` of --base into a temporary folder, the shared .venv) and once
in this worktree, in alternating order.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/joined_tests.py --base 866e683 --rounds 2 \\
        'tests/test_resume.py::test_sigterm_writes_a_checkpoint_before_exit'

Each run is one pytest session of the test after a warm-up test that takes the session's
fixtures (``local_ray``, ``forks``: in the suite, every xdist worker has them from its first
end-to-end test on), so the test's own figures hold none of their start. Per run: the test's
seconds as pytest reports them (setup + call + teardown, --durations), and the CPU seconds of
the session's whole process tree (benchmarks/harness.tree_cpu_run: Ray's processes, the
drivers' and their Rays' included), the same warm-up in both trees."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import tree_cpu_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WARM = "test_zz_joined_bench_warmup.py"  # written into each tree's tests/ while it runs
WARM_TEXT = "def test_warm(local_ray, forks):\n    pass\n"


def run(tree: Path, test: str) -> tuple[float, float, float, str]:
    """(the test's seconds by pytest, the session's wall, its tree's CPU seconds, outcome)."""
    cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:randomly",
           "-p", "no:cacheprovider", f"tests/{WARM}", test, "--durations=0",
           "--durations-min=0"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out, wall, cpu = tree_cpu_run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  timeout=1800)
    name = test.split("::")[-1]
    own = sum(float(m.group(1)) for m in re.finditer(
        r"^([\d.]+)s (?:setup|call|teardown)\s+\S*::" + re.escape(name) + r"$", out.stdout,
        re.M))
    said = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]
    return own, wall, cpu, said


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the commit before the switch")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--first-round", type=int, default=0,
                    help="the first round's number (odd: 'after' runs first in it)")
    ap.add_argument("tests", nargs="+")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="joined-base-"))
    subprocess.run(f"git archive {a.base} | tar -x -C {base}", shell=True, check=True, cwd=REPO)
    trees = {"before": base, "after": REPO}
    for tree in trees.values():
        (tree / "tests" / WARM).write_text(WARM_TEXT)
    got: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for r in range(a.first_round, a.first_round + a.rounds):
            for test in a.tests:
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for variant in order:
                    own, wall, cpu, said = run(trees[variant], test)
                    got.setdefault((test, variant), []).append((own, wall, cpu))
                    print(f"round {r} {variant:6s} {test.split('::')[-1][:60]}: test {own:.1f} s,"
                          f" session {wall:.1f} s wall, {cpu:.1f} CPU-s ({said})", flush=True)
    finally:
        for tree in trees.values():
            (tree / "tests" / WARM).unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)
    print("\n| test | variant | test s (min / median) | session CPU-s (min / median) |")
    print("|---|---|---|---|")
    sums = {v: [0.0, 0.0] for v in trees}
    for test in a.tests:
        for v in trees:
            rows = got[test, v]
            own, cpu = [x[0] for x in rows], [x[2] for x in rows]
            sums[v][0] += statistics.median(own)
            sums[v][1] += statistics.median(cpu)
            print(f"| {test.split('::')[-1][:70]} | {v} | {min(own):.1f} / "
                  f"{statistics.median(own):.1f} | {min(cpu):.1f} / {statistics.median(cpu):.1f} |")
    for v, (own, cpu) in sums.items():
        print(f"sum of medians, {v}: test {own:.1f} s, session {cpu:.1f} CPU-s")


if __name__ == "__main__":
    main()
