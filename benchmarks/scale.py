"""The driver's cost per trial event at N = 1k, 10k, 100k trials (issue 29), on trials made in
memory (no storage, no Ray): each phase's cost per operation at each N and its growth exponent
between the smallest and the largest N (0: flat; 1: each operation scans the sweep).

Phases so far: ``plan.add`` (a trial found at run time joins the plan: a key lookup),
``progress.set`` (one trial's state changes: the generation's counts and the ETA kept per
event) and ``scheduler`` (the pure scheduler stepped through a whole run with 64 slots, every
teacher's bank built first, jobs ending in the order they started: cost per job handed out).
The sizes run interleaved, rotated each round (harness.py); figures are microseconds per
operation, min / median over rounds.

With ``--storage local|s3`` it times what a driver does with a sweep whose every trial is
stored (fabricated through the ledger's own writer, testkit/fabricate.py; not timed), per
trial: ``status`` (`kdsweep status`: the plan, one listing, every listed result read),
``reconcile`` (a rerun's snapshot and its proof of every stored model, on a node that proved
none before) and ``export`` (the Parquet file of every trial, written to storage); and ``fresh
start-up`` (a sweep none of whose trials is stored: the plan, the snapshot, the lease and
reconcile, all the driver does before Ray starts). On s3 the server is moto's on this machine
behind testkit/latency.py's proxy, which holds each request ``--latency`` seconds (a region
away) and counts them: requests per trial are printed beside the times. Local storage is a
tmpfs folder (the writes' fsyncs are not the subject).

With ``--real`` it fabricates trials as real sweeps leave them (every TrialFile, 200-epoch
histories, wrn-16-2's real model and checkpoint sizes, a root shared with another sweep) per
code tree (``--trees``: PYTHONPATHs, e.g. an earlier commit's `git archive`) and times the
real `kdsweep status` and rerun (`kdsweep run`) as subprocesses, peak RSS beside time
(real_trials; RESULTS.md, issue 43). A tree that keeps an index of states (states.json) gets
the one a run's end writes (index_real); ``status-cold`` times status with it set aside.
With ``--real --storage s3`` the real `kdsweep run` runs on
moto (in this process, its listing paged from a sorted index as S3 pages) behind the latency
proxy: a fresh sweep's time to its first trial claimed, on an empty root and beside
``--others`` trials of another sweep, its start-up before Ray phase by phase, and the rerun of
a stored sweep to its Parquet, with requests by method and file (real_s3; RESULTS.md, "Issue
43: S3 at 20k").

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --real --sizes 1000,10000 \
        --trees $PWD,/tmp/c43-before --commands status --rounds 2 --show
    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --real --storage s3 --sizes 20000 \
        --others 100000 --rounds 1 --commands phases,fresh,run
    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --sizes 1000,10000,100000 --rounds 3
    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --storage local --rounds 2
    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --storage s3 --sizes 1000,10000,20000 \
        --latency 0.05 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# appended, not inserted: a PYTHONPATH names the code tree measured (--real's trees)
sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import interleaved, min_med, timed  # noqa: E402
from sweeps.app.progress import Progress  # noqa: E402
from sweeps.domain.critical_path import remaining_work  # noqa: E402
from sweeps.domain.plan import Plan, build_plan  # noqa: E402
from sweeps.domain.scheduler import Scheduler  # noqa: E402
from sweeps.domain.spec import parse_spec  # noqa: E402
from sweeps.store.ledger import TrialState  # noqa: E402

TAUS = [1, 2, 4, 8, 16]  # a teacher and 6 students per seed: 7 trials


def plan_of(n: int, storage: str = "/nonexistent") -> Plan:
    spec = parse_spec({
        "name": f"scale-{n}", "dataset": {"name": "digits"},
        "chains": [["cnn-small", "cnn-small"]], "train": {"epochs": 2},
        "grid": {"loss": ["kl", "mse"], "tau": TAUS, "seeds": list(range(math.ceil(n / 7))),
                 "baselines": False},
        "storage": storage,
    })
    return build_plan(spec)


def plan_add(plan: Plan) -> float:
    """Seconds per trial for adding every trial, one at a time, to an empty plan."""
    trials = plan.trials
    empty = Plan(plan.spec, [])
    return timed(lambda: [empty.add(t) for t in trials]) / len(trials)


def progress_set(plan: Plan) -> float:
    """Seconds per event for every trial going pending -> running -> done."""
    progress = Progress(plan, lambda key: TrialState.PENDING, io.StringIO())
    keys = [t.key for t in plan.trials]

    def events():
        for k in keys:
            progress.set(k, TrialState.RUNNING)
        for k in keys:
            progress.set(k, TrialState.DONE)

    return timed(events) / (2 * len(keys))


class Quiet:
    """A listener that keeps nothing (the driver's events are timed on their own)."""

    def added(self, trial):
        pass

    def skipped(self, trial, reason):
        pass


def scheduler_run(plan: Plan, slots: int = 64) -> float:
    """Seconds per job for a whole run: fill every slot, end the oldest job, repeat."""

    def run():
        s = Scheduler(plan.spec, plan.trials, plan.trials, done=(), banks=(), values={},
                      priority=remaining_work(plan.spec.chains, {"cnn-small": 1.0}),
                      wants_bank=lambda students: students > 1, listener=Quiet())
        running, jobs = {}, 0
        while not s.finished():
            while len(running) < slots and (job := s.next_job()) is not None:
                s.start(str(jobs), job)
                running[str(jobs)] = job
                jobs += 1
            oldest = next(iter(running))
            del running[oldest]
            s.complete(oldest, done=True, value=0.5)
        return jobs

    jobs = []
    seconds = timed(lambda: jobs.append(run()))
    return seconds / jobs[-1]


PHASES = {"plan.add": plan_add, "progress.set": progress_set, "scheduler": scheduler_run}


# ---- a stored sweep ------------------------------------------------------------------------
def status(plan: Plan) -> float:
    from sweeps.app.progress import sweep_status

    return timed(lambda: sweep_status(plan.spec)) / len(plan.trials)


def reconcile_rerun(plan: Plan) -> float:
    from sweeps.store.ledger import Ledger
    from sweeps.store.snapshot import Snapshot, reconcile
    from sweeps.store.storage import Storage

    def rerun():
        with tempfile.TemporaryDirectory() as cache:  # a node that proved no model before
            os.environ["KDSWEEP_CACHE"] = cache
            snapshot = Snapshot.load(Ledger(Storage(plan.spec.storage), repair=False),
                                     (t.key for t in plan.trials))
            reconcile(snapshot, plan.trials, retry_failed=False, check_lease=lambda: None)

    return timed(rerun) / len(plan.trials)


def export(plan: Plan) -> float:
    from sweeps.store.ledger import Ledger
    from sweeps.store.results import write_results
    from sweeps.store.snapshot import Snapshot
    from sweeps.store.storage import Storage

    snapshot = Snapshot.load(Ledger(Storage(plan.spec.storage)), (t.key for t in plan.trials))
    return timed(lambda: write_results(plan, snapshot, {}, fence=1)) / len(plan.trials)


def fresh_start(plan: Plan) -> float:
    """A fresh sweep's start-up, what the driver does before it starts Ray (sweep.run_sweep):
    the plan, the snapshot of storage that holds none of its trials, the lease taken (and
    given back), reconcile: on a storage root of its own, new each call."""
    import io
    import uuid

    from sweeps.store.lease import DriverLease
    from sweeps.store.ledger import Ledger, SweepFile, sweep_file
    from sweeps.store.snapshot import Snapshot, reconcile
    from sweeps.store.storage import Storage

    spec = plan.spec.model_copy(update={"storage": f"{plan.spec.storage}-fresh-"
                                                   f"{uuid.uuid4().hex[:8]}"})

    def start():
        trials = build_plan(spec).trials
        storage = Storage(spec.storage)
        snapshot = Snapshot.load(Ledger(storage, repair=False), (t.key for t in trials))
        lease = DriverLease(storage, sweep_file(spec, SweepFile.LEASE))
        lease.acquire(io.StringIO())
        reconcile(snapshot, trials, retry_failed=False, check_lease=lambda: None)
        lease.release()

    return timed(start) / len(plan.trials)


STORED = {"fresh start-up": fresh_start, "status": status, "reconcile": reconcile_rerun,
          "export": export}


@contextlib.contextmanager
def storage_root(kind: str, latency: float, work: Path):
    """(storage URI prefix, the proxy or None) for ``kind``: a tmpfs folder, or moto's S3
    server behind the latency proxy."""
    if kind == "local":
        yield str(work / "store"), None
        return
    from testkit.latency import LatencyProxy
    from testkit.servers import S3_TEST_CREDENTIALS, s3_server

    os.environ.update(S3_TEST_CREDENTIALS)
    with s3_server(work) as endpoint, LatencyProxy(int(endpoint.rsplit(":", 1)[1]),
                                                   latency) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        yield "s3://kdsweep/scale", proxy


def stored_sweeps(args) -> None:
    from testkit.fabricate import fabricate

    sizes = [int(s) for s in args.sizes.split(",")]
    shm = "/dev/shm" if args.storage == "local" and os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=shm) as work, \
            storage_root(args.storage, args.latency, Path(work)) as (root, proxy):
        phases = {name: STORED[name] for name in args.phases.split(",")}
        plans = {}
        for n in sizes:
            plans[n] = plan_of(n, f"{root}/{n}")  # a storage of its own: a listing is of all
            if set(phases) == {"fresh start-up"}:
                continue  # nothing stored: nothing to fabricate
            t0 = time.perf_counter()
            delay = proxy.delay if proxy else 0.0
            if proxy:
                proxy.delay = 0.0  # fabricating is not the subject
            fabricate(plans[n].spec)
            if proxy:
                proxy.delay = delay
            print(f"fabricated {len(plans[n].trials):,} stored trials in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        print(f"storage: {args.storage}" + (f", {args.latency * 1e3:.0f} ms per request"
                                            if proxy else ""))
        print("| phase | " + " | ".join(f"{n:,} (us/trial, min / median)" for n in sizes)
              + " | growth exponent |" + (" requests per trial |" if proxy else ""))
        print("| --- " * (len(sizes) + 2 + bool(proxy)) + "|")
        for name, phase in phases.items():
            counts = {}

            def run(n, phase=phase, counts=counts):
                before = proxy.total() if proxy else 0
                seconds = phase(plans[n])
                if proxy:
                    counts[n] = (proxy.total() - before) / len(plans[n].trials)
                return seconds

            figures = interleaved({n: (lambda n=n: run(n)) for n in sizes}, args.rounds)
            print_row(name, sizes, figures,
                      " | ".join(f"{counts[n]:.3f}" for n in sizes) if proxy else None)


