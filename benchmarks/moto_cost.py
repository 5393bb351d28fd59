"""moto's own time per S3 request as its bucket grows (issue 43: the fresh 20k sweep beside 100k
other trials, scale.py --real --storage s3): which part of the shared root's extra start-up time
is moto's and which a real S3 would charge too.

The server is scale.py's (indexed_moto: moto in this process, its ListObjectsV2 paged from a
sorted index of the bucket's names) and, for the listing, moto's own ListObjectsV2 (a scan and
sort of the whole bucket per page) beside it. The bucket holds ``others`` trials x 8 objects
under ``shared/`` (scale.s3_others), grown step by step; at each step, straight to moto (no
proxy, no added latency), interleaved over ``--rounds``:

- ``names page``: a start-up's names pass (Storage._names): ListObjectsV2 of ``shared/trials/``
  with delimiter ``/``, 1,000 folder names a page;
- ``files page, empty``: a fresh sweep's first listing of its own root (nothing there);
- ``files page``: 1,000 objects of the shared root (no delimiter);
- ``GET``, ``HEAD``, ``PUT``: one small object (through boto3: signed).

The pages are timed as raw HTTP (http.client: moto's time plus loopback, no client parsing)
and through boto3 (the difference is the client's XML parsing, which a driver pays against any
S3). Figures: ms per request, min / median.

With ``--snapshot N``, at each step: a fresh N-trial sweep's snapshot (Snapshot.load: the
start-up's listing, the phase whose requests grow with the root) in a process of its own (a
driver's), through testkit/latency.py's proxy at ``--latency``, on the shared root and on an
empty one, interleaved: its wall and CPU seconds, its requests, and the CPU seconds moto's
process (moto and the proxy: this one) spent meanwhile. moto serves from one Python process,
so its requests' server time adds up under its GIL where S3 serves them in parallel.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/moto_cost.py --others 0,5000,10000,20000 \
        --rounds 5
    PYTHONPATH=$PWD .venv/bin/python benchmarks/moto_cost.py --others 0,25000,50000 \
        --rounds 3 --plain-up-to 0 --snapshot 2000
"""


from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import interleaved  # noqa: E402
from benchmarks.scale import indexed_moto, real_spec, s3_others  # noqa: E402

