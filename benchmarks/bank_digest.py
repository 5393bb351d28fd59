"""What proving a node's cached bank on every map costs (issue 41): load_shared_bank with the
SHA-256 of the node's copy checked (as now) against the same call without it (as before),
interleaved over rounds, the file in the page cache (a node's cache on local disk, its pages
warm from the trials before). Prints min and median per variant and the check's GiB/s, and
what that makes of the paper's CIFAR-100 bank (162 views, float16: 1.51 GiB).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bank_digest.py --mib 256 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.harness import interleaved, timed
from kd_core.bank import TeacherBank
from kd_core.checkpoint import write_checkpoint
from kd_core.data import Augment
from sweeps.ray import teacher_bank
from sweeps.ray.teacher_bank import load_shared_bank, sha256
from sweeps.store.ledger import Ledger, digest_file
from sweeps.store.storage import Storage

PAPER_GIB = 1.5087  # kd_core.bank.bank_nbytes for CIFAR-100, 162 views, float16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        import os

        os.environ["KDSWEEP_CACHE"] = f"{d}/cache"
        store = Ledger(Storage(f"{d}/store"))
        images = args.mib * 2**20 // (100 * 2)
        bank = TeacherBank(torch.randn(images, 1, 100).half(), torch.zeros(images, 100),
                           Augment(0, False))
        local = Path(d) / "b.pt"
        write_checkpoint(local, {"bank": bank.state_dict(), "build_seconds": 0.0})
        rel = store.bank_file("t", "float16")
        store.storage.upload(rel, local)
        store.storage.write_json(digest_file(rel), {"size": local.stat().st_size,
                                                    "sha256": sha256(local)})
        load_shared_bank(store, "t", "float16")  # fetched once: the node's copy, warm
        size = teacher_bank.cached(rel).stat().st_size
        proven = teacher_bank._rotted

        def run(check: bool) -> float:
            teacher_bank._rotted = proven if check else (lambda local, digest: None)
            try:
                return timed(lambda: load_shared_bank(store, "t", "float16"))
            finally:
                teacher_bank._rotted = proven

        got = interleaved({"proven": lambda: run(True), "unchecked": lambda: run(False)},
                          args.rounds)
    gib = size / 2**30
    for name, xs in got.items():
        print(f"{name:10s} min {min(xs) * 1e3:8.1f} ms  "
              f"median {statistics.median(xs) * 1e3:8.1f} ms")
    extra = [p - u for p, u in zip(got["proven"], got["unchecked"], strict=True)]
    rate = gib / statistics.median(extra)
    print(f"bank {gib:.3f} GiB: the check adds median {statistics.median(extra) * 1e3:.1f} ms "
          f"(min {min(extra) * 1e3:.1f}), {rate:.2f} GiB/s; the paper's CIFAR-100 bank "
          f"({PAPER_GIB} GiB): about {PAPER_GIB / rate:.1f} s per trial start")


if __name__ == "__main__":
    main()
