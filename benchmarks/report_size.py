"""`kdsweep report`'s time as the sweep grows (issue 29 item 5): a real sweep's results file
(the demo's, by default) replicated with new seeds to N trials (each copy's keys and teachers
renamed, its accuracies jittered by a point), then `report` timed at each N, the sizes
interleaved, rotated each round (harness.py). Tables, claims and figures; no analysis files
(the Parquet alone: their figures read a bounded number of runs, DRAWN_SEEDS per pair).

    make demo   # or any results.parquet
    PYTHONPATH=. .venv/bin/python benchmarks/report_size.py \
        --results kdsweep-results/sweeps/digits-demo/local/results.parquet \
        --sizes 1000,10000 --rounds 2
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import interleaved, min_med, timed  # noqa: E402
from sweeps.report import report  # noqa: E402
from sweeps.store.results import SCHEMA  # noqa: E402


def replicated(base: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``base`` copied with new seeds until it holds at least ``n`` trials."""
    rng = np.random.default_rng(seed)
    seeds = base.seed.max() + 1
    parts = []
    for copy in range(math.ceil(n / len(base))):
        part = base.copy()
        part["seed"] = part.seed + seeds * copy
        part["key"] = part.key + f"-{copy}"
        part["teacher_key"] = part.teacher_key.map(lambda k, c=copy: k and f"{k}-{c}")
        part["test_acc"] = (part.test_acc + rng.normal(0, 0.01, len(part))).clip(0, 1)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="kdsweep-results/sweeps/digits-demo/local/results.parquet")
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    base = pd.read_parquet(args.results)
    work = Path(tempfile.mkdtemp(prefix="kdreport-"))
    files, counts = {}, {}
    for n in (int(s) for s in args.sizes.split(",")):
        frame = replicated(base, n)
        files[n], counts[n] = work / f"{n}.parquet", len(frame)
        pq.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False),
                       files[n])
    figures = interleaved({n: (lambda n=n: timed(lambda: report([str(files[n])],
                                                                 work / f"rep-{n}")))
                           for n in files}, args.rounds)
    print("| trials | report seconds, min / median | ms per trial (min) |")
    print("| --- | --- | --- |")
    for n, seconds in figures.items():
        lo, med = min_med(seconds)
        print(f"| {counts[n]:,} | {lo:.1f} / {med:.1f} | {lo / counts[n] * 1e3:.2f} |")


if __name__ == "__main__":
    main()