CLIENT = r"""
import json, sys, time
from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.store.ledger import Ledger
from sweeps.store.snapshot import Snapshot
from sweeps.store.storage import Storage
spec = parse_spec(json.loads(sys.argv[1]))
keys = [t.key for t in build_plan(spec).trials]
ledger = Ledger(Storage(spec.storage), repair=False)
t0, c0 = time.perf_counter(), time.process_time()
Snapshot.load(ledger, keys)
print(json.dumps([time.perf_counter() - t0, time.process_time() - c0]))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--others", default="0,5000,10000,20000",
                   help="other trials in the bucket at each step (cumulative), x 8 objects")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--plain-up-to", type=int, default=20_000,
                   help="moto's own (scanning) listing is timed up to this many trials")
    p.add_argument("--snapshot", type=int, default=0,
                   help="also time a fresh sweep of this many trials' snapshot (0: not)")
    p.add_argument("--latency", type=float, default=0.05, help="--snapshot: s per request")
    args = p.parse_args()
    steps = [int(s) for s in args.others.split(",")]

    import boto3
    from moto.s3.models import S3Backend

    own_list = S3Backend.list_objects_v2  # moto's own, before indexed_moto replaces it
    with indexed_moto(Path(tempfile.mkdtemp()), args.latency) as (endpoint, proxy, backend,
                                                                  bucket, direct):
        indexed_list = S3Backend.list_objects_v2
        host, port = direct.removeprefix("http://").split(":")
        s3 = boto3.client("s3", endpoint_url=direct, region_name="us-east-1")
        conn = http.client.HTTPConnection(host, int(port))

        def one(call, **kw) -> float:  # an object request, through boto3 (signed)
            t0 = time.perf_counter()
            r = call(Bucket=bucket, **kw)
            if "Body" in r:
                r["Body"].read()
            return time.perf_counter() - t0

        def listing(query: str) -> float:
            t0 = time.perf_counter()
            conn.request("GET", f"/{bucket}?list-type=2&{query}",
                         headers={"Host": f"{host}:{port}"})
            r = conn.getresponse()
            data = r.read()
            assert r.status == 200, data[:300]
            return time.perf_counter() - t0

        def boto(**kw) -> float:
            t0 = time.perf_counter()
            s3.list_objects_v2(Bucket=bucket, **kw)
            return time.perf_counter() - t0

        s3.put_object(Bucket=bucket, Key="fresh/x", Body=b"0" * 64)
        have = 0
        print("| others (objects) | request | moto: indexed list (scale.py) | moto's own list |"
              " boto3 (indexed) |")
        print("|---|---|---|---|---|")
        for want in steps:
            t0 = time.perf_counter()
            if want > have:
                have += s3_others(backend, bucket, "shared",
                                  real_spec("others", want - have, "s3://kdsweep/shared",
                                            first_seed=10**6 + have))
            key = max(backend.get_bucket(bucket).keys)  # the last name: a shared one if any
            print(f"<!-- {have:,} other trials, {len(backend.get_bucket(bucket).keys):,} "
                  f"objects ({time.perf_counter() - t0:.0f} s to add) -->", flush=True)
            cases = {
                "names page": lambda: listing("prefix=shared%2Ftrials%2F&delimiter=%2F"),
                "files page, empty": lambda: listing("prefix=fresh%2Ftrials%2F"),
                "files page": lambda: listing("prefix=shared%2Ftrials%2F"),
                "GET": lambda key=key: one(s3.get_object, Key=key),
                "HEAD": lambda key=key: one(s3.head_object, Key=key),
                "PUT": lambda: one(s3.put_object, Key="fresh/y", Body=b"0" * 64),
            }
            boto_cases = {
                "names page": lambda: boto(Prefix="shared/trials/", Delimiter="/"),
                "files page, empty": lambda: boto(Prefix="fresh/trials/"),
                "files page": lambda: boto(Prefix="shared/trials/"),
            }
            variants = {("indexed", n): f for n, f in cases.items()}
            variants |= {("boto3", n): f for n, f in boto_cases.items()}
            figures = interleaved(variants, args.rounds)
            plain = {}
            if have <= args.plain_up_to:
                S3Backend.list_objects_v2 = own_list
                try:
                    plain = interleaved({n: cases[n] for n in boto_cases}, max(2, args.rounds // 2))
                finally:
                    S3Backend.list_objects_v2 = indexed_list

            def cell(xs) -> str:
                return f"{min(xs) * 1e3:.1f} / {statistics.median(xs) * 1e3:.1f}" if xs else "-"

            objects = len(backend.get_bucket(bucket).keys)
            for n in cases:
                print(f"| {have:,} ({objects:,}) | {n} | {cell(figures['indexed', n])} | "
                      f"{cell(plain.get(n, []))} | {cell(figures.get(('boto3', n), []))} |",
                      flush=True)
            if args.snapshot:
                snapshots(args, endpoint, proxy, have)


def snapshots(args, endpoint: str, proxy, have: int) -> None:
    """A fresh sweep's snapshot on the shared root and on an empty one (interleaved)."""
    import json
    import os
    import subprocess

    made = {"n": 0}

    def one(root: str) -> tuple:
        made["n"] += 1
        spec = real_spec(f"fresh-{made['n']}", args.snapshot, f"s3://kdsweep/{root}",
                         first_seed=10**5 * made["n"])
        before, c0 = proxy.total(), time.process_time()
        out = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(spec)], check=True,
                             capture_output=True, text=True,
                             env={**os.environ, "AWS_ENDPOINT_URL": endpoint})
        wall, cpu = json.loads(out.stdout.strip().splitlines()[-1])
        return wall, cpu, time.process_time() - c0, proxy.total() - before

    figures = interleaved({"shared": lambda: one("shared"), "empty": lambda: one("empty")},
                          args.rounds)
    for root, runs in figures.items():
        walls, cpus, server, requests = zip(*runs, strict=True)
        print(f"| {have:,} | snapshot of a fresh {args.snapshot:,}-trial sweep, {root} root | "
              f"wall {min(walls):.2f} / {statistics.median(walls):.2f} s | driver CPU "
              f"{min(cpus):.2f} / {statistics.median(cpus):.2f} s | moto+proxy CPU "
              f"{min(server):.2f} / {statistics.median(server):.2f} s | "
              f"{statistics.median(requests):.0f} requests |", flush=True)


if __name__ == "__main__":
    main()
