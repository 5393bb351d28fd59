"""Per-epoch time with the trial's checkpoint uploaded synchronously vs in the background, to a
real S3-compatible server (moto, started here on 127.0.0.1).

Each "epoch" is a fixed amount of CPU work (matrix products, timed once alone as the
baseline) followed by a save of a real trainer state: WRN-28-4's weights plus SGD momentum
(~47 MB, what a CIFAR-100 teacher's checkpoint holds). Counted per epoch: wall time from the
epoch's start to the next epoch's start, i.e. the work plus whatever of the save the trial
waits for. The state is serialised on the trial's thread in both modes (that part is not
hidden); the background mode overlaps only the upload. Epochs: --epochs per mode, after one
untimed warm-up epoch; the last save is waited for and counted.

The three modes (work alone, sync, background) run interleaved, rotated every round
(harness.py); a mode's overhead is paired with the "alone" of its own round, and reported as
min / median over --rounds. The background upload only hides behind the epoch when a core is
free for it (and for the S3 server, which runs on this machine too): with as many torch
threads as cores it competes with the work, which --threads shows (1 and 2 on a 2-core
machine). Bound: an overhead below 0 (faster than the work alone) is a measuring error.

    PYTHONPATH=. .venv/bin/python benchmarks/checkpoint_upload.py --epochs 4 --rounds 3 \
        --threads 1,2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import bound, fmt, interleaved, paired  # noqa: E402

from kd_core.checkpoint import checkpoint_bytes  # noqa: E402
from kd_core.models import build_model  # noqa: E402
from sweeps.store.resume import TrialCheckpoints  # noqa: E402
from sweeps.store.storage import Storage  # noqa: E402
from testkit.drivers import free_port, wait_for_port  # noqa: E402


def trainer_state(epoch: int, model, optimizer) -> dict:
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}


def work(seconds_hint: int) -> None:
    a = torch.randn(512, 512)
    for _ in range(seconds_hint):
        a = (a @ a).tanh()


def epochs_of(mode: str, args, storage, model, optimizer) -> float:
    """Median seconds per epoch of ``mode`` ("alone": the work, no save)."""
    ckpts = TrialCheckpoints(storage, f"trial-{mode}")
    times = []
    for epoch in range(args.epochs + 1):
        t0 = time.perf_counter()
        work(args.work)
        if mode != "alone":
            ckpts.save(trainer_state(epoch, model, optimizer), background=mode == "background")
            if epoch == args.epochs:
                ckpts.wait()  # the last upload is counted
        if epoch:  # epoch 0: warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", default="1,2", help="torch threads, one table row set each")
    p.add_argument("--work", type=int, default=400, help="matrix products per epoch")
    args = p.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server)
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        )
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="kd-bench")
        storage = Storage("s3://kd-bench/ckpt")

        model = build_model("wrn-28-4", 100, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimizer.step()  # momentum buffers exist, as after any epoch
        size = len(checkpoint_bytes(trainer_state(0, model, optimizer)))
        t0 = time.perf_counter()
        storage.write_bytes("probe", b"x" * size)
        print(f"checkpoint {size / 2**20:.1f} MiB; one upload alone "
              f"{time.perf_counter() - t0:.3f} s; min / median over {args.rounds} rounds")
        print("| torch threads | mode | epoch s | overhead vs work alone (paired by round) |")
        print("| --- | --- | --- | --- |")
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            work(args.work)  # warm-up
            runs = interleaved({mode: (lambda mode=mode: epochs_of(mode, args, storage, model,
                                                                   optimizer))
                                for mode in ("alone", "sync", "background")}, args.rounds)
            print(f"| {threads} | alone | {fmt(runs['alone'])} | - |")
            for mode in ("sync", "background"):
                over = [100 * (r - 1) for r in paired(runs[mode], runs["alone"])]
                print(f"| {threads} | {mode} | {fmt(runs[mode])} | {fmt(over, 0)} % |")
                if line := bound(f"{mode} overhead %", over, 0.0, above=False):
                    print(line)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