# ---- real trials: the files a real sweep leaves, timed through the real CLI ------------------
# `--real`: trials as real sweeps leave them (every TrialFile a finished trial keeps, the bank
# of a teacher with students, sealed JSON as Storage.write_json writes it, histories of the
# spec's 200 epochs, models and checkpoints of the architecture's real size for the spec's
# dataset), a sweep of N beside N trials of another sweep on one shared root, timed through
# the real `kdsweep status` and `kdsweep run` (a rerun of the fully stored sweep to its
# Parquet, an empty MLflow store behind it) as subprocesses, peak RSS beside time. Each code
# tree (``--trees``: this one and, e.g., an earlier commit's `git archive`) fabricates its own
# root through its own Ledger.publish (a format it writes is the format it reads).
REAL_CHAIN = ["wrn-16-2", "wrn-16-2"]  # the paper's same-size pair (cifar100-paper.yaml)
REAL_EPOCHS = 200


def real_spec(name: str, n: int, root: str, first_seed: int = 0, tracking: str | None = None):
    seeds = math.ceil(n / 7)
    return {
        "name": name, "dataset": {"name": "digits"}, "chains": [REAL_CHAIN],
        "train": {"epochs": REAL_EPOCHS},
        "grid": {"loss": ["kl", "mse"], "tau": TAUS,
                 "seeds": list(range(first_seed, first_seed + seeds)), "baselines": False},
        "storage": root, "cluster": "local",
        "tracking_uri": tracking or f"sqlite:///{root}/../mlflow-unused.db",
    }


