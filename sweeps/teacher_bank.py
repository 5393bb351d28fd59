"""Shared teacher-logit banks: built once per teacher, read by all its students.

A bank lives in storage beside its teacher's model (TrialStore.bank_file), so every student of
that teacher, in this sweep or a later one, on any node, reads it instead of running the
teacher; each node keeps a copy on local disk. The engine builds a bank as a job of its own, as
soon as its teacher has finished (engine.py), when wants_shared_bank says it pays.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import torch

from kd_core.bank import TeacherBank, bank_for, bank_nbytes
from kd_core.checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint
from kd_core.data import ImageData, load_dataset
from kd_core.train import resolve_device

from .resume import trained_model
from .spec import SweepSpec
from .store import TrialStore, quarantine

log = logging.getLogger(__name__)


def wants_shared_bank(spec: SweepSpec, data: ImageData, n_students: int) -> bool:
    """Whether one bank beats running the teacher online in each of ``n_students`` trials."""
    t = spec.train
    if t.teacher_bank == "off" or n_students == 0:
        return False
    nbytes = bank_nbytes(
        len(data.train_labels), data.augment, data.num_classes, getattr(torch, t.bank_dtype)
    )
    if nbytes > t.bank_budget_gb * 2**30:
        return False
    # Building costs one teacher pass per view; online costs one per epoch per student.
    return t.teacher_bank == "on" or data.augment.n_views <= n_students * t.epochs


def build_shared_bank(spec: SweepSpec, store: TrialStore, teacher_key: str) -> float:
    """Build and store the bank of the finished teacher ``teacher_key``; returns its seconds."""
    # Labels (and so label noise) play no part in a bank: the plain dataset will do.
    d = spec.dataset
    data = load_dataset(d.name, root=d.root, download=d.download)
    model = trained_model(store, teacher_key)
    t0 = time.perf_counter()
    bank = bank_for(model, data, resolve_device("auto"), getattr(torch, spec.train.bank_dtype))
    seconds = time.perf_counter() - t0
    state = {k: v.cpu() if torch.is_tensor(v) else v for k, v in bank.state_dict().items()}
    store.storage.write_bytes(
        store.bank_file(teacher_key, spec.train.bank_dtype),
        checkpoint_bytes({"bank": state, "build_seconds": seconds}),
    )
    return seconds


def cache_dir() -> Path:
    return Path(os.environ.get("KDSWEEP_CACHE", Path.home() / ".cache" / "kdsweep")) / "banks"


def load_shared_bank(store: TrialStore, teacher_key: str, dtype: str) -> TeacherBank | None:
    """The teacher's bank from this node's disk cache, fetched from storage on first use.
    None when there is none or it is corrupt: the student then runs its teacher online. A
    corrupt cache copy is fetched again; a corrupt stored bank is quarantined (and rebuilt by
    the next run that wants it)."""
    rel = store.bank_file(teacher_key, dtype)
    local = cache_dir() / f"{teacher_key}-{dtype}.pt"
    for fetched in (False, True):
        if fetched or not local.exists():
            if not store.storage.exists(rel):
                return None
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_bytes(store.storage.read_bytes(rel))
            os.replace(tmp, local)  # concurrent fetchers on one node: last complete copy wins
        try:
            return TeacherBank.from_state_dict(load_checkpoint(local)["bank"])
        except (CheckpointError, KeyError) as e:
            local.unlink(missing_ok=True)
            if fetched:  # the stored bank itself is bad
                quarantine(store.storage, rel, str(e))
            else:
                log.warning("%s: corrupt node-cache copy (%s); fetching it again", local, e)
    return None
