"""Shared teacher-logit banks: built once per teacher, read by all its students.

A bank lives in storage under its teacher's content address, so every student of that teacher,
in this sweep or a later one, on any node, reads it instead of running the teacher; each node
keeps a copy on local disk. Built by a Ray task with one trial's resources before the stage
that needs it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from pathlib import Path

import ray
import torch

from kd_core.bank import TeacherBank, bank_for, bank_nbytes
from kd_core.checkpoint import checkpoint_bytes, load_checkpoint
from kd_core.data import ImageData, load_dataset
from kd_core.train import load_model, resolve_device

from .plan import Trial
from .spec import SweepSpec
from .storage import Storage, trial_file


def bank_file(teacher_key: str, dtype: str) -> str:
    return trial_file(teacher_key, f"bank-{dtype}.pt")


def wants_shared_bank(spec: SweepSpec, data: ImageData, n_students: int) -> bool:
    """Whether one bank beats running the teacher online in each of ``n_students`` trials."""
    t = spec.train
    if t.teacher_bank == "off":
        return False
    nbytes = bank_nbytes(
        len(data.train_labels), data.augment, data.num_classes, getattr(torch, t.bank_dtype)
    )
    if nbytes > t.bank_budget_gb * 2**30:
        return False
    # Building costs one teacher pass per view; online costs one per epoch per student.
    return t.teacher_bank == "on" or data.augment.n_views <= n_students * t.epochs


def _build(spec_dict: dict, teacher_key: str) -> float:
    spec = SweepSpec.model_validate(spec_dict)
    storage = Storage(spec.storage)
    # Labels (and so label noise) play no part in a bank: the plain dataset will do.
    d = spec.dataset
    data = load_dataset(d.name, root=d.root, download=d.download)
    rel = trial_file(teacher_key, "model.pt")
    model = load_model(storage.read_bytes(rel), name=storage.uri_of(rel))
    t0 = time.perf_counter()
    bank = bank_for(model, data, resolve_device("auto"), getattr(torch, spec.train.bank_dtype))
    seconds = time.perf_counter() - t0
    state = {k: v.cpu() if torch.is_tensor(v) else v for k, v in bank.state_dict().items()}
    storage.write_bytes(
        bank_file(teacher_key, spec.train.bank_dtype),
        checkpoint_bytes({"bank": state, "build_seconds": seconds}),
    )
    return seconds


def students_per_teacher(todo: list[Trial]) -> Counter:
    return Counter(t.teacher_key for t in todo if t.teacher_key and t.loss != "ce")


def ensure_banks(spec: SweepSpec, storage: Storage, data: ImageData, per_teacher: Counter) -> dict:
    """Build the missing banks that the teachers' students would share; returns build seconds."""
    wanted = [
        k
        for k, n in per_teacher.items()
        if wants_shared_bank(spec, data, n)
        and not storage.exists(bank_file(k, spec.train.bank_dtype))
    ]
    if not wanted:
        return {}
    # A whole GPU: builds run before their stage, while nothing else wants the GPUs, and a
    # build holds the teacher, its batches of views and the bank at once.
    gpus = 1 if spec.resources.uses_gpu else 0
    build = ray.remote(_build).options(num_cpus=spec.resources.cpu, num_gpus=gpus)
    refs = {key: build.remote(spec.model_dump(), key) for key in wanted}
    return {k: ray.get(r) for k, r in refs.items()}


def cache_dir() -> Path:
    return Path(os.environ.get("KDSWEEP_CACHE", Path.home() / ".cache" / "kdsweep")) / "banks"


def load_shared_bank(storage: Storage, teacher_key: str, dtype: str) -> TeacherBank | None:
    """The teacher's bank from this node's disk cache, fetched from storage on first use."""
    rel = bank_file(teacher_key, dtype)
    local = cache_dir() / f"{teacher_key}-{dtype}.pt"
    if not local.exists():
        if not storage.exists(rel):
            return None
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(storage.read_bytes(rel))
        os.replace(tmp, local)  # concurrent fetchers on one node: last complete copy wins
    state = load_checkpoint(local)
    return TeacherBank.from_state_dict(state["bank"])
