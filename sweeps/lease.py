"""Leases in storage, renewed by a heartbeat: one driver per sweep, one trainer per trial.

A lease is a small JSON file naming its holder (host, pid, since, token) and its fence: a
number that grows with every new holder. It is taken by writing it and reading it back after a
settle delay (the last writer wins on local/NFS storage and on S3, whose reads after a write
are consistent). A holder that dies (SIGKILL, a lost node) stops renewing, and its lease
expires after TTL seconds; a dead holder on this host is replaced at once.

Fencing: a holder renews only the lease it still holds (read, compare the token, write, read
back: a compare-and-swap by re-read, as atomic as the storage allows; S3 offers no
conditional write through pyarrow, so there the window is one read-write round trip). A
holder that finds another's token (it was paused past TTL, and a new holder took over) has
lost: it is told at once (``on_lost``) and never writes the lease again.

- DriverLease: a second `kdsweep run` of the same sweep and cluster exits at once naming the
  holder; the rerun after a preemption is never blocked for longer than TTL.
- TrialClaim: trials are shared by every sweep on the storage. A worker claims its trial before
  training; a claim held by another driver (another sweep or cluster) is waited out, and the
  worker returns without training if that driver finished the trial meanwhile. A claim held by
  this driver's own earlier worker (Tune retrying it after a lost node) is taken over at once:
  one driver never runs a trial twice at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from .ledger import trial_file
from .spec import SpecError
from .storage import Storage, StorageFull

log = logging.getLogger(__name__)
TTL = float(os.environ.get("KDSWEEP_LEASE_TTL", "120"))  # seconds without a heartbeat


class Lease:
    def __init__(self, storage: Storage, rel: str, settle: float, **tags):
        self.storage, self.rel, self.settle = storage, rel, settle
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
            "token": uuid.uuid4().hex,
            **tags,
        }
        self._stop = threading.Event()
        self.on_lost = lambda held: None  # called once, with the new holder, when superseded
        self._lost_lock = threading.Lock()
        self.lost: dict | None = None

    def read(self) -> dict | None:
        try:
            return self.storage.read_json(self.rel)
        except ValueError:
            return None  # torn by a crash mid-write: nobody holds it

    def _write(self) -> None:
        self.storage.write_json(self.rel, {**self.me, "renewed": time.time()})

    @staticmethod
    def age(held: dict) -> float:
        return time.time() - held.get("renewed", 0)

    @staticmethod
    def lapsed(held: dict) -> bool:
        """Expired, or its holder's process is gone from this host."""
        if Lease.age(held) >= TTL:
            return True
        if held.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, KeyError):
            return False
        return False

    def take(self) -> bool:
        """Write the lease and keep it renewed if, after the settle delay, it is still ours."""
        before = self.read() or {}
        self.me["fence"] = int(before.get("fence", 0)) + 1  # grows with every new holder
        self._write()
        time.sleep(self.settle)  # a holder that wrote at the same moment: the last writer wins
        if (self.read() or {}).get("token") != self.me["token"]:
            return False
        threading.Thread(target=self._heartbeat, name="lease", daemon=True).start()
        return True

    def holds(self) -> bool:
        """Whether the lease in storage is still this holder's; tells ``on_lost`` if not."""
        held = self.read() or {}
        if held.get("token") == self.me["token"]:
            return True
        self._lose(held)
        return False

    def _lose(self, held: dict) -> None:
        with self._lost_lock:
            # released (the lease deleted on purpose) or told already: nothing was lost
            if self.lost is not None or self._stop.is_set():
                return
            self.lost = held
            self._stop.set()
        self.on_lost(held)

    def renew(self) -> bool:
        """Compare-and-swap: renew only the lease this holder still holds, and read it back."""
        if not self.holds():
            return False
        self._write()
        return self.holds()

    def _heartbeat(self) -> None:
        while not self._stop.wait(TTL / 4):
            try:
                if not self.renew():
                    return
            except StorageFull:
                # The next beat tries again; the holder's own writes fail on the same full
                # storage and end its run with the message that names it.
                log.debug("%s: not renewed, storage full", self.rel)

    def release(self) -> None:
        self._stop.set()
        if (self.read() or {}).get("token") == self.me["token"]:
            self.storage.delete(self.rel)


class DriverLease(Lease):
    def __init__(self, storage: Storage, rel: str):
        """``rel``: the sweep's lease file (ledger.sweep_file(spec, "driver.lease"))."""
        super().__init__(storage, rel, settle=min(1.0, TTL / 10))

    @property
    def token(self) -> str:
        return self.me["token"]

    def check(self) -> None:
        """Before a write to the sweep's shared state (the trial list, results, MLflow runs):
        still the holder, or ``on_lost`` now."""
        self.holds()

    def acquire(self, out=None) -> None:
        """Take the lease; a live holder makes this raise SpecError naming it. A holder that
        has missed two heartbeats (a lost node) is waited out until its lease expires."""
        while (held := self.read()) and not self.lapsed(held):
            age = self.age(held)
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
        if not self.take():
            raise SpecError(f"{self.storage.uri_of(self.rel)}: another driver took this sweep")


class ClaimLost(RuntimeError):
    """Another driver's worker took this trial's claim over (this worker paused past its TTL):
    this one stops before writing anything more of the trial."""


class TrialClaim(Lease):
    def __init__(self, storage: Storage, key: str, driver: str):
        super().__init__(storage, trial_file(key, "claim.lease"), settle=0.1, driver=driver)

    def check(self, read: bool = False) -> None:
        """Raise ClaimLost once the claim is another's: as the heartbeat found it, or with
        ``read``, as storage holds it now (before a write that must be this worker's)."""
        if self.lost is None and read:
            self.holds()
        if self.lost is not None:
            raise ClaimLost(
                f"{self.storage.uri_of(self.rel)}: taken over by another driver's worker (host "
                f"{self.lost.get('host')}, pid {self.lost.get('pid')}); this one stops"
            )

    def acquire(self, finished, poll: float = 2.0) -> bool:
        """Claim the trial; False (and no claim) when ``finished()``: another driver finished
        it while we waited, or just before we took it."""
        said = False
        while True:
            held = self.read()
            if held is None or self.lapsed(held) or held.get("driver") == self.me["driver"]:
                if not self.take():
                    continue  # another driver's worker took it at the same moment
                if finished():
                    self.release()
                    return False
                return True
            if finished():
                return False
            if not said:
                log.warning(
                    "%s: trained by another sweep's driver (host %s, pid %s); waiting for it",
                    self.storage.uri_of(self.rel), held.get("host"), held.get("pid"),
                )
                said = True
            time.sleep(poll)
