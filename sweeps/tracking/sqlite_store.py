"""The embedded MLflow store (``sqlite:///FILE``): made crash-safely and marked as kdsweep's,
checked without a single write (the file a spec names may be a user's own database), and kept
working when moved.

A store is its database and, beside it, its artifacts (``mlruns/`` next to the file). MLflow
records artifact locations as absolute paths, so a store moved or copied elsewhere would lose
its artifacts: the mark records the folder the store was made in, and opening the store from
another folder rewrites the recorded locations under the old folder to the new one."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sqlite3
import tempfile
import uuid
from pathlib import Path

from ..domain import faults
from ..domain.spec import SpecError
from ..store.storage import StorageFull, is_full, node_cache

# A table kdsweep adds to each store it makes, so a check can tell its own stores from others;
# it also records the folder the store's locations are written under.
STORE_MARK = "kdsweep_store"
ARTIFACTS = "mlruns"  # the artifacts' folder, beside the database file
# The columns in which MLflow records where a run's (or an experiment's) artifacts are.
LOCATIONS = ("artifact_location", "artifact_uri")


def artifact_root(tracking_uri: str) -> str | None:
    """Where an embedded store keeps its artifacts (beside its file); None for other stores."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return str(Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS)


def prepare_store(tracking_uri: str) -> None:
    """Create an embedded SQLite store crash-safely. MLflow's first migration takes seconds and
    a kill in the middle leaves a database every later run fails on, so the store is built
    under a temporary name and moved into place once migrated (a rename is atomic). An
    existing store is relocated if it was moved."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        relocate(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.creating-*"):  # left by a killed creation
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _migrated(tmp)
        faults.reached("store-creating")
        folder = str(path.resolve().parent)
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            db.execute(f"CREATE TABLE {STORE_MARK} (created_by TEXT, folder TEXT)")
            db.execute(f"INSERT INTO {STORE_MARK} VALUES ('kdsweep', ?)", (folder,))
            # MLflow's Default experiment keeps its artifacts beside the store too (not in the
            # working directory of whoever made it)
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                       (f"{folder}/{ARTIFACTS}/0",))
        os.replace(tmp, path)
    except BaseException as e:
        for f in tmp.parent.glob(f"{tmp.name}*"):  # the copy and any journal of it
            f.unlink(missing_ok=True)
        if is_full(e):
            raise StorageFull(f"tracking_uri {tracking_uri}: no space left creating the MLflow "
                              "store; free space, then run the same command again") from None
        raise


def _migrated(tmp: Path) -> None:
    """An empty store at this MLflow's schema in ``tmp``: a copy of one migrated before, kept
    per MLflow version in the user's cache (migrating takes seconds, a copy milliseconds), or
    migrated now and kept for the next store (storage.node_cache)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    cache = node_cache()
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if template.is_file():
        shutil.copyfile(template, tmp)
        return
    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
    with contextlib.suppress(OSError):  # no cache (a read-only home): migrate every time
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{template.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(tmp, partial)
        os.replace(partial, template)


def relocate(path: Path) -> int:
    """Point a moved store's artifact locations at its new folder; returns the rows changed.
    Only kdsweep's stores, and only locations under the folder the store was made in (another
    location, e.g. s3://, is the user's and stays).

    Going around MLflow, in SQL on its tables: it has no API to move a store, and it records
    every location absolute, in the columns named in LOCATIONS (experiments, runs, logged
    models). tests/test_private_apis.py fails when an upgrade renames them."""
    here = str(path.resolve().parent)
    with sqlite3.connect(path, timeout=30) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if STORE_MARK not in tables:
            return 0  # not ours
        columns = {r[1] for r in db.execute(f"PRAGMA table_info({STORE_MARK})")}
        if "folder" not in columns:  # a store marked before folders were recorded: from now
            db.execute(f"ALTER TABLE {STORE_MARK} ADD COLUMN folder TEXT")
            db.execute(f"UPDATE {STORE_MARK} SET folder = ?", (here,))
            return 0
        (old,) = db.execute(f"SELECT folder FROM {STORE_MARK}").fetchone()
        if old == here:
            return 0
        changed = 0
        for table in sorted(tables):
            for (_, column, *_rest) in db.execute(f"PRAGMA table_info({table})").fetchall():
                if column not in LOCATIONS:
                    continue
                for prefix in (f"file://{old}/", f"{old}/"):
                    new = prefix.replace(old, here, 1)
                    changed += db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?",
                        (new, len(prefix) + 1, len(prefix), prefix)).rowcount
        db.execute(f"UPDATE {STORE_MARK} SET folder = ?", (here,))
        return changed


def check_sqlite_store(uri: str, path: Path, timeout: float) -> None:
    """``path`` is an MLflow store at this MLflow's schema; anything else is refused with one
    line (a SpecError naming tracking_uri) and left exactly as it is."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    _roll_back_a_crash(path, timeout)
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


def _roll_back_a_crash(path: Path, timeout: float) -> None:
    """A store kdsweep made whose writer was killed inside a transaction keeps a hot journal
    (``-journal``) or a WAL beside it, which a read-only open cannot roll back ("attempt to write
    a readonly database"). SQLite rolls it back on any normal open: do that once, for a store
    that carries kdsweep's mark. The file as it stands may be half-written (pages of the killed
    transaction), so the mark is read from a rolled-back copy: anyone else's database is still
    never opened for writing."""
    sidecars = [path.with_name(f"{path.name}-{end}") for end in ("journal", "wal")]
    if not any(f.is_file() and f.stat().st_size > 0 for f in sidecars):
        return
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.recover-") as d:
            copy = Path(d) / path.name
            for f in (path, *sidecars):
                if f.is_file():
                    shutil.copyfile(f, copy.with_name(f.name))
            with contextlib.closing(sqlite3.connect(copy, timeout=timeout)) as db:
                ours = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                  "name = ?", (STORE_MARK,)).fetchone()
    except (sqlite3.DatabaseError, OSError):
        return  # the check that follows names what is wrong
    if ours:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=timeout)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # rolls it back
        except sqlite3.OperationalError as e:  # not a crash: a live (or stopped) writer holds it
            if "locked" not in str(e):
                raise
            raise SpecError(
                f"tracking_uri: {path}: locked for {timeout:g} s by another process writing to "
                "it (another driver, `mlflow ui`, or one stopped mid-write); stop it, or use an "
                "MLflow server (tracking_uri: http://...)") from None
