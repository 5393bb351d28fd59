"""Per-epoch time with the trial's checkpoint uploaded synchronously vs in the background, to a
real S3-compatible server (moto, started here on 127.0.0.1).

Each "epoch" is a fixed amount of CPU work (matrix products, timed once alone as the
baseline) followed by a save of a real trainer state: WRN-28-4's weights plus SGD momentum
(~47 MB, what a CIFAR-100 teacher's checkpoint holds). Counted per epoch: wall time from the
epoch's start to the next epoch's start, i.e. the work plus whatever of the save the trial
waits for. The state is serialised on the trial's thread in both modes (that part is not
hidden); the background mode overlaps only the upload. Epochs: --epochs per mode, after one
untimed warm-up epoch; the last save is waited for and counted.

    PYTHONPATH=. .venv/bin/python benchmarks/checkpoint_upload.py --epochs 8
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
from kd_core.checkpoint import checkpoint_bytes  # noqa: E402
from kd_core.models import build_model  # noqa: E402
from sweeps.resume import TrialCheckpoints  # noqa: E402
from sweeps.storage import Storage  # noqa: E402
from tests.drivers import free_port, wait_for_port  # noqa: E402


def trainer_state(epoch: int, model, optimizer) -> dict:
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}


def work(seconds_hint: int) -> None:
    a = torch.randn(512, 512)
    for _ in range(seconds_hint):
        a = (a @ a).tanh()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--work", type=int, default=400, help="matrix products per epoch")
    args = p.parse_args()
    torch.set_num_threads(1)

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

        work(args.work)  # warm-up
        t0 = time.perf_counter()
        work(args.work)
        alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        storage.write_bytes("probe", b"x" * size)
        upload = time.perf_counter() - t0

        print(f"checkpoint {size / 2**20:.1f} MiB; epoch work alone {alone:.3f} s; "
              f"one upload alone {upload:.3f} s")
        print("| mode | epoch s (median) | overhead vs work alone |")
        print("| --- | --- | --- |")
        for mode in ("sync", "background"):
            ckpts = TrialCheckpoints(storage, f"trial-{mode}")
            times = []
            for epoch in range(args.epochs + 1):
                t0 = time.perf_counter()
                work(args.work)
                ckpts.save(trainer_state(epoch, model, optimizer), background=mode != "sync")
                if epoch == args.epochs:
                    ckpts.wait()  # the last upload is counted
                if epoch:  # epoch 0: warm-up
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            extra = med - alone
            print(f"| {mode} | {med:.3f} | {extra:+.3f} s ({extra / alone * 100:+.0f}%) |")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
