"""Sweeps on S3 storage, against moto's S3-compatible server on 127.0.0.1 (started here)."""

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import boto3
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.ray.engine import tune_dir
from sweeps.store.ledger import CHECKPOINTS, Ledger, TrialState, trial_file
from sweeps.store.storage import Storage
from testkit import HANG, servers
from testkit.drivers import (
    EPOCHS,
    fork_driver,
    kill_leftovers,
    ray_dir,
    write_spec,
)
from testkit.latency import CONDITIONAL, LatencyProxy

pytestmark = pytest.mark.slow
# Planted secrets: the drivers get them in their environment, and no file they or Ray write
# (S3 objects, the MLflow store and artifacts, logs) nor their output may contain them.
SECRETS = {"AWS_SECRET_ACCESS_KEY": "kd-planted-s3-secret-7Qx2",
           "MLFLOW_TRACKING_PASSWORD": "kd-planted-mlflow-secret-9Wv4"}
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_DEFAULT_REGION": "us-east-1", **SECRETS}


def files_holding(root, needles):
    """Every file under ``root`` (links followed) whose bytes contain one of ``needles``."""
    hits = []
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = os.path.join(folder, name)
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue  # sockets, vanished files
            hits += [path for n in needles if n.encode() in data]
    return hits


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    with servers.s3_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield {**CREDS, "AWS_ENDPOINT_URL": endpoint}


def test_sweep_on_s3_resumes_and_reuses_teachers(s3_server, tmp_path, monkeypatch, run_here,
                                                  forks):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    spec_path = write_spec(tmp_path, storage="s3://kdsweep/sweeps-test")
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    storage = Storage(spec.storage)
    assert not storage.is_local
    plan = build_plan(spec)
    keys = {t.key for t in plan.trials}
    student = next(t for t in plan.trials if t.generation == 1)
    try:
        # killed in the middle of a student: the fault point at its epoch 2
        driver = fork_driver(forks, spec_path, tmp_path,
                             {**s3_server, "KDSWEEP_FAULT": "epoch=1.2"})
        assert driver.wait(HANG) == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-3000:]
        kill_leftovers(tmp_path)  # Ray's workers too, before storage is read
        killed_at = storage.read_json(trial_file(student.key, "progress.json"))["epoch"]
        assert any(storage.exists(trial_file(student.key, s)) for s in CHECKPOINTS)  # on S3

        rerun = fork_driver(forks, spec_path, tmp_path, s3_server)
        assert rerun.wait(HANG) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        kill_leftovers(tmp_path)
        # No secret in what the drivers printed, the MLflow store and artifacts, Ray's logs
        # (tmp_path holds them all, Ray's temp dir through a link) or any object in storage.
        secrets = list(SECRETS.values())
        assert files_holding(tmp_path, secrets) == []
        s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"],
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        objects = s3.list_objects_v2(Bucket="kdsweep")["Contents"]
        assert len(objects) > 20
        # Tune's experiment state stays on the driver's disk: no request of Tune's on S3
        assert [o["Key"] for o in objects if "/tune/" in o["Key"]] == []
        for o in objects:
            body = s3.get_object(Bucket="kdsweep", Key=o["Key"])["Body"].read()
            assert not any(x.encode() in body for x in secrets), o["Key"]
    finally:
        kill_leftovers(tmp_path, remove=True)

    result = storage.read_json(trial_file(student.key, "result.json"))
    assert result["resumed_from"][-1] >= killed_at and result["preemptions"] >= 1
    history = storage.read_json(trial_file(student.key, "history.json"))["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    for k in keys:
        assert storage.exists(trial_file(k, "model.pt"))  # teachers and students, on S3
    df = pd.read_parquet(io.BytesIO(storage.read_bytes("sweeps/resume/local/results.parquet")))
    assert set(df.key) == keys and (df.state == "done").all()
    # MLflow holds each model by reference to storage: the driver never copied one over.
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id],
                              "tags.`kdsweep.role` = 'trial'")
    assert {r.data.tags["kdsweep.key"] for r in runs} == keys
    for r in runs:
        key = r.data.tags["kdsweep.key"]
        assert storage.uri_of(r.data.tags["kdsweep.model"]) == storage.uri_of(
            trial_file(key, "model.pt"))
        # no model downloaded to upload again; the analyses and the worker's curve are small
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["analysis.json",
                                                                          "curve.png"]

    # A second sweep over the same storage reuses every trial, teachers included, reading
    # each stored result once (counted at the server's door: a proxy in front of it).
    (tmp_path / "other").mkdir()
    other = write_spec(tmp_path / "other", name="resume-again", storage="s3://kdsweep/sweeps-test")
    before = {k: storage.read_json(trial_file(k, "result.json"))["finished_at"] for k in keys}
    port = int(s3_server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    with LatencyProxy(port, delay=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        assert run_here(other) == 0  # in this process (the credentials are in its environment)
    results = {path: n for (method, path), n in proxy.paths.items()
               if method == "GET" and path.endswith("/result.json")}
    assert results == {f"/kdsweep/sweeps-test/{trial_file(k, 'result.json')}": 1 for k in keys}
    # its MLflow runs are new (its own store) and no worker ran: each stored trial's analysis
    # and curve are read once, in the tracker's lane, and logged
    files = trial_requests(proxy, "sweeps-test")
    assert files["analysis.json"] == files["curve.png"] == {"GET": len(keys)}
    client = MlflowClient(parse_spec(yaml.safe_load(other.read_text())).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("resume-again").experiment_id],
                              "tags.`kdsweep.role` = 'trial'")
    assert {r.data.tags["kdsweep.key"]: [a.path for a in client.list_artifacts(r.info.run_id)]
            for r in runs} == {k: ["analysis.json", "curve.png"] for k in keys}
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["AWS_ENDPOINT_URL"])
    after = {k: storage.read_json(trial_file(k, "result.json"))["finished_at"] for k in keys}
    assert after == before