def real_files(spec) -> dict:
    """The bytes of a finished trial's files that do not name the trial, once per sweep: its
    model (kd_core's architecture for the spec's dataset), a checkpoint (the model, the SGD
    momentum buffers, the scheduler and RNG state, the history: Trainer.state_dict's keys),
    the bank of a teacher (train images x classes, in the spec's bank dtype), the per-image
    predictions and the learning curve a worker draws."""
    import numpy as np
    import torch

    from kd_core.checkpoint import checkpoint_bytes
    from kd_core.data.datasets import load_dataset
    from kd_core.models import build_model
    from kd_core.train import model_state
    from sweeps.ray.curve import learning_curve_png

    data = load_dataset(spec.dataset.name)
    model = build_model(REAL_CHAIN[-1], data.num_classes, data.in_channels)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # the momentum buffers a checkpoint holds, one per parameter
    history = real_history(spec.train.epochs)
    ckpt = checkpoint_bytes({**model_state(model), "optimizer": opt.state_dict(),
                             "scheduler": {"last_epoch": spec.train.epochs},
                             "generator": torch.Generator().get_state(),
                             "epoch": spec.train.epochs, "history": history, "config": {}})
    n_train, n_test = len(data.train_labels), len(data.test_labels)
    bank = checkpoint_bytes({"bank": {"logits": torch.zeros(n_train, data.num_classes,
                                                           dtype=torch.float16)},
                             "build_seconds": 1.0})
    rng = np.random.default_rng(0)
    predictions = {"pred": rng.integers(0, data.num_classes, n_test).astype(np.int16),
                   "confidence": rng.random(n_test).astype(np.float32),
                   "true_prob": rng.random(n_test).astype(np.float32),
                   "teacher_pred": rng.integers(0, data.num_classes, n_test).astype(np.int16)}
    return {"model": checkpoint_bytes({**model_state(model), "trial": {}}), "params": params,
            "checkpoint": ckpt, "bank": bank, "predictions": predictions,
            "curve": learning_curve_png(history, "a trial: done"), "history": history}


def real_history(epochs: int) -> list[dict]:
    """EpochMetrics dicts as a student's run logs them (every field a student's epoch has)."""
    import random

    rng = random.Random(0)
    return [{"epoch": e, "lr": 0.1 * rng.random(), "train_loss": rng.random(),
             "train_acc": rng.random(), "train_acc_clean": rng.random(),
             "epoch_time": 30 * rng.random(), "train_time": 25 * rng.random(),
             "test_loss": rng.random(), "test_acc": rng.random(), "test_ece": rng.random(),
             "logit_distance": rng.random(), "test_logit_distance": rng.random(),
             "test_agreement": rng.random()} for e in range(1, epochs + 1)]


def fabricate_real(spec_dict: dict, others: dict | None = None) -> dict:
    """Store every trial of the sweep as a real finished one leaves it, through this tree's
    own code: its first trial's model, analyses, predictions, curve and result (and history,
    where the tree stores it apart) by Ledger.publish (the tree's format), its progress,
    attempts, both checkpoint slots, a teacher's bank and its digest. Every other trial gets
    those files as hard links to the first one's (real sizes and bytes; the disk holds 10k x
    14 MB once), and a result of its own: the first's record with its own trial and final
    accuracy, sealed and written as Storage.write_json writes it (the history's text, the
    same in each, encoded once and spliced in: checked equal to write_json's bytes). Trials of
    ``others`` (another sweep on the root) are hard links of the first trial's files under
    their own keys: the listing's entries of a shared root (the measured sweep never reads
    them). No fsync per file: fabricating is not timed."""
    import hashlib
    import json
    import random
    import shutil

    from kd_core.seal import seal_json
    from sweeps.domain.plan import build_plan
    from sweeps.domain.record import TrialResult
    from sweeps.domain.spec import parse_spec
    from sweeps.store.ledger import (
        CHECKPOINTS,
        Ledger,
        TrialFile,
        bank_name,
        digest_file,
        trial_file,
    )
    from sweeps.store.storage import Storage

    os.fsync = lambda fd: None
    spec = parse_spec(spec_dict)
    files, storage = real_files(spec), Storage(spec.storage)
    ledger, rng = Ledger(storage), random.Random(0)
    trials = build_plan(spec).trials
    dtype = spec.train.bank_dtype
    teachers = {t.teacher_key for t in trials if t.teacher_key}
    first = next(t for t in trials if t.key in teachers)  # a teacher: every kind of file
    digest = {"size": len(files["bank"]), "sha256": hashlib.sha256(files["bank"]).hexdigest()}
    analysis = {f"dist_{i}": [rng.random() for _ in range(20)] for i in range(6)}
    record = TrialResult.from_history(
        first.to_dict(), files["history"], cluster=spec.cluster, sweep=spec.name,
        resumed_from=[0], analysis={f"scalar_{i}": rng.random() for i in range(12)},
        started_at=time.time())
    for slot in CHECKPOINTS:
        storage.write_bytes(trial_file(first.key, slot), files["checkpoint"])
    storage.write_json(trial_file(first.key, TrialFile.ATTEMPTS),
                       {"starts": [{"time": time.time(), "resumed_from_epoch": 0}],
                        "errors": []})
    ledger.write_progress(first.key, spec.train.epochs, spec.train.epochs)
    bank = trial_file(first.key, bank_name(dtype))
    storage.write_bytes(bank, files["bank"])
    storage.write_json(digest_file(bank), digest)
    ledger.publish(first.key, files["model"], record, analysis, files["curve"],
                   files["predictions"])
    folder = Path(storage.path(f"trials/{first.key}"))
    names = sorted(os.listdir(folder))
    template = storage.read_json(trial_file(first.key, TrialFile.RESULT))
    inline = "history" in template
    if inline:  # the history's text at its depth, as json.dumps(indent=1) writes it
        text = json.dumps({"history": template["history"]}, indent=1, allow_nan=True)
        history_text = text[len('{\n "history": '):-2]

    def result_bytes(d: dict) -> bytes:
        if not inline:
            return Storage.json_bytes(d)
        sealed = seal_json(d)
        text = json.dumps({**sealed, "history": "@HISTORY@"}, indent=1, allow_nan=True)
        return text.replace('"@HISTORY@"', history_text, 1).encode()

    linked = [0]  # a file takes at most 65,000 links (ext4): a copy of the files per 50,000

    def link_all(key: str, skip: set) -> None:
        dest = Path(storage.path(f"trials/{key}"))
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        source = Path(storage.path(f"blobs/{linked[0] // 50_000}"))
        if not source.exists():
            shutil.copytree(folder, source)
        linked[0] += 1
        for name in names:
            if name not in skip:
                os.link(source / name, dest / name)

    banks = {bank_name(dtype), Path(digest_file(bank)).name}
    for i, t in enumerate(trials):
        if t.key == first.key:
            continue
        link_all(t.key, {TrialFile.RESULT} | (set() if t.key in teachers else banks))
        d = {**template, "trial": t.to_dict(), "test_acc": rng.uniform(0.5, 0.9),
             "finished_at": time.time()}
        data = result_bytes(d)
        if i < 3:
            assert data == Storage.json_bytes(d), "the spliced result differs from write_json's"
        Path(storage.path(trial_file(t.key, TrialFile.RESULT))).write_bytes(data)
    other = build_plan(parse_spec(others)).trials if others else []
    for t in other:
        link_all(t.key, set())
    shutil.rmtree(storage.path("blobs"), ignore_errors=True)  # the links keep the bytes
    return {"trials": len(trials), "others": len(other), "teachers": len(teachers),
            "files": names, "params": files["params"],
            "sizes": {k: len(files[k]) for k in ("model", "checkpoint", "bank", "curve")},
            "result_bytes": os.path.getsize(storage.path(trial_file(first.key,
                                                                    TrialFile.RESULT)))}


