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
from collections import Counter
from pathlib import Path

import torch

from kd_core.bank import TeacherBank, bank_for, bank_nbytes, teacher_path
from kd_core.checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint
from kd_core.data import Augment, ImageData, load_dataset
from kd_core.names import DATASET_FACTS
from kd_core.train import resolve_device

from .plan import students_per_teacher
from .resume import trained_model
from .spec import SweepSpec
from .store import TrialStore, quarantine

log = logging.getLogger(__name__)


def teacher_path_of(spec: SweepSpec, data: ImageData, n_students: int) -> tuple[str, str]:
    """kd_core.bank.teacher_path for the students of one of this sweep's teachers."""
    t = spec.train
    nbytes = bank_nbytes(
        len(data.train_labels), data.augment, data.num_classes, getattr(torch, t.bank_dtype)
    )
    return teacher_path(
        n_students, t.epochs, data.augment.n_views, nbytes, t.bank_budget_gb * 2**30,
        t.teacher_bank,
    )


def bank_summary(spec: SweepSpec, plan) -> str:
    """How each generation's teachers hand their logits to their students, per the policy
    (`kdsweep plan`); from the dataset's known sizes, without reading it."""
    facts = DATASET_FACTS.get(spec.dataset.name)
    if facts is None:
        return ""
    t = spec.train
    aug = Augment(facts["padding"], facts["flip"])
    nbytes = bank_nbytes(facts["train"], aug, facts["classes"], getattr(torch, t.bank_dtype))
    generation = {x.key: x.generation for x in plan.trials}
    choices: Counter = Counter()
    for key, n in students_per_teacher(plan.trials).items():
        path, why = teacher_path(
            n, t.epochs, aug.n_views, nbytes, t.bank_budget_gb * 2**30, t.teacher_bank
        )
        choices[(generation[key], path, n, why)] += 1
    lines = [f"teachers' logits ({aug.n_views} views, a bank is {nbytes / 2**30:.2f} GiB):"]
    for (g, path, n, why), count in sorted(choices.items()):
        what = {"shared": "one shared bank each", "private": "a private bank per student",
                "online": "the teacher online"}[path]
        lines.append(f"  generation {g} teachers: {count} with {n} student(s): {what} ({why})")
    return "\n".join(lines)


def wants_shared_bank(spec: SweepSpec, data: ImageData, n_students: int) -> bool:
    """Whether the teacher of ``n_students`` students gets one bank in storage (else each
    student builds its own or runs the teacher online, as its trainer decides)."""
    return teacher_path_of(spec, data, n_students)[0] == "shared"


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
