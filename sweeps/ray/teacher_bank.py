"""Shared teacher-logit banks: built once per teacher, read by all its students.

A bank lives in storage beside its teacher's model (Ledger.bank_file), with its size and
SHA-256 beside it, so every student of that teacher, in this sweep or a later one, on any
node, reads it instead of running the teacher. Each node fetches it once (a file lock), into a
disk cache capped by size (least recently used go first), and every trial memory-maps that one
file. The engine builds a bank as a job of its own, as soon as its teacher has finished
(engine.py), when the policy (kd_core.bank.logit_source) says a shared bank pays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import torch
from filelock import FileLock

from kd_core.bank import TeacherBank, bank_for, bank_nbytes, logit_source
from kd_core.checkpoint import CheckpointError, load_checkpoint, write_checkpoint
from kd_core.data import Augment, ImageData, load_dataset
from kd_core.names import DATASET_FACTS
from kd_core.train import resolve_device

from ..domain.plan import students_per_teacher
from ..domain.settings import env_number
from ..domain.spec import DatasetSpec, SweepSpec, TrainSpec
from ..store.ledger import Ledger, digest_file, flag_corrupt, read_json_checked
from ..store.resume import trained_model
from ..store.storage import node_cache

log = logging.getLogger(__name__)


def _policy(t: TrainSpec, images: int, aug: Augment, classes: int, n_students: int):
    """kd_core.bank.logit_source under the spec's train settings: ((source, why), the bank's
    bytes)."""
    nbytes = bank_nbytes(images, aug, classes, getattr(torch, t.bank_dtype))
    return logit_source(n_students, t.epochs, aug.n_views, nbytes, t.bank_budget_gb * 2**30,
                        t.teacher_bank), nbytes


def logit_source_of(train: TrainSpec, data: ImageData, n_students: int) -> tuple[str, str]:
    """kd_core.bank.logit_source for the students of one of this sweep's teachers."""
    return _policy(train, len(data.train_labels), data.augment, data.num_classes, n_students)[0]


def bank_summary(spec: SweepSpec, plan) -> str:
    """How each generation's teachers hand their logits to their students, per the policy
    (`kdsweep plan`); from the dataset's known sizes, without reading it."""
    facts = DATASET_FACTS.get(spec.dataset.name)
    if facts is None:
        return ""
    aug = Augment(facts["padding"], facts["flip"])
    generation = {x.key: x.generation for x in plan.trials}
    choices: Counter = Counter()
    nbytes = 0
    for key, n in students_per_teacher(plan.trials).items():
        (path, why), nbytes = _policy(spec.train, facts["train"], aug, facts["classes"], n)
        choices[(generation[key], path, n, why)] += 1
    if not choices:  # a search: no student is planned before the run samples it
        nbytes = bank_nbytes(facts["train"], aug, facts["classes"],
                             getattr(torch, spec.train.bank_dtype))
        return (f"teachers' logits ({aug.n_views} views, a bank is {nbytes / 2**30:.2f} GiB): "
                f"no student is planned before the {spec.search.type} search samples it; each "
                f"teacher's bank (or the teacher online) is decided as its students arrive")
    lines = [f"teachers' logits ({aug.n_views} views, a bank is {nbytes / 2**30:.2f} GiB):"]
    for (g, path, n, why), count in sorted(choices.items()):
        what = {"shared": "one shared bank each", "private": "a private bank per student",
                "online": "the teacher online"}[path]
        lines.append(f"  generation {g} teachers: {count} with {n} student(s): {what} ({why})")
    return "\n".join(lines)


def wants_shared_bank(train: TrainSpec, data: ImageData, n_students: int) -> bool:
    """Whether the teacher of ``n_students`` students gets one bank in storage (else each
    student builds its own or runs the teacher online, as its trainer decides)."""
    return logit_source_of(train, data, n_students)[0] == "shared"


def build_shared_bank(d: DatasetSpec, dtype: str, ledger: Ledger, teacher_key: str,
                      seed: int) -> float:
    """Build and store the ``dtype`` bank of the finished teacher ``teacher_key`` (of ``seed``)
    on dataset ``d``; returns its seconds. Host memory peaks near one bank: it is written to
    this node's cache file by torch.save (no copy as bytes), streamed to storage from there,
    and stays cached for this node."""
    # Labels (and so label noise) play no part in a bank: the plain dataset will do, less the
    # validation images its students hold out (drawn with the lineage's seed).
    data = load_dataset(d.name, root=d.root, download=d.download).with_validation(d.validation,
                                                                                  seed)
    model = trained_model(ledger.storage, teacher_key)
    t0 = time.perf_counter()
    bank = bank_for(model, data, resolve_device("auto"), getattr(torch, dtype))
    seconds = time.perf_counter() - t0
    state = bank.state_dict()  # host tensors (kd_core builds banks into host memory)
    del bank
    rel = ledger.bank_file(teacher_key, dtype)
    local = cached(rel)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
    local.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(tmp, {"bank": state, "build_seconds": seconds})
    del state
    digest = {"size": tmp.stat().st_size, "sha256": sha256(tmp)}
    with node_lock(local):
        ledger.storage.upload(rel, tmp)
        ledger.storage.write_json(digest_file(rel), digest)
        os.replace(tmp, local)
        local.with_suffix(".json").write_text(json.dumps(digest))
    evict(keep=local)
    return seconds


