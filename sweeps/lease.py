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

    def acquire(self, out=None) -> None:
        """Take the lease; a live holder makes this raise SpecError naming it. A holder that
        is dead (its pid gone on this host) is replaced at once; one that has missed two
        heartbeats (a lost node) is waited out until its lease expires, at most TTL."""
        while (held := self._read()) and held.get("token") != self.me["token"]:
            age = time.time() - held.get("renewed", 0)
            if age >= TTL or self._dead_here(held):
                break
            if age < TTL / 2:  # heartbeats arrive every TTL/4: the holder is alive
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held["since"]))
                raise SpecError(
                    f"{self.storage.uri_of(self.rel)}: another driver runs this sweep (host "
                    f"{held['host']}, pid {held['pid']}, since {since}); if it is dead, its "
                    f"lease expires {TTL - age:.0f} s from now"
                )
            print(
                f"waiting {TTL - age:.0f} s for the lease of a driver that stopped renewing it "
                f"(host {held['host']}, pid {held['pid']})",
                file=out,
                flush=True,
            )
            time.sleep(min(TTL - age, 5.0))
        self._write()
        time.sleep(min(1.0, TTL / 10))  # a driver that wrote at the same moment: one wins
        if (self._read() or {}).get("token") != self.me["token"]:
            raise SpecError(f"{self.storage.uri_of(self.rel)}: another driver took this sweep")
        threading.Thread(target=self._heartbeat, name="lease", daemon=True).start()

    @staticmethod
    def _dead_here(held: dict) -> bool:
        if held.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, KeyError):
            return False
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(TTL / 4):
            self._write()

    def release(self) -> None:
        self._stop.set()
        if (self._read() or {}).get("token") == self.me["token"]:
            self.storage.delete(self.rel)
