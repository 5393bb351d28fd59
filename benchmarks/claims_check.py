"""Issue 40's demo targets on stored results (report only, no training):

- every effect's interval excludes its null (0, or -margin) exactly when its test decides;
- no accuracy cell's interval is narrower than its seeds-only interval;
- every accuracy cell a claim table prints (C2, C5, C6) is printed identically in an accuracy
  table (one interval per cell).

`PYTHONPATH=$PWD .venv/bin/python benchmarks/claims_check.py sweeps/configs/digits.yaml`
"""

import math
import sys

import numpy as np

from sweeps.report.claims import claims
from sweeps.report.load import load
from sweeps.report.stats import ALPHA, accuracy_interval, resolution, t_interval
from sweeps.report.tables import accuracy


def main(inputs: list[str]) -> int:
    rows, specs = load(inputs)
    df = rows[rows.state == "done"]
    sections = claims(df, specs[0].report.similar_margin if specs else 1.0)
    bad = lines = 0
    for s in sections:
        print(s.title.split(" ", 1)[0], s.verdict)
        for e in s.effects:
            if not e.tested:
                print("   no test:", e.name)
                continue
            lines += 1
            null = 0.0 if e.margin is None else -e.expected * e.margin
            excluded = e.low > null or e.high < null
            decided = (e.p < ALPHA if e.margin is None
                       else e.p < ALPHA / 2 or e.p_inferior < ALPHA / 2)
            bad += excluded != decided
            print(f"   {e.name}: {e.estimate:+.3f} [{e.low:+.3f}, {e.high:+.3f}] p={e.p:.4f} "
                  f"{'OK' if excluded == decided else 'MISMATCH'}")
    print(f"effect lines: {lines}, interval and test disagree: {bad}")
    step, _ = resolution(df)
    ratios = []
    for _, g in df.groupby(["chain", "generation", "setting", "noise_rate"]):
        _, half, n = accuracy_interval(g.test_acc, step)
        _, seeds_only, _ = t_interval(g.test_acc * 100)
        if n >= 3:
            ratios.append(half / seeds_only if seeds_only > 0 else math.inf)
    finite = [r for r in ratios if r < math.inf]
    print(f"accuracy cells: {len(ratios)}, narrower than seeds-only: "
          f"{sum(r < 1 for r in ratios)}, min ratio {min(ratios):.3f}, median "
          f"{np.median(finite):.3f}")
    printed = "\n".join(s.text() for s in accuracy(df))
    seen = missing = 0
    for s in sections:
        if not s.title.startswith(("C2", "C5", "C6")) or s.table.empty:
            continue
        for column in s.table.columns:
            if column in ("tests", "verdict") or column.startswith(
                    ("sequential -", "agreement", "still", "did not")):
                continue
            for v in s.table[column].dropna():
                if isinstance(v, str) and "±" in v:
                    seen += 1
                    missing += v not in printed
    print(f"claim-table accuracy cells: {seen}, not printed identically in an accuracy table: "
          f"{missing}")
    return int(bad > 0 or missing > 0 or any(r < 1 for r in ratios))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
