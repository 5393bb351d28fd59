"""Host memory of teacher-logit banks: the build's peak, and N trials of one teacher on a node.

1. Build peak: a bank is built (kd_core.bank.bank_for) and written to storage, the way it was
   (serialised to bytes in memory, then written: sweeps' old build_shared_bank) and the way it
   is (torch.save straight to the node-cache file, streamed to storage: write_checkpoint +
   Storage.upload). Counted: the process's peak RSS (sampled every 5 ms) above its RSS just
   before the build, over the bank's size. The build itself holds one bank; the rest is the
   write path's copies.
2. N trials: N processes load the same cached bank file, each touching every logit (a sum over
   all of them, in chunks), and report their PSS (proportional set size: a page shared by k
   processes counts 1/k in each) while all N hold it. Counted: the sum of the N PSS values
   minus that of N baseline processes (the same imports, loop and temporaries over one small
   tensor, no bank), over the bank's size; with torch.load(mmap=True) (now) and without
   (before: a private copy each).

Synthetic CIFAR-like data at 8x8 pixels (padding 4 + flip: 162 views, 100 classes) with a
cnn-small teacher, so that the build takes seconds on a CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/bank_memory.py --images 4000 --trials 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

CHILD = r"""
import json, os, sys, time
import psutil, torch
from kd_core.checkpoint import load_checkpoint
path, mmap, go, n = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
if path != "-":
    logits = load_checkpoint(path, mmap=mmap)["bank"]["logits"]
    chunk = lambda i: logits[i : i + 16]
else:  # the baseline: the same loop and temporaries over one small tensor, no bank
    small = torch.zeros(16, 162, 100, dtype=torch.float16)
    chunk = lambda i: small
total = 0.0
for i in range(0, n, 16):  # small temporaries: glibc keeps big freed ones
    total += float(chunk(i).float().sum())
print(json.dumps({"ready": True}), flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
print(json.dumps({"pss": psutil.Process().memory_full_info().pss}), flush=True)
"""


def peak_above(fn) -> int:
    """Peak RSS (sampled) above the RSS before fn() runs."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return peak[0] - base


def build_peaks(images: int, tmp: Path) -> tuple[int, dict[str, int], Path]:
    import torch

    from kd_core.bank import bank_for, bank_nbytes
    from kd_core.checkpoint import checkpoint_bytes, write_checkpoint
    from kd_core.data.datasets import synthetic
    from kd_core.models import build_model
    from sweeps.storage import Storage

    torch.set_num_threads(2)
    data = synthetic(n_train=images, n_test=256, num_classes=100, image_size=8, channels=1)
    teacher = build_model("cnn-small", 100, 1).eval()
    nbytes = bank_nbytes(images, data.augment, 100)
    storage = Storage(str(tmp / "store"))
    peaks = {}

    def old():
        bank = bank_for(teacher, data, "cpu")
        state = {"bank": bank.state_dict(), "build_seconds": 0.0}
        storage.write_bytes("old.pt", checkpoint_bytes(state))

    def new():
        bank = bank_for(teacher, data, "cpu")
        state = {"bank": bank.state_dict(), "build_seconds": 0.0}
        del bank
        write_checkpoint(tmp / "cache.pt", state)
        del state
        storage.upload("new.pt", tmp / "cache.pt")

    for name, fn in (("before (bytes in memory)", old), ("now (file, streamed)", new)):
        peaks[name] = peak_above(fn)
    return nbytes, peaks, tmp / "cache.pt"


def trials_pss(path: Path, n: int, mmap: bool, tmp: Path, images: int) -> list[int]:
    go = tmp / f"go-{mmap}-{path.name}"
    args = [str(path), "1" if mmap else "0", str(go), str(images)]
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    for p in procs:
        assert json.loads(p.stdout.readline())["ready"]
    go.touch()  # all N hold the bank now
    out = [json.loads(p.stdout.readline())["pss"] for p in procs]
    for p in procs:
        p.wait(60)
    go.unlink()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--trials", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdbank-"))
    nbytes, peaks, cache = build_peaks(args.images, tmp)
    mib = 2**20
    print(f"bank: {args.images} images x 162 views x 100 classes, fp16 = {nbytes / mib:.0f} MiB")
    print("| build and write | peak RSS above start | x bank |")
    print("| --- | --- | --- |")
    for name, peak in peaks.items():
        print(f"| {name} | {peak / mib:.0f} MiB | {peak / nbytes:.2f} |")
    empty = sum(trials_pss(Path("-"), args.trials, False, tmp, args.images)) / args.trials
    print(f"\n{args.trials} trials of one teacher on a node (PSS above a bank-less process):")
    print("| load | sum of PSS above baseline | x bank |")
    print("| --- | --- | --- |")
    for name, mmap in (("before (private copy)", False), ("now (mmap, page cache)", True)):
        extra = sum(trials_pss(cache, args.trials, mmap, tmp, args.images)) - args.trials * empty
        print(f"| {name} | {extra / mib:.0f} MiB | {extra / nbytes:.2f} |")


if __name__ == "__main__":
    main()
