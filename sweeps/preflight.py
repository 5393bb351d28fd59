"""Everything checked before Ray starts: the dataset, the storage, the MLflow store and the local
machine's resources. Each failure is a SpecError naming the field; each check that talks to a
server is bounded in time (a few seconds), so a typo never costs minutes of retries.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

from kd_core.data import ImageData, load_dataset

from .spec import SpecError, SweepSpec
from .storage import Storage

log = logging.getLogger(__name__)
TIMEOUT = float(os.environ.get("KDSWEEP_CHECK_TIMEOUT", "8"))  # seconds per server check


def check_dataset(spec: SweepSpec) -> ImageData:
    """Fail before any work when the dataset cannot be read here."""
    try:
        d = spec.dataset
        return load_dataset(d.name, root=d.root, download=d.download)
    except (FileNotFoundError, ValueError) as e:
        raise SpecError(f"dataset: {e}") from None


def _bounded(what: str, fn):
    """fn() in a daemon thread; SpecError when it does not answer within TIMEOUT seconds."""
    timeout = TIMEOUT
    box: dict = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=call, name="check", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise SpecError(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _unwritable(path: Path) -> Path | None:
    """Where creating ``path`` (a directory, with its parents) would fail: its nearest
    existing ancestor (or itself) when that is not a writable directory; None when it would
    not."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return None if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK) else existing


def check_storage(spec: SweepSpec) -> None:
    """The storage is a writable directory (local/NFS) or a reachable bucket (S3)."""
    try:
        storage = Storage(spec.storage)
    except (ValueError, OSError) as e:
        raise SpecError(f"storage: {e}") from None
    if storage.is_local:
        path = Path(storage.root)
        if path.exists() and not path.is_dir():
            raise SpecError(f"storage: {path} is a file, not a directory")
        if (existing := _unwritable(path)) is not None:
            raise SpecError(f"storage: {existing} is not a writable directory")
        return
    bucket = storage.root.split("/", 1)[0]

    def probe():
        return storage.fs.get_file_info(bucket).type

    try:
        kind = _bounded(f"storage: {storage.uri}", probe)
    except OSError as e:
        raise SpecError(f"storage: {storage.uri}: {str(e).splitlines()[0]}") from None
    if kind != pafs.FileType.Directory:
        raise SpecError(f"storage: bucket {bucket!r} does not exist at {storage.uri}")


def check_tracking(spec: SweepSpec) -> None:
    """The MLflow store answers and has the schema this MLflow writes."""
    uri = spec.tracking_uri
    if uri.startswith(("http://", "https://")):
        try:
            _bounded(f"tracking_uri: {uri}", lambda: _health(uri))
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SpecError(f"tracking_uri: no MLflow server answers at {uri} ({reason})") from None
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():  # created (crash-safely) by the Tracker
            if (existing := _unwritable(path.parent)) is not None:
                raise SpecError(f"tracking_uri: cannot create {path}: {existing} is not writable")
            return
        if path.is_dir():
            raise SpecError(f"tracking_uri: {path} is a directory, not an SQLite file")
        _check_sqlite_schema(uri, path)


def _health(uri: str) -> None:
    # /health answers without credentials: reachability only; MLflow reports auth errors itself
    with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=TIMEOUT) as r:
        r.read()


def _check_sqlite_schema(uri: str, path: Path) -> None:
    """The store has this MLflow's schema; one left half-made by a crash (before kdsweep built
    stores under a temporary name) and holding no run is moved aside, to be made anew; one
    holding runs at an older schema is refused with how to upgrade it."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            found = None
            if "alembic_version" in tables:
                found = db.execute("SELECT version_num FROM alembic_version").fetchone()
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as e:
        raise SpecError(f"tracking_uri: {path} is not an MLflow SQLite store ({e})") from None
    head = ScriptDirectory.from_config(_get_alembic_config(uri)).get_current_head()
    if found is not None and found[0] == head:
        return
    if runs == 0:
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        log.warning("%s: a half-made MLflow store with no run; moved aside to %s and made anew",
                    path, aside.name)
        return
    raise SpecError(
        f"tracking_uri: {path} holds an MLflow store of an older schema "
        f"({found[0] if found else 'none'}; this MLflow writes {head}): back it up, then "
        f"run `mlflow db upgrade {uri}`"
    )


def local_resources() -> dict[str, float]:
    """What a local Ray would have, known before it starts."""
    import torch

    return {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}


def check_fits(spec: SweepSpec, have: dict[str, float]) -> None:
    """Refuse trials that could never start on a machine with ``have`` (Ray resource names):
    Tune would otherwise wait for them forever."""
    for model in spec.architectures:
        ask = spec.resources.for_model(model)
        for name, field in (("cpu", "CPU"), ("gpu", "GPU"), ("memory", "memory")):
            if field in have and ask.get(name, 0) > have[field]:
                where = (
                    f"resources.models.{model}" if model in spec.resources.models else "resources"
                )
                raise SpecError(
                    f"{where}: a {model} trial asks for {name} {ask[name]:g}, more than this "
                    f"machine has ({have[field]:g}); pass --address to use a cluster"
                )


def check_all(spec: SweepSpec, local: bool) -> ImageData:
    """Every check that needs no Ray; ``local``: the sweep will start its own Ray here."""
    check_storage(spec)
    check_tracking(spec)
    if local:
        check_fits(spec, local_resources())
    return check_dataset(spec)