# ---- the node cache ---------------------------------------------------------------------------
def cache_dir() -> Path:
    return node_cache() / "banks"


def cache_limit() -> float:
    """Bytes of banks a node keeps (KDSWEEP_CACHE_GB, default 100); least recently used go."""
    return env_number("KDSWEEP_CACHE_GB", 100.0) * 2**30


def cached(rel: str) -> Path:
    """The node-cache file of a stored bank (trials/KEY/bank-DTYPE.pt -> KEY-DTYPE.pt)."""
    key, name = rel.split("/")[-2:]
    return cache_dir() / f"{key}-{name.removeprefix('bank-')}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def node_lock(local: Path) -> FileLock:
    """One fetch of a bank per node: trials of one teacher starting together wait for it."""
    local.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(local.with_name(f".{local.name}.lock"))


def evict(keep: Path) -> None:
    """Drop the least recently used banks until the cache fits cache_limit() (a trial that
    maps one keeps reading it: its pages live until it unmaps them)."""
    files = sorted(cache_dir().glob("*.pt"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    for p in files:
        if total <= cache_limit():
            break
        if p != keep:
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)


def _fetch(ledger: Ledger, rel: str, local: Path, digest: dict | None) -> str | None:
    """Fetch the stored bank into the node cache and verify it; the reason it is bad, if so."""
    ledger.storage.download(rel, local)
    if digest is not None and (
        local.stat().st_size != digest.get("size") or sha256(local) != digest.get("sha256")
    ):
        return f"size or SHA-256 differ from {digest_file(rel)}"
    local.with_suffix(".json").write_text(json.dumps(digest))
    evict(keep=local)
    return None


def _rotted(local: Path, digest: dict) -> str | None:
    """How the node's cached copy differs from the stored bank's digest, if it does: its
    SHA-256 read again on every map (benchmarks/RESULTS.md: about a second per GiB, once per
    trial, against minutes of training)."""
    if local.stat().st_size != digest.get("size"):
        return "has changed size"
    if sha256(local) != digest.get("sha256"):
        return "fails its SHA-256"
    return None


def _cache_holds(local: Path, digest: dict | None) -> bool:
    """The node's copy is the stored bank's (its recorded digest is the stored one): a copy of
    a bank since moved aside or rebuilt from a retrained teacher is never used."""
    try:
        return digest is not None and json.loads(local.with_suffix(".json").read_text()) == digest
    except (OSError, ValueError):
        return False


def load_shared_bank(ledger: Ledger, teacher_key: str, dtype: str) -> TeacherBank | None:
    """The teacher's bank, memory-mapped from this node's disk cache (every trial of that
    teacher on the node shares one copy in the page cache), fetched from storage once per node
    and verified against its digest, the node's copy proven again each time it is mapped (a
    copy that rotted is fetched again). None when storage has none or it is corrupt: the
    student then builds its own or runs its teacher online. A corrupt cache copy is fetched again; a
    corrupt stored bank is flagged (its driver moves it aside; the next run that wants it
    builds it again)."""
    rel = ledger.bank_file(teacher_key, dtype)
    local = cached(rel)
    for attempt in range(2):  # a corrupt node-cache copy is fetched once more
        fetched = False
        with node_lock(local):
            if not ledger.storage.exists(rel):
                return None
            digest = read_json_checked(ledger.storage, digest_file(rel), repair=False)
            refetch = attempt > 0
            if not refetch and local.exists() and _cache_holds(local, digest) and (
                    bad := _rotted(local, digest)):
                # the node's copy changed since it was fetched (its size and time may be kept):
                # a student never distils from unproven bytes
                log.warning("%s: node-cache copy of %s %s; fetching it again", local,
                            ledger.storage.uri_of(rel), bad)
                refetch = True
            if refetch or not (local.exists() and _cache_holds(local, digest)):
                if bad := _fetch(ledger, rel, local, digest):
                    return _drop_stored(ledger, rel, local, bad)
                fetched = True
        try:
            bank = TeacherBank.from_state_dict(load_checkpoint(local, mmap=True)["bank"])
        except (CheckpointError, KeyError) as e:
            if fetched:  # the stored bank itself is bad
                return _drop_stored(ledger, rel, local, str(e))
            local.unlink(missing_ok=True)
            log.warning("%s: corrupt node-cache copy (%s); fetching it again", local, e)
            continue
        os.utime(local)  # recently used: the last the cache evicts
        return bank
    return None


def _drop_stored(ledger: Ledger, rel: str, local: Path, why: str) -> None:
    """A stored bank found bad: its node copy deleted, it flagged for the driver (which moves
    it aside with its digest; the next run that wants it builds it again). None: the student
    goes without."""
    local.unlink(missing_ok=True)
    flag_corrupt(ledger.storage, rel, why)