def trial_requests(proxy: LatencyProxy, root: str) -> dict[str, dict[str, int]]:
    """The requests the proxy passed for trials' files under ``root``, by file name:
    {"analysis.json": {"GET": n, "PUT": m}, ...}."""
    out: dict[str, dict[str, int]] = {}
    for (method, path), n in proxy.paths.items():
        if path.startswith(f"/kdsweep/{root}/trials/"):
            name = path.rsplit("/", 1)[1]
            out.setdefault(name, {}).setdefault(method, 0)
            out[name][method] += n
    return out


def test_a_fresh_trials_analysis_and_curve_reach_mlflow_without_a_read(s3_server, tmp_path,
                                                                        monkeypatch, forks):
    """The analysis and curve a worker made ride with its last report to the trial's MLflow
    run: a fresh sweep on S3 makes no GET of either (counted at the server's door, every
    process of the sweep behind the proxy), and Tune's state on the driver's disk never holds
    the curve's bytes. (A rerun, whose trials are stored, reads each once in the tracker's
    lane: test_sweep_on_s3_resumes_and_reuses_teachers.)

    Issue 43, the start-up's overlap: the proxy holds every listing of the root's trials until
    the driver's local Ray has started; the driver, which takes its lease before Ray starts,
    lists beside that start (snapshot.Loading), so its snapshot's listing passes once Ray
    stands, and the sweep ends. A driver that listed before starting Ray would wait here
    until the hold's guard let it go."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    root = "outputs-test"
    spec_path = write_spec(tmp_path, storage=f"s3://kdsweep/{root}",
                           chains=[["cnn-small", "cnn-small"]],
                           train={"epochs": 2, "batch_size": 64, "lr": 0.02})
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    keys = {t.key for t in build_plan(spec).trials}
    port = int(s3_server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    guard = time.time() + 40  # within boto3's 60 s read timeout: a guard, not a speed
    log: list[tuple[float, bytes]] = []
    sessions = Path(ray_dir(tmp_path))  # the driver's Ray's folder (RAY_TMPDIR)

    def ray_started() -> float | None:
        """When the driver's Ray started (its session folder's name), None before."""
        for session in sessions.glob("*/session_2*"):
            return datetime.strptime(session.name[8:34], "%Y-%m-%d_%H-%M-%S_%f").timestamp()
        return None

    def held(line: bytes) -> bool:  # the root's trials listed before the driver's Ray started
        return (b"list-type=2" in line and f"prefix={root}%2Ftrials".encode() in line
                and ray_started() is None and time.time() < guard)

    try:
        with LatencyProxy(port, delay=0.0, hold=held, log=log) as proxy:
            driver = fork_driver(forks, spec_path, tmp_path,
                                 {**s3_server, "AWS_ENDPOINT_URL": proxy.endpoint})
            try:
                assert driver.wait(HANG) == 0, (tmp_path / "driver.log").read_text()[-3000:]
            finally:
                kill_leftovers(tmp_path)
        ray_at = ray_started()
        lease = [t for t, line in log if line.startswith(b"PUT ") and b"/driver.lease" in line]
        listed = [t for t, line in log
                  if b"list-type=2" in line and f"prefix={root}%2Ftrials".encode() in line]
        assert ray_at is not None and lease and listed
        assert lease[0] < ray_at  # the lease before Ray: its fence as before
        # the snapshot's listing passed once Ray had started, not at the guard's end
        assert ray_at <= listed[0] < guard, (ray_at, listed[0], guard)
        fresh = trial_requests(proxy, root)
        assert fresh["analysis.json"] == {"PUT": len(keys)}  # written by its worker, not read
        assert fresh["curve.png"] == {"PUT": len(keys)}
        client = MlflowClient(spec.tracking_uri)
        runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id],
                                  "tags.`kdsweep.role` = 'trial'")
        assert {r.data.tags["kdsweep.key"]: [a.path for a in client.list_artifacts(r.info.run_id)]
                for r in runs if r.info.status == "FINISHED"} == {
            k: ["analysis.json", "curve.png"] for k in keys}
        tune_state = [p for p in tune_dir(spec, Storage(spec.storage).uri).rglob("*")
                      if p.is_file()]
        assert tune_state  # Tune's experiment state, its last results in it
        png = b"\x89PNG\r\n\x1a\n"
        assert [p for p in tune_state if png in (b := p.read_bytes()) or png.hex().encode() in b
                ] == []
    finally:
        kill_leftovers(tmp_path, remove=True)


def test_credentials_in_the_spec_are_refused():
    with pytest.raises(ValueError, match="credentials do not belong in the spec"):
        Storage("s3://kd/x?access_key=AKIA&secret_key=shh")


def test_a_missing_bucket_is_named_before_ray(s3_server, tmp_path):
    spec = write_spec(tmp_path, storage="s3://no-such-bucket/x")
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", str(spec)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, **s3_server, "RAY_TMPDIR": str(tmp_path)})
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "kdsweep run: error: storage: bucket 'no-such-bucket' does not exist at "
        "s3://no-such-bucket/x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no store, no Ray


def test_a_failed_listing_in_its_thread_raises_at_the_join_as_inline(s3_server, monkeypatch):
    """snapshot.Loading (the driver's snapshot, listed beside its lease and Ray's start): a
    listing the storage refuses (its bucket gone after the driver's checks) raises at the
    join what Snapshot.load raised inline, so the driver's line and exit code are the same;
    the thread has ended."""
    from sweeps.store.snapshot import Loading, Snapshot

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    ledger = Ledger(Storage("s3://no-such-bucket/x"), repair=False)
    keys = [f"{i:020x}" for i in range(3)]
    with pytest.raises(Exception) as inline:
        Snapshot.load(ledger, keys)
    loading = Loading(ledger, keys)
    with pytest.raises(type(inline.value)) as joined:
        loading.join()
    assert str(joined.value) == str(inline.value)
    assert not loading._thread.is_alive()


def test_leases_on_s3_are_conditional_writes_checked_by_the_server(s3_server, monkeypatch):
    """The storage refuses a stale lease write (If-Match on an ETag that changed; If-None-Match
    on a lease that exists), so a paused driver's renewal cannot overwrite its successor's."""
    from sweeps.store import lease as lease_module
    from sweeps.store.lease import DriverLease
    from sweeps.store.storage import WriteConflict

    for k, v in s3_server.items():
        if k != "AWS_ENDPOINT_URL":  # the endpoint from the URI's query, as a spec may give it
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(lease_module, "TTL", 0.5)
    monkeypatch.setattr(lease_module, "beat", lambda: 3600.0)  # renewals only by hand
    host = s3_server["AWS_ENDPOINT_URL"].removeprefix("http://")
    storage = Storage(f"s3://kdsweep/lease-test?endpoint_override={host}&scheme=http")
    v1 = storage.write_if("l", b"one", None)
    with pytest.raises(WriteConflict):
        storage.write_if("l", b"again", None)
    v2 = storage.write_if("l", b"two", v1)
    with pytest.raises(WriteConflict):
        storage.write_if("l", b"stale", v1)
    assert storage.read_versioned("l") == (b"two", v2)
    assert not storage.delete_if("l", v1) and storage.delete_if("l", v2)
    assert storage.read_versioned("l") == (None, None)

    a, told = DriverLease(storage, "driver.lease"), []
    a.on_lost = told.append
    a.acquire()
    b = DriverLease(storage, "driver.lease")
    b.acquire()  # a is silent for the TTL (paused): b takes it over
    assert a.renew() is False and [h["token"] for h in told] == [b.token]
    assert storage.read_json("driver.lease")["fence"] == 2
    b.release()
    assert not storage.exists("driver.lease")


@contextlib.contextmanager
def stored_behind_proxy(s3_server, monkeypatch, tmp_path, root: str):
    """A spec's trials stored on moto under ``root`` (fabricated), read through a proxy that
    counts requests: (proxy, the stored trials, a ledger that repairs nothing)."""
    from testkit.fabricate import fabricate

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    port = int(s3_server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    with LatencyProxy(port, delay=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        spec = parse_spec(yaml.safe_load(write_spec(tmp_path,
                                                    storage=f"s3://kdsweep/{root}").read_text()))
        stored = fabricate(spec)
        yield proxy, stored, Ledger(Storage(spec.storage), repair=False)


def test_state_is_one_listing_then_one_get_per_stored_result(s3_server, monkeypatch, tmp_path):
    """A snapshot of 8 stored and 2,000 planned trials costs one LIST and 8 GETs, whatever the
    number planned; past a page, the listing is read in 16 shards at once, each file once."""
    from sweeps.store.snapshot import Snapshot

    with stored_behind_proxy(s3_server, monkeypatch, tmp_path, "listed") as (proxy, stored,
                                                                              ledger):
        planned = [f"{i:020x}" for i in range(2000)]
        proxy.requests.clear()
        snap = Snapshot.load(ledger, [t.key for t in stored] + planned)
        assert dict(proxy.requests) == {"GET": 1 + len(stored)}  # the LIST is a GET
        assert snap.ended() == {t.key for t in stored}
        assert all(snap.state(k) is TrialState.PENDING for k in planned)

        # 1,100 more files: past a page of 1,000, so read as 16 concurrent shard listings
        s3 = boto3.client("s3")
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket="kdsweep",
                                                  Key=f"listed/trials/{k}/progress.json",
                                                  Body=b"{}"), planned[:1100]))
        proxy.requests.clear()
        listed = ledger.storage.list_files("trials", shards="0123456789abcdef")
        assert len(listed) == 1100 + 3 * len(stored)  # a result, its history, a model each
        assert 1 + 16 <= proxy.total() <= 1 + 16 + 2  # the first page, then a page per shard


def test_status_with_a_runs_index_reads_no_result_on_s3(s3_server, monkeypatch, tmp_path):
    """Issue 43: with the index of states a run's end writes (states.json), the states need
    the index (a GET) and the listing (its stamps), and no GET of a result whose object is
    still the one indexed: a stamp the listing gave (read at the run's start) or a HEAD gave
    (a trial ended in the run) is the listing's, to the second. A result written since is
    read."""
    from types import SimpleNamespace

    from sweeps.store.snapshot import Snapshot, state_index

    with stored_behind_proxy(s3_server, monkeypatch, tmp_path, "indexed") as (proxy, stored,
                                                                               ledger):
        keys = [t.key for t in stored]
        sweep = SimpleNamespace(name="indexed", cluster="local")
        snap = Snapshot.load(ledger, keys)
        del snap.proven[keys[0]]  # as if it ended in the run: stamped by a HEAD, then read
        proxy.requests.clear()
        ledger.save_state_index(sweep, state_index(snap, keys), fence=1)
        assert dict(proxy.requests) == {"HEAD": 1, "GET": 1, "PUT": 1}
        proxy.requests.clear()
        status = Snapshot.load(ledger, keys, results=False, index=ledger.state_index(sweep))
        assert dict(proxy.requests) == {"GET": 2}  # the index, the listing
        assert status.states == snap.states and set(status.states.values()) == {
            TrialState.DONE}
        record = ledger.storage.read_json(trial_file(keys[1], "result.json"))
        ledger.storage.write_json(trial_file(keys[1], "result.json"),
                                  {**record, "state": "diverged"})
        proxy.requests.clear()
        status = Snapshot.load(ledger, keys, results=False, index=ledger.state_index(sweep))
        assert dict(proxy.requests) == {"GET": 3}  # and the result written since
        assert status.states[keys[1]] is TrialState.DIVERGED


def test_a_sweeps_state_lists_its_own_keys_not_a_root_of_other_sweeps(s3_server, monkeypatch,
                                                                      tmp_path):
    """Issue 43: on a root that holds another sweep's trials past a page, a sweep's start-up
    reads the root's first page, then lists each of its own keys' folders (those the page did
    not hold whole), concurrently, and reads its stored results: never the other sweep's
    listing. Its states are the states the root's whole listing gives."""
    from concurrent.futures import ThreadPoolExecutor

    from sweeps.store import storage as storage_module
    from sweeps.store.snapshot import Snapshot
    from sweeps.store.storage import folder_pages, per_name

    with stored_behind_proxy(s3_server, monkeypatch, tmp_path, "shared") as (proxy, stored,
                                                                              ledger):
        def key(n):  # keys are hashes: spread over the key space
            return hashlib.sha256(str(n).encode()).hexdigest()[:20]

        others = [key(i) for i in range(1100)]  # past a page of the root
        running, claimed = "ff" + key("running")[2:], "ff" + key("claimed")[2:]  # past it
        ours = [t.key for t in stored] + [running, claimed]
        s3 = boto3.client("s3")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda rel: s3.put_object(Bucket="kdsweep", Key=f"shared/{rel}",
                                                    Body=b"{}"),
                          [trial_file(k, "result.json") for k in others]
                          + [trial_file(claimed, "claim.lease")]))
        ledger.write_progress(running, 1, 2)
        page = s3.list_objects_v2(Bucket="kdsweep", Prefix="shared/trials/")
        assert page["IsTruncated"]  # the root is past a page
        last = page["Contents"][-1]["Key"].split("/")[2]
        after = [k for k in ours if f"{k}/" >= f"{last}/"]
        assert after and per_name(len(after), folder_pages(last, "0123456789abcdef"))
        proxy.requests.clear()
        snap = Snapshot.load(ledger, ours)
        # the root's first page, a listing per own key it did not hold whole, a GET per result
        assert dict(proxy.requests) == {"GET": 1 + len(after) + len(stored)}
        assert set(snap.listing.trials) <= set(ours)
        assert snap.ended() == {t.key for t in stored}
        assert (snap.states[running], snap.states[claimed]) == (TrialState.RUNNING,
                                                                 TrialState.CLAIMED)
        # A fresh sweep of many keys (past the per-key rule): the root's names alone, one
        # entry a trial, each shard's one page here; none of its keys is there: nothing more
        fresh = ["ff" + key(f"fresh-{i}")[2:] for i in range(300)]  # past the first page
        assert not per_name(len(fresh), folder_pages(last, "0123456789abcdef"))
        proxy.requests.clear()
        new = Snapshot.load(ledger, fresh)
        assert dict(proxy.requests) == {"GET": 1 + 16}
        assert set(new.states.values()) == {TrialState.PENDING}
        monkeypatch.setattr(storage_module, "PAGE_ROUNDS", -1.0)  # the root's listing instead
        proxy.requests.clear()
        whole = Snapshot.load(ledger, ours)
        # the first page, the names (16 shards), every shard's files (16), the results
        assert proxy.requests["GET"] == 1 + 16 + 16 + len(stored)
        assert whole.states == snap.states
        assert {k: whole.listing.names(k) for k in ours} == {k: snap.listing.names(k)
                                                             for k in ours}