def index_real(spec_dict: dict) -> dict:
    """What a run's end leaves for `kdsweep status` where the tree keeps an index of states
    (states.json: sweep.py's end, snapshot.state_index), written the way the run writes it:
    the snapshot of every stored result (a rerun's start), then the index of it, saved."""
    try:
        from sweeps.store.snapshot import state_index
    except ImportError:
        return {"index": None}  # a tree from before the index
    from sweeps.app.progress import load_plan
    from sweeps.domain.spec import parse_spec
    from sweeps.store.ledger import Ledger
    from sweeps.store.snapshot import Snapshot
    from sweeps.store.storage import Storage

    spec = parse_spec(spec_dict)
    t0 = time.perf_counter()
    ledger = Ledger(Storage(spec.storage), repair=False)
    keys = [t.key for t in load_plan(spec, ledger).trials]
    snapshot = Snapshot.load(ledger, keys)
    t1 = time.perf_counter()
    ledger.save_state_index(spec, state_index(snapshot, keys), fence=1)
    return {"index": len(keys), "snapshot_s": round(t1 - t0, 1),
            "index_s": round(time.perf_counter() - t1, 1)}


def export_real(spec_dict: dict) -> dict:
    """The Parquet export of a stored sweep as a rerun makes it, without MLflow: the snapshot of
    every stored result (the run's start) and write_results (the run's end); seconds each."""
    from sweeps.app.progress import load_plan
    from sweeps.domain.spec import parse_spec
    from sweeps.store.ledger import Ledger
    from sweeps.store.results import write_results
    from sweeps.store.snapshot import Snapshot
    from sweeps.store.storage import Storage

    spec = parse_spec(spec_dict)
    t0 = time.perf_counter()
    ledger = Ledger(Storage(spec.storage), repair=False)
    plan = load_plan(spec, ledger)
    snapshot = Snapshot.load(ledger, [t.key for t in plan.trials])
    t1 = time.perf_counter()
    uri = write_results(plan, snapshot, {}, fence=1)
    return {"rows": len(plan.trials), "snapshot_s": round(t1 - t0, 1),
            "export_s": round(time.perf_counter() - t1, 1),
            "parquet_mb": round(len(ledger.storage.read_bytes(ledger.results_file(spec)))
                                / 2**20, 1), "uri": uri}


