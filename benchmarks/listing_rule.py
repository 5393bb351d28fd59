"""Where listing each of a sweep's keys overtakes listing the whole shared root (issue 43):
the rule Storage.list_files follows with ``only`` (storage.PAGE_ROUNDS), measured.

A root holds ``--others`` trials of other sweeps (``--files`` objects each, written straight
to moto, not timed); a fresh sweep of K keys (none stored) takes its start-up's listing both
ways, through testkit/latency.py's proxy at ``--latency`` seconds a request: ``per-key`` (one
listing of each key's folder, storage.IN_FLIGHT at once, after the root's first page) and
``root`` (the root's first page, then its 16 shards at once, every page). Each K's two ways
run interleaved over ``--rounds``; printed: requests, seconds min / median, and the root's
pages as the first page estimates them (storage.folder_pages).

    PYTHONPATH=. .venv/bin/python benchmarks/listing_rule.py --others 2000 --ks 16,32,64,128 \
        --rounds 3
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import fmt, interleaved, timed  # noqa: E402
from sweeps.store import storage as storage_module  # noqa: E402
from sweeps.store.storage import Storage, folder_pages  # noqa: E402

HEX = "0123456789abcdef"


def fill(endpoint: str, others: int, files: int) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = [secrets.token_hex(10) for _ in range(others)]

    def put(key: str) -> None:
        for i in range(files):
            s3.put_object(Bucket="kdsweep", Key=f"root/trials/{key}/f{i}.json", Body=b"{}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--others", type=int, default=2000)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--ks", default="16,32,64,128")
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    from testkit.latency import LatencyProxy
    from testkit.servers import S3_TEST_CREDENTIALS, s3_server

    os.environ.update(S3_TEST_CREDENTIALS)
    with tempfile.TemporaryDirectory() as work, s3_server(Path(work)) as endpoint:
        fill(endpoint, args.others, args.files)
        with LatencyProxy(int(endpoint.rsplit(":", 1)[1]), delay=args.latency) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
            storage = Storage("s3://kdsweep/root")
            first, _ = storage._list("trials/", pages=1)
            last = max(first)[len("trials/"):].split("/", 1)[0]
            print(f"root: {args.others} trials x {args.files} files = "
                  f"{args.others * args.files} objects, "
                  f"{args.others * args.files / storage_module.PAGE:.0f} pages; the first page "
                  f"estimates {folder_pages(last, HEX):.0f}; latency {args.latency * 1000:.0f} ms")
            for k in (int(x) for x in args.ks.split(",")):
                keys = {secrets.token_hex(10) for _ in range(k)}
                counts = {}

                def way(per_page: float, name: str, keys=keys, counts=counts):
                    def run() -> float:
                        storage_module.PAGE_ROUNDS = per_page
                        proxy.requests.clear()
                        s = timed(lambda: storage.list_files("trials", shards=HEX, only=keys))
                        counts[name] = proxy.total()
                        return s
                    return run

                res = interleaved({"per-key": way(1e12, "per-key"), "root": way(-1.0, "root")},
                                  args.rounds)
                print(f"K={k:6d}  per-key {counts['per-key']:5d} requests {fmt(res['per-key'])}"
                      f" s   root {counts['root']:5d} requests {fmt(res['root'])} s")


if __name__ == "__main__":
    main()