def test_storage_that_ignores_conditional_writes_is_refused_before_anything(s3_server, tmp_path,
                                                                            monkeypatch):
    """Issue 41: behind a proxy that strips If-Match / If-None-Match (as older MinIO and some
    gateways ignore them), two drivers held one lease at once. `kdsweep plan` and `run` now
    probe the storage first: one line naming what it lacks and what to use instead, exit 2,
    nothing written (the probe's own object deleted, no Ray, no store, no trial); the same
    spec on moto itself passes the probe (and runs: test_sweep_on_s3_resumes_and_reuses_
    teachers)."""
    spec = write_spec(tmp_path, storage="s3://kdsweep/stripped")
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"],
                      aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    port = int(s3_server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    with LatencyProxy(port, delay=0.0, strip=CONDITIONAL) as proxy:
        for command in ("plan", "run"):
            out = subprocess.run([sys.executable, "-m", "sweeps.cli", command, str(spec)],
                                 capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                 env={**os.environ, **s3_server, "RAY_TMPDIR": str(tmp_path),
                                      "AWS_ENDPOINT_URL": proxy.endpoint})
            assert out.returncode == 2, out.stderr[-2000:]
            line = out.stderr.strip()
            assert line.startswith(f"kdsweep {command}: error: storage: s3://kdsweep/stripped "
                                   "does not enforce conditional writes (If-None-Match: *")
            assert "If-Match" in line and "use AWS S3" in line and "\n" not in line
        assert proxy.stripped >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no store, no Ray
    assert s3.list_objects_v2(Bucket="kdsweep", Prefix="stripped").get("KeyCount") == 0
    # moto itself enforces them: the probe passes, and cleans up after itself
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    assert Storage("s3://kdsweep/probed").missing_conditional_writes() == []
    assert s3.list_objects_v2(Bucket="kdsweep", Prefix="probed").get("KeyCount") == 0
