"""Host memory of teacher-logit banks: the build's peak, and N trials of one teacher on a node.

1. Build peak: a bank is built (kd_core.bank.bank_for) and written to storage, the way it was
   (serialised to bytes in memory, then written: sweeps' old build_shared_bank) and the way it
   is (torch.save straight to the node-cache file, streamed to storage: write_checkpoint +
   Storage.upload). Counted: the process's peak RSS (sampled every 5 ms) above its RSS just
   before the build, over the bank's size. The build itself holds one bank; the rest is the
   write path's copies.
2. N trials: N processes load the same cached bank file, each touching every logit (a sum over
   all of them, in chunks), and report while all N hold it. With torch.load(mmap=True) (now),
   counted: the sum over the N processes of the PSS (proportional set size: a page shared by
   k processes counts 1/k in each) of the bank file's own mapping (/proc/PID/smaps), over the
   bank's size. Its bound: one resident copy is 1.00 (plus page rounding); a figure above it is
   a second copy, one below it pages never touched, and either crossing is reported. Without
   mmap (before: a private copy each) the copy is anonymous memory with no mapping to name, so
   that one is counted as the sum of whole-process PSS minus N baseline processes (the same
   imports, loop and temporaries over one small tensor, no bank): near N, and noisy.
   The three (mmap, private, baseline) run interleaved, rotated each round (harness.py);
   figures are min / median over --rounds.

Synthetic CIFAR-like data at 8x8 pixels (padding 4 + flip: 162 views, 100 classes) with a
cnn-small teacher, so that the build takes seconds on a CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/bank_memory.py --images 4000 --trials 4 --rounds 3
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import bound, fmt, interleaved  # noqa: E402

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
mapped = 0  # PSS of the bank file's own mapping(s), in bytes
with open("/proc/self/smaps") as f:
    inside = False
    for line in f:
        head = line.split()
        if "-" in head[0] and len(head) >= 5:  # a mapping's header line
            inside = path != "-" and line.rstrip().endswith(os.path.abspath(path))
        elif inside and head[0] == "Pss:":
            mapped += int(head[1]) * 1024
print(json.dumps({"pss": psutil.Process().memory_full_info().pss, "mapped": mapped}),
      flush=True)
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
    from sweeps.store.storage import Storage

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


def trials_pss(path: Path, n: int, mmap: bool, tmp: Path, images: int) -> list[dict]:
    go = tmp / f"go-{mmap}-{path.name}"
    args = [str(path), "1" if mmap else "0", str(go), str(images)]
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    for p in procs:
        assert json.loads(p.stdout.readline())["ready"]
    go.touch()  # all N hold the bank now
    out = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait(60)
    go.unlink()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdbank-"))
    nbytes, peaks, cache = build_peaks(args.images, tmp)
    mib = 2**20
    print(f"bank: {args.images} images x 162 views x 100 classes, fp16 = {nbytes / mib:.0f} MiB")
    print("| build and write | peak RSS above start | x bank |")
    print("| --- | --- | --- |")
    for name, peak in peaks.items():
        print(f"| {name} | {peak / mib:.0f} MiB | {peak / nbytes:.2f} |")

    n = args.trials
    runs = interleaved({
        "mmap": lambda: trials_pss(cache, n, True, tmp, args.images),
        "private": lambda: trials_pss(cache, n, False, tmp, args.images),
        "baseline": lambda: trials_pss(Path("-"), n, False, tmp, args.images),
    }, args.rounds)
    mapped = [sum(c["mapped"] for c in r) / nbytes for r in runs["mmap"]]
    private = [(sum(c["pss"] for c in r) - sum(c["pss"] for c in b)) / nbytes
               for r, b in zip(runs["private"], runs["baseline"], strict=True)]
    whole = [(sum(c["pss"] for c in r) - sum(c["pss"] for c in b)) / nbytes
             for r, b in zip(runs["mmap"], runs["baseline"], strict=True)]
    print(f"\n{n} trials of one teacher on a node, x bank, min / median over {args.rounds} "
          "rounds:")
    print("| load | counted | x bank |")
    print("| --- | --- | --- |")
    print(f"| now (mmap, page cache) | PSS of the bank file's mapping, summed | {fmt(mapped)} |")
    print(f"| now (mmap, page cache) | whole-process PSS above baseline (noisy) | {fmt(whole)} |")
    print(f"| before (private copy) | whole-process PSS above baseline (noisy) | "
          f"{fmt(private)} |")
    # One resident copy of the file: its logits plus the checkpoint's other entries (test
    # logits, metadata), and each process may round a partial page at either end.
    page = 2 * 4096 * n / nbytes
    whole_file = cache.stat().st_size / nbytes
    print(f"(the cached file is {whole_file:.3f} x the logits: its one copy is the bound)")
    for line in (bound("mmap mapping PSS", mapped, whole_file + page),
                 bound("mmap mapping PSS", mapped, 1.0 - page, above=False),
                 bound("private copies", private, n * 1.05)):
        if line:
            print(line)


if __name__ == "__main__":
    main()
