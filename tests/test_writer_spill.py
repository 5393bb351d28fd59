"""The Writer's lanes past their memory bound, stepped by hand (no MLflow: its ``handle`` is
the Tracker's extension point, here a recorder that can be held): a put never waits, records
past the bound go to the lane's file on the driver's disk and come back in order, a bounded
shutdown drops what is left and removes the files."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sweeps.tracking.writer import Writer

HANG = 60  # a guard against a hang, never a timing


class Held:
    """A lane's handler that waits for ``go`` before each record, and keeps their order."""

    def __init__(self):
        self.go, self.seen, self.started = threading.Event(), [], threading.Event()

    def __call__(self, record):
        self.started.set()
        assert self.go.wait(HANG)
        self.seen.append(record[1])


def writer(handle, bound=8):
    return Writer(None, local=True, handle=handle, on_unsent=lambda *a: None, queue_size=bound)


def test_past_the_bound_records_go_to_disk_and_come_back_in_order():
    held = Held()
    w = writer(held)
    try:
        w.put("a", "warn", "first")
        assert held.started.wait(HANG)  # the lane is inside a (held) request
        keys = [f"k{i}" for i in range(2000)]
        for k in keys:
            w.put(f"lane-{k}", "warn", k, ["a warning"])
        assert w.spilled() == len(keys) - 8  # the memory bound, then the lane's file
        files = list(w.folder.iterdir())
        assert len(files) == 1 and files[0].stat().st_size > 0
        assert w.pending() == len(keys) + 1
        held.go.set()
        assert w.flush(HANG)
        assert held.seen == ["first", *keys]  # none overtook another
        assert w.spilled() == 0 and not list(w.folder.iterdir())  # read back: removed
        w.put("a", "warn", "after")  # memory again, after the file emptied
        assert w.flush(HANG) and held.seen[-1] == "after"
    finally:
        held.go.set()
        w.shutdown(HANG)
    assert not w.folder.exists() and not w.alive()


def test_a_bounded_shutdown_drops_what_is_left_and_stops():
    held = Held()
    w = writer(held)
    for i in range(100):
        w.put("a", "warn", f"k{i}")
    assert held.started.wait(HANG)
    t0 = time.monotonic()
    threading.Timer(0.5, held.go.set).start()  # the request in flight ends after the wait
    assert w.shutdown(0.1) is False  # nothing more is written once the wait is spent
    assert time.monotonic() - t0 < HANG
    assert held.seen == ["k0"] and not w.alive() and not w.folder.exists()


def test_a_killed_writers_folder_is_removed_by_the_next_writer_and_a_live_ones_kept():
    """A SIGKILLed driver leaves its lanes' folder in the temp folder (167 of them after one
    day of this suite): the next writer on the machine removes those whose process is gone or
    whose pid a later process took, and never a live writer's."""
    from sweeps.tracking.writer import FOLDER

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    tmp = Path(tempfile.gettempdir())
    dead = Path(tempfile.mkdtemp(prefix=f"{FOLDER}{gone.pid}-", dir=tmp))
    (dead / "lane-0.pickle").write_bytes(b"records never written")
    reused = Path(tempfile.mkdtemp(prefix=f"{FOLDER}{os.getpid()}-", dir=tmp))
    os.utime(reused, (1, 1))  # made long before this process started: its pid was reused
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        kept = Path(tempfile.mkdtemp(prefix=f"{FOLDER}{live.pid}-", dir=tmp))
        w = writer(lambda record: None, bound=10)
        try:
            assert not dead.exists() and not reused.exists()
            assert kept.exists() and w.folder.exists()
        finally:
            w.shutdown(5)
        assert not w.folder.exists()
    finally:
        live.kill()
        live.wait()
        shutil.rmtree(kept, ignore_errors=True)
