"""One driver per sweep and cluster: a lease file in the sweep's storage, renewed by a heartbeat.

A second `kdsweep run` of the same sweep exits at once naming the holder. A driver that dies
(SIGKILL, a lost head node) stops renewing, and its lease expires after TTL seconds, so the
rerun after a preemption is never blocked for longer than that.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from .spec import SpecError
from .storage import Storage
from .store import sweep_file

TTL = float(os.environ.get("KDSWEEP_LEASE_TTL", "120"))  # seconds without a heartbeat


class DriverLease:
    def __init__(self, storage: Storage, spec):
        self.storage, self.rel = storage, sweep_file(spec, "driver.lease")
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
            "token": uuid.uuid4().hex,
        }
        self._stop = threading.Event()

    def _read(self) -> dict | None:
        try:
            return self.storage.read_json(self.rel)
        except ValueError:
            return None  # torn by a crash mid-write: nobody holds it

    def _write(self) -> None:
        self.storage.write_json(self.rel, {**self.me, "renewed": time.time()})

    def acquire(self) -> None:
        held = self._read()
        if held and held.get("token") != self.me["token"]:
            age = time.time() - held.get("renewed", 0)
            if age < TTL:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held["since"]))
                raise SpecError(
                    f"{self.storage.uri_of(self.rel)}: another driver runs this sweep (host "
                    f"{held['host']}, pid {held['pid']}, since {since}); if it is dead, its "
                    f"lease expires {TTL - age:.0f} s from now"
                )
        self._write()
        time.sleep(min(1.0, TTL / 10))  # a driver that wrote at the same moment: one wins
        if (self._read() or {}).get("token") != self.me["token"]:
            raise SpecError(f"{self.storage.uri_of(self.rel)}: another driver took this sweep")
        threading.Thread(target=self._heartbeat, name="lease", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(TTL / 4):
            self._write()

    def release(self) -> None:
        self._stop.set()
        if (self._read() or {}).get("token") == self.me["token"]:
            self.storage.delete(self.rel)