def peak_rss_run(cmd: list[str], env: dict, cwd: str) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MB of the process tree, polled every 50 ms, exit code, output
    tail) of ``cmd``; the peak is also taken from the kernel's own count (wait4's maxrss)."""
    import subprocess

    import psutil

    t0 = time.perf_counter()
    log = Path(cwd) / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak, me = 0, psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [me, *me.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
    seconds = time.perf_counter() - t0
    return seconds, peak / 2**20, proc.returncode, log.read_text()[-2000:]


def real_trials(args) -> None:
    """Fabricate (per tree, once) and time `kdsweep status` and the rerun of the stored sweep
    to its Parquet, interleaved over trees and rounds."""
    import json
    import shutil
    import subprocess

    import yaml

    sizes = [int(s) for s in args.sizes.split(",")]
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    python = str(Path(sys.executable))
    specs = {}
    for tree in trees:
        for n in sizes:
            root = work / f"{Path(tree).name}-{n}" / "store"
            spec = real_spec(f"scale-real-{n}", n, str(root))
            specs[tree, n] = work / f"{Path(tree).name}-{n}" / "spec.yaml"
            done = root.parent / "fabricated.json"
            if not done.exists():
                others = real_spec(f"others-{n}", n, str(root), first_seed=math.ceil(n / 7))
                t0 = time.perf_counter()
                code = (f"import json, sys; sys.path.append({str(Path(__file__).parent)!r});"
                        f"from scale import fabricate_real; print(json.dumps(fabricate_real("
                        f"json.loads(sys.argv[1]), json.loads(sys.argv[2]))))")
                res = subprocess.run([python, "-c", code, json.dumps(spec), json.dumps(others)],
                                     capture_output=True, text=True, cwd=str(work),
                                     env={**os.environ, "PYTHONPATH": tree})
                if res.returncode:
                    raise SystemExit(f"fabricating {root} failed:\n{res.stderr[-3000:]}")
                info = json.loads(res.stdout.strip().splitlines()[-1])
                info["seconds"] = round(time.perf_counter() - t0)
                info["disk_mb"] = int(subprocess.run(["du", "-sm", str(root)], text=True,
                                                     capture_output=True).stdout.split()[0])
                done.write_text(json.dumps(info))
            specs[tree, n].write_text(yaml.safe_dump(spec))
            print(f"{Path(tree).name} {n:,}: {done.read_text()}", flush=True)
            indexed = root.parent / "indexed.json"
            if not indexed.exists():  # what the run's end leaves (trees that keep an index)
                code = (f"import json, sys; sys.path.append({str(Path(__file__).parent)!r});"
                        f"from scale import index_real; print(json.dumps(index_real("
                        f"json.loads(sys.argv[1]))))")
                res = subprocess.run([python, "-c", code, json.dumps(spec)], capture_output=True,
                                     text=True, cwd=str(work), env={**os.environ,
                                                                    "PYTHONPATH": tree})
                if res.returncode:
                    raise SystemExit(f"indexing {root} failed:\n{res.stderr[-3000:]}")
                indexed.write_text(res.stdout.strip().splitlines()[-1])
            print(f"{Path(tree).name} {n:,} index: {indexed.read_text()}", flush=True)

    def run(tree: str, n: int, what: str) -> tuple[float, float]:
        cwd = Path(tempfile.mkdtemp(dir=work))
        spec = yaml.safe_load(specs[tree, n].read_text())
        spec["tracking_uri"] = f"sqlite:///{cwd}/mlflow.db"  # an empty MLflow store
        (cwd / "spec.yaml").write_text(yaml.safe_dump(spec))
        env = {**os.environ, "PYTHONPATH": tree, "KDSWEEP_CACHE": str(cwd / "cache")}
        cold = what == "status-cold"  # status without the index a run leaves (states.json)
        index = Path(spec["storage"]) / "sweeps" / spec["name"] / spec["cluster"] / "states.json"
        if cold and index.exists():
            index.rename(index.with_name("states.json.off"))
        command = "status" if cold else what
        cmd = [python, "-m", "sweeps.cli", command, "spec.yaml",
               *(["--large"] if what == "run" else [])]
        if what == "export":  # the snapshot and write_results alone, no MLflow (export_real)
            cmd = [python, "-c", f"import json, sys; sys.path.append("
                   f"{str(Path(__file__).parent)!r}); from scale import export_real; "
                   f"print(json.dumps(export_real(json.loads(sys.argv[1]))))", json.dumps(spec)]
        try:
            seconds, rss, code, tail = peak_rss_run(cmd, env, str(cwd))
        finally:
            if index.with_name("states.json.off").exists():
                index.with_name("states.json.off").rename(index)
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} (PYTHONPATH={tree}) exited {code}:\n{tail}")
        if (what.startswith("status") or what == "export") and args.show:
            print(tail, flush=True)
        shutil.rmtree(cwd, ignore_errors=True)
        return seconds, rss

    for what in filter(None, args.commands.split(",")):
        for n in sizes:
            variants = {tree: (lambda tree=tree, n=n, what=what: run(tree, n, what))
                        for tree in trees}
            figures = interleaved(variants, args.rounds)
            for tree in trees:
                secs = [f[0] for f in figures[tree]]
                rss = [f[1] for f in figures[tree]]
                print(f"| `kdsweep {what}` | {n:,} | {Path(tree).name} | "
                      f"{min(secs):.1f} / {statistics.median(secs):.1f} | "
                      f"{min(rss):.0f} / {statistics.median(rss):.0f} |", flush=True)


# ---- real trials on S3: the real `kdsweep run` against moto behind the latency proxy --------
# `--real --storage s3`: moto's server runs in this process (its objects put straight into its
# backend: 100k trials' listing entries in minutes, not the hours HTTP PUTs take here), its
# listing served from a sorted index of the bucket's names, as S3 serves a page in what the
# page holds; moto's own scans and sorts the whole bucket for every page (~1 s a page at 1M
# objects here: 800 pages would time moto, not the driver). Behind testkit/latency.py's proxy,
# which holds each request ``--latency`` s and counts them by method and path.
@contextlib.contextmanager
def indexed_moto(work: Path, latency: float, bucket: str = "kdsweep"):
    """(the proxy's endpoint, the proxy, moto's S3 backend, the bucket) for a moto server in
    this process whose ListObjectsV2 pages through a sorted index of the bucket's names (kept
    current on put and delete, rebuilt when its count differs), a delimiter's folders one
    entry each."""
    import bisect

    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import FakeDeleteMarker, S3Backend
    from moto.server import ThreadedMotoServer

    from testkit.latency import LatencyProxy
    from testkit.servers import S3_TEST_CREDENTIALS

    index: dict[str, list[str]] = {}
    put, delete, list_v2 = S3Backend.put_object, S3Backend.delete_object, S3Backend.list_objects_v2

    def names(b) -> list[str]:
        idx = index.get(b.name)
        if idx is None or len(idx) != len(b.keys):
            idx = index[b.name] = sorted(b.keys.keys())
        return idx

    def put_object(self, bucket_name, key_name, *a, **k):
        new = key_name not in self.get_bucket(bucket_name).keys
        key = put(self, bucket_name, key_name, *a, **k)
        if new and (idx := index.get(bucket_name)) is not None:
            bisect.insort(idx, key_name)
        return key

    def delete_object(self, bucket_name, key_name, *a, **k):
        out = delete(self, bucket_name, key_name, *a, **k)
        idx = index.get(bucket_name)
        if idx is not None and key_name not in self.get_bucket(bucket_name).keys:
            i = bisect.bisect_left(idx, key_name)
            if i < len(idx) and idx[i] == key_name:
                del idx[i]
        return out

    def list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after,
                        max_keys):
        b = bucket
        idx, prefix = names(b), prefix or ""
        after = (self._pagination_tokens.get(continuation_token) if continuation_token
                 else start_after)
        i = bisect.bisect_left(idx, prefix)
        if after and delimiter and after.endswith(delimiter):  # past the folder's names
            i = max(i, bisect.bisect_left(idx, after[:-1] + chr(ord(delimiter) + 1)))
        elif after:
            i = max(i, bisect.bisect_right(idx, after))
        keys = []
        while i < len(idx) and len(keys) <= max_keys and idx[i].startswith(prefix):
            rest = idx[i][len(prefix):]
            if delimiter and delimiter in rest:  # a folder: one entry, then past its names
                folder = prefix + rest.split(delimiter, 1)[0] + delimiter
                keys.append(folder)
                i = bisect.bisect_left(idx, folder[:-1] + chr(ord(delimiter) + 1))
                continue
            with contextlib.suppress(KeyError):
                if not isinstance(key := b.keys[idx[i]], FakeDeleteMarker):
                    keys.append(key)
            i += 1
        return self._truncate_result(keys, max_keys)

    S3Backend.put_object, S3Backend.delete_object = put_object, delete_object
    S3Backend.list_objects_v2 = list_objects_v2
    os.environ.update(S3_TEST_CREDENTIALS)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        boto3.client("s3", endpoint_url=f"http://{host}:{port}",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        with LatencyProxy(port, latency) as proxy:
            from moto.s3.models import s3_backends

            yield (proxy.endpoint, proxy, s3_backends[DEFAULT_ACCOUNT_ID]["global"], bucket,
                   f"http://{host}:{port}")
    finally:
        server.stop()
        S3Backend.put_object, S3Backend.delete_object = put, delete
        S3Backend.list_objects_v2 = list_v2


def s3_others(backend, bucket: str, prefix: str, spec_dict: dict, files: int = 8) -> int:
    """Another sweep's trials on the root ``prefix``: ``files`` small objects under each of
    its planned keys (a fresh sweep's start-up lists them and reads none: only their names
    and count matter). Returns the number of trials."""
    from sweeps.domain.plan import build_plan
    from sweeps.domain.spec import parse_spec

    trials = build_plan(parse_spec(spec_dict)).trials
    names = ["result.json", "history.json", "model.pt", "analysis.json", "predictions.npz",
             "curve.png", "progress.json", "attempts.json", "checkpoint-a.pt",
             "checkpoint-b.pt"][:files]
    for t in trials:
        for name in names:
            backend.put_object(bucket, f"{prefix}/trials/{t.key}/{name}", b"0" * 64,
                               disable_notification=True)
    return len(trials)


def s3_stored(backend, bucket: str, direct: str, spec_dict: dict) -> dict:
    """Store every trial of the sweep on S3 as a real finished one leaves it: the first
    trial through this tree's own Ledger.publish (its model, analyses, predictions, curve,
    history and result), progress, attempts, both checkpoint slots and a teacher's bank and
    digest, over HTTP to moto itself (``direct``, no proxy); every other trial gets the same
    bytes put straight into moto's backend, and a result of its own (its trial, its accuracy,
    as Storage.write_json writes it). Sizes: the result, history (200 epochs), analyses,
    predictions, attempts and progress are a real trial's; the model, checkpoints, bank and
    curve are small sealed stand-ins (a real WRN-16-2 trial's 13.6 MB x 20k does not fit
    moto's memory), which the rerun's request counts show it never reads."""
    import hashlib
    import random

    import numpy as np

    from kd_core.checkpoint import checkpoint_bytes
    from sweeps.domain.plan import build_plan
    from sweeps.domain.record import TrialResult
    from sweeps.domain.spec import parse_spec
    from sweeps.store.ledger import (
        CHECKPOINTS,
        Ledger,
        TrialFile,
        bank_name,
        digest_file,
        trial_file,
    )
    from sweeps.store.storage import Storage

    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = direct
    try:
        spec = parse_spec(spec_dict)
        storage, rng = Storage(spec.storage), random.Random(0)
        ledger = Ledger(storage)
        trials = build_plan(spec).trials
        teachers = {t.teacher_key for t in trials if t.teacher_key}
        first = next(t for t in trials if t.key in teachers)
        history = real_history(spec.train.epochs)
        small = checkpoint_bytes({"model": {"w": np.zeros(16, np.float32)}, "trial": {}})
        n_test = 360
        predictions = {"pred": np.zeros(n_test, np.int16),
                       "confidence": np.random.default_rng(0).random(n_test).astype(np.float32),
                       "true_prob": np.random.default_rng(1).random(n_test).astype(np.float32),
                       "teacher_pred": np.zeros(n_test, np.int16)}
        record = TrialResult.from_history(
            first.to_dict(), history, cluster=spec.cluster, sweep=spec.name, resumed_from=[0],
            analysis={f"scalar_{i}": rng.random() for i in range(12)}, started_at=time.time())
        analysis = {f"dist_{i}": [rng.random() for _ in range(20)] for i in range(6)}
        for slot in CHECKPOINTS:
            storage.write_bytes(trial_file(first.key, slot), small)
        storage.write_json(trial_file(first.key, TrialFile.ATTEMPTS),
                           {"starts": 1, "errors": 0, "resumed_from": [0]})
        ledger.write_progress(first.key, spec.train.epochs, spec.train.epochs)
        bank = trial_file(first.key, bank_name(spec.train.bank_dtype))
        storage.write_bytes(bank, small)
        storage.write_json(digest_file(bank), {"size": len(small),
                                               "sha256": hashlib.sha256(small).hexdigest()})
        ledger.publish(first.key, small, record, analysis, b"\x89PNG" + bytes(60),
                       predictions)
        root = storage.root.split("/", 1)[1] + "/"  # the keys' prefix inside the bucket
        folder = f"{root}trials/{first.key}/"
        b = backend.get_bucket(bucket)
        kept = {k[len(folder):]: b.keys[k].value for k in list(b.keys) if k.startswith(folder)}
        template = storage.read_json(trial_file(first.key, TrialFile.RESULT))
        banks = {bank_name(spec.train.bank_dtype), digest_file(bank_name(spec.train.bank_dtype))}
        sizes = {n: len(v) for n, v in kept.items()}
    finally:
        if old is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = old
    for t in trials:
        if t.key == first.key:
            continue
        for name, data in kept.items():
            if name == TrialFile.RESULT or (name in banks and t.key not in teachers):
                continue
            backend.put_object(bucket, f"{root}trials/{t.key}/{name}", data,
                               disable_notification=True)
        d = {**template, "trial": t.to_dict(), "test_acc": rng.uniform(0.5, 0.9),
             "finished_at": time.time()}
        backend.put_object(bucket, f"{root}trials/{t.key}/{TrialFile.RESULT}",
                           Storage.json_bytes(d), disable_notification=True)
    return {"trials": len(trials), "teachers": len(teachers), "sizes": sizes}


def timed_run(cmd: list[str], env: dict, cwd: Path, proxy, until=None,
              limit: float = 3600.0, marks: dict | None = None,
              log: Path | None = None) -> dict:
    """Run ``cmd`` (a driver: a session of its own) and time it: each output line's time and
    the driver's CPU seconds then (its process; the tree's beside it), peak RSS of the tree,
    polled every 50 ms; ``until(proxy)``: stop the run (SIGTERM to its group, SIGKILL 120 s
    later) once it holds, its time noted as "until"; ``marks``: name -> predicate(proxy), the
    time and CPU each first holds (the run goes on)."""
    import signal
    import subprocess
    import threading

    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    me = psutil.Process(proc.pid)
    cpu = {"driver": 0.0, "tree": 0.0}
    lines, seen, seen_marks = [], {}, {}

    def read():
        with open(log or os.devnull, "a") as f:
            for raw in proc.stdout:
                lines.append((time.perf_counter() - t0, cpu["driver"], cpu["tree"],
                              raw.decode(errors="replace").rstrip()))
                f.write("{:7.1f} s  cpu {:6.1f} / tree {:6.1f}  {}\n".format(*lines[-1]))
                f.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        try:
            tree = [me, *me.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            cpu["driver"] = sum(me.cpu_times()[:2])
            seen.update({p.pid: sum(p.cpu_times()[:2]) for p in tree if p.is_running()})
            cpu["tree"] = sum(seen.values())
        except psutil.Error:
            pass
        for name, holds in (marks or {}).items():
            if name not in seen_marks and holds(proxy):
                seen_marks[name] = (time.perf_counter() - t0, cpu["driver"], cpu["tree"])
        if until is not None and "until" not in cpu and until(proxy):
            cpu["until"] = (time.perf_counter() - t0, cpu["driver"], cpu["tree"])
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(120)
            break
        if time.perf_counter() - t0 > limit:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(10)
    return {"seconds": time.perf_counter() - t0, "rss_mb": peak / 2**20, "code": proc.returncode,
            "lines": lines, "until": cpu.get("until"), "marks": seen_marks}


# The driver's start-up to its snapshot (sweep.run_sweep's first steps), timed phase by phase:
# the snapshot here alone, in the driver listed in a thread of its own beside the lease and
# Ray's start (snapshot.Loading), joined after them
PHASES_CODE = r"""
import json, sys, time
t0, c0, out = time.perf_counter(), time.process_time(), {}
def mark(name):
    global t0, c0
    out[name] = [round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2)]
    t0, c0 = time.perf_counter(), time.process_time()
