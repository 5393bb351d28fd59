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

    PYTHONPATH=$PWD .venv/bin/python benchmarks/moto_cost.py --others 0,5000,10000,20000 \
        --rounds 5
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--others", default="0,5000,10000,20000",
                   help="other trials in the bucket at each step (cumulative), x 8 objects")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--plain-up-to", type=int, default=20_000,
                   help="moto's own (scanning) listing is timed up to this many trials")
    args = p.parse_args()
    steps = [int(s) for s in args.others.split(",")]

    import boto3
    from moto.s3.models import S3Backend

    own_list = S3Backend.list_objects_v2  # moto's own, before indexed_moto replaces it
    with indexed_moto(Path(tempfile.mkdtemp()), 0.0) as (_, _, backend, bucket, direct):
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


if __name__ == "__main__":
    main()
