"""The embedded MLflow store (``sqlite:///FILE``): made crash-safely and marked as kdsweep's,
and checked without a single write, since the file a spec names may be a user's own database."""

from __future__ import annotations

import os
import shlex
import sqlite3
import uuid
from pathlib import Path

from .spec import SpecError

# A table kdsweep adds to each store it makes, so a check can tell its own stores from others.
STORE_MARK = "kdsweep_store"


def prepare_store(tracking_uri: str) -> None:
    """Create an embedded SQLite store crash-safely. MLflow's first migration takes seconds and
    a kill in the middle leaves a database every later run fails on, so the store is built
    under a temporary name and moved into place once migrated (a rename is atomic)."""
    from mlflow.tracking import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.creating-*"):  # left by a killed creation
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
    with sqlite3.connect(tmp) as db:
        db.execute(f"CREATE TABLE {STORE_MARK} (created_by TEXT)")
        db.execute(f"INSERT INTO {STORE_MARK} VALUES ('kdsweep')")
    os.replace(tmp, path)


def check_sqlite_store(uri: str, path: Path, timeout: float) -> None:
    """``path`` is an MLflow store at this MLflow's schema; anything else is refused with one
    line (a SpecError naming tracking_uri) and left exactly as it is."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            found = None
            if "alembic_version" in tables:
                found = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as e:
        raise SpecError(f"tracking_uri: {path} is not an MLflow SQLite store ({e})") from None
    if found is None or "runs" not in tables:
        what = "a store kdsweep began" if STORE_MARK in tables else "no MLflow tables"
        raise SpecError(
            f"tracking_uri: {path} is not an MLflow SQLite store ({what}; left as it is): "
            "name a new file, or move this one away"
        )
    head = ScriptDirectory.from_config(_get_alembic_config(uri)).get_current_head()
    if found[0] != head:
        raise SpecError(
            f"tracking_uri: {path} holds an MLflow store of an older schema ({found[0]}; this "
            f"MLflow writes {head}): back it up, then run `mlflow db upgrade {shlex.quote(uri)}`"
        )