import sweeps.app.sweep  # the driver's imports (torch, Ray, MLflow, pandas...)
from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.store.ledger import Ledger
from sweeps.store.snapshot import Snapshot
from sweeps.store.storage import Storage
mark("imports")
spec = parse_spec(json.loads(sys.argv[1]))
plan = build_plan(spec)
mark("plan")
snapshot = Snapshot.load(Ledger(Storage(spec.storage), repair=False),
                         (t.key for t in plan.trials))
mark("snapshot")
print(json.dumps(out))
"""


def real_s3(args) -> None:
    """--real --storage s3: (a) a fresh sweep's time to its first trial claimed (the worker's
    claim.lease PUT through the proxy: the trial submitted and started), on an empty root and
    on a root holding ``--others`` trials of another sweep, interleaved; (b) the rerun of the
    fully stored sweep to its Parquet (results.parquet's PUT), an empty MLflow store behind
    it; requests per trial by method and file name."""
    import json
    import shutil
    from collections import Counter

    import yaml

    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="s3-real-", dir=args.work_parent))
    python = str(Path(sys.executable))
    tree = str(Path(__file__).resolve().parents[1])
    commands = set(filter(None, args.commands.split(",")))
    with indexed_moto(work, args.latency) as (endpoint, proxy, backend, bucket, direct):
        env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": tree}
        delay, proxy.delay = proxy.delay, 0.0
        base = f"s3://{bucket}"
        if commands & {"fresh", "phases"} and args.others:
            t0 = time.perf_counter()
            n = s3_others(backend, bucket, "shared",
                          real_spec("others", args.others, f"{base}/shared", first_seed=10**6))
            print(f"others: {n:,} trials x 8 objects on {base}/shared in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        stored = {}
        if "run" in commands:
            for n in sizes:
                t0 = time.perf_counter()
                stored[n] = s3_stored(backend, bucket, direct,
                                      real_spec(f"stored-{n}", n, f"{base}/stored-{n}"))
                print(f"stored {n:,}: {json.dumps(stored[n])} in "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        proxy.delay = delay
        rounds = Counter()

        def driver(spec: dict, until=None, marks=None, **extra) -> tuple[dict, Counter]:
            cwd = Path(tempfile.mkdtemp(dir=work))
            spec = {**spec, "tracking_uri": f"sqlite:///{cwd}/mlflow.db"}  # empty
            (cwd / "spec.yaml").write_text(yaml.safe_dump(spec))
            before = Counter(paths(proxy))
            r = timed_run([python, "-m", "sweeps.cli", "run", "spec.yaml", "--large"],
                          {**env, "KDSWEEP_CACHE": str(cwd / "cache"), **extra}, cwd, proxy,
                          until, marks=marks, log=work / f"{spec['name']}.log")
            made = Counter(paths(proxy))
            made.subtract(before)
            shutil.rmtree(cwd, ignore_errors=True)
            print(f"-- {spec['name']}: {r['seconds']:.1f} s, exit {r['code']}, until "
                  f"{r['until']}, marks {r['marks']}, {sum(made.values()):,} requests",
                  flush=True)
            return r, +made

        def paths(p) -> dict:
            """A copy of the proxy's counts (its thread adds to them meanwhile)."""
            while True:
                with contextlib.suppress(RuntimeError):
                    return dict(p.paths)

        def fresh(root: str, n: int) -> dict:
            rounds[root, n] += 1
            seed = 10**5 * rounds[root, n]  # keys of its own each round (no claim left over)
            spec = real_spec(f"fresh-{n}-{rounds[root, n]}", n, f"{base}/{root}",
                             first_seed=seed)
            before = {k for k in paths(proxy) if k[1].endswith("/claim.lease")}
            # the driver's lease taken (its imports, checks and plan done; the snapshot's
            # listing under way beside it, then Ray's start: sweep.run_sweep's phases)
            r, made = driver(spec, lambda p: any(
                k not in before for k in paths(p) if k[1].endswith("/claim.lease")), marks={
                "lease": lambda p: any(m == "PUT" and path.endswith(
                    f"/{root}/sweeps/{spec['name']}/{spec['cluster']}/driver.lease")
                                       for m, path in paths(p))})
            r["requests"] = made
            return r

        def rerun(n: int) -> dict:
            # MLflow catches up after the Parquet (item 6): the run waits 1 s for it, the
            # next run fills it in; the Parquet's time is its PUT through the proxy
            def parquets(p) -> int:
                return sum(k for (m, path), k in paths(p).items()
                           if m == "PUT" and path.endswith("/results.parquet"))

            before = parquets(proxy)
            r, made = driver(real_spec(f"stored-{n}", n, f"{base}/stored-{n}"), marks={
                "parquet": lambda p: parquets(p) > before}, KDSWEEP_MLFLOW_WAIT="1")
            r["requests"] = made
            return r

        def phases(root: str, n: int) -> dict:
            """The driver's start-up before Ray, phase by phase, in a process of its own:
            its imports, the plan, the snapshot (the listing of the root: only the sweep's
            keys); wall and CPU seconds each, and the requests."""
            import subprocess

            rounds[root, n, "phases"] += 1
            spec = real_spec(f"phases-{n}", n, f"{base}/{root}",
                             first_seed=10**5 * (10 + rounds[root, n, "phases"]))
            before = Counter(paths(proxy))
            t0 = time.perf_counter()
            res = subprocess.run([python, "-c", PHASES_CODE, json.dumps(spec)], env=env,
                                 capture_output=True, text=True, cwd=str(work))
            made = Counter(paths(proxy))
            made.subtract(before)
            if res.returncode:
                raise SystemExit(res.stderr[-3000:])
            r = {"seconds": time.perf_counter() - t0, "rss_mb": 0.0, "code": 0, "until": None,
                 "marks": json.loads(res.stdout.strip().splitlines()[-1]), "lines": [],
                 "requests": +made}
            print(f"-- phases {root} {n}: {r['marks']}, {sum(made.values())} requests",
                  flush=True)
            return r

        variants = {}
        for n in sizes:
            if "phases" in commands:
                variants[f"phases {n:,}, empty root"] = lambda n=n: phases("empty", n)
                if args.others:
                    variants[f"phases {n:,}, root of {args.others:,} others"] = (
                        lambda n=n: phases("shared", n))
            if "fresh" in commands:
                variants[f"fresh {n:,}, empty root"] = lambda n=n: fresh("empty", n)
                if args.others:
                    variants[f"fresh {n:,}, root of {args.others:,} others"] = (
                        lambda n=n: fresh("shared", n))
            if "run" in commands:
                variants[f"rerun {n:,}"] = lambda n=n: rerun(n)
        figures = interleaved(variants, args.rounds)
        out = work / "s3-real.json"
        for name, runs in figures.items():
            for i, r in enumerate(runs):
                print(f"== {name}, round {i + 1}: {r['seconds']:.1f} s, exit {r['code']}, "
                      f"peak RSS {r['rss_mb']:.0f} MB, until {r['until']}, marks {r['marks']}")
                for t, c, tc, line in r["lines"]:
                    print(f"   {t:7.1f} s  cpu {c:6.1f} / tree {tc:6.1f}  {line[:150]}")
                by = Counter()
                for (m, path), k in r["requests"].items():
                    name_ = path.rsplit("/", 1)[-1] if "/trials/" in path else path
                    by[m, name_ if "/trials/" in path else
                       ("trials/ listing" if path.endswith(f"/{bucket}") else name_)] += k
                print("   requests: " + ", ".join(f"{m} {p}: {k}" for (m, p), k in
                                                  by.most_common(25)), flush=True)
        out.write_text(json.dumps({k: [{**r, "requests": {f"{m} {p}": c for (m, p), c in
                                                          r["requests"].items()}}
                                       for r in v] for k, v in figures.items()}))
        print(f"all lines and requests: {out}")


def print_row(name, sizes, figures, extra=None) -> None:
    cells = [min_med([f * 1e6 for f in figures[n]]) for n in sizes]
    lo, hi = min(sizes), max(sizes)
    growth = (f"{math.log(min(figures[hi]) / min(figures[lo])) / math.log(hi / lo):+.2f}"
              if hi > lo else "- (one size)")
    print(f"| {name} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in cells)
          + f" | {growth} |" + (f" {extra} |" if extra else ""), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--storage", choices=["local", "s3"], help="time a stored sweep's phases")
    p.add_argument("--latency", type=float, default=0.05, help="seconds per S3 request")
    p.add_argument("--phases", default=",".join(STORED),
                   help="the stored sweep's phases, comma-separated (a fresh start-up alone "
                        "fabricates nothing)")
    p.add_argument("--real", action="store_true",
                   help="trials as real sweeps leave them, timed through the real CLI")
    p.add_argument("--trees", default=str(Path(__file__).resolve().parents[1]),
                   help="--real: code trees to compare, comma-separated (each a PYTHONPATH)")
    p.add_argument("--work", default="/tmp/kdsweep-scale-real",
                   help="--real: where the roots are fabricated (kept between calls)")
    p.add_argument("--commands", default="status,run",
                   help="--real: what is timed: status, status-cold (without the index of "
                        "states a run leaves), run, export (snapshot and Parquet, no MLflow)")
    p.add_argument("--show", action="store_true", help="--real: print status's output")
    p.add_argument("--others", type=int, default=100_000,
                   help="--real --storage s3: another sweep's trials on the fresh sweep's "
                        "shared root (0: none)")
    p.add_argument("--work-parent", default="/tmp",
                   help="--real --storage s3: where each run's folder is made")
    args = p.parse_args()
    if args.real and args.storage == "s3":
        return real_s3(args)
    if args.real:
        return real_trials(args)
    if args.storage:
        return stored_sweeps(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    plans = {n: plan_of(n) for n in sizes}
    print(f"trials: {', '.join(str(len(plans[n].trials)) for n in sizes)}")
    print("| phase | " + " | ".join(f"{n:,} (us/op, min / median)" for n in sizes)
          + " | growth exponent |")
    print("| --- " * (len(sizes) + 2) + "|")
    for name, phase in PHASES.items():
        figures = interleaved({n: (lambda n=n, phase=phase: phase(plans[n])) for n in sizes},
                              args.rounds)
        print_row(name, sizes, figures)


if __name__ == "__main__":
    main()
