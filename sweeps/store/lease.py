"""Leases in storage, renewed by a heartbeat: one driver per sweep, one trainer per trial.

A lease is a small JSON object naming its holder (host, pid, since, token) and its fence: a
number that grows with every new holder. Every change of a lease is a conditional write that
the storage itself checks (``Storage.write_if``: S3's If-None-Match / If-Match, a file system's
compare-and-rename under a lock): a holder takes a lease only at the version it read, and
renews only the version it wrote last. A holder that was paused while another took over finds
its next write refused by the storage, is told at once (``on_lost``) and never writes again.

Expiry is judged on the observer's own clock (``Watch``): a lease lapses when its version has
not changed for TTL seconds of the observer's monotonic time. No two hosts' wall clocks are
compared anywhere; the ``renewed`` stamp in the object is for people. A holder whose process is
gone from the observer's own host is replaced at once (the observer's own kernel says so).

A holder trusts its lease for TTL/2 of its own monotonic time after its last confirmed write
(``holds``), and renews it conditionally before trusting it longer: a successor takes over only
after watching the version unchanged for TTL, so a write made while the holder trusts its lease
comes before any successor's (for clocks whose rates differ by less than 2x).

- DriverLease: a second `kdsweep run` of the same sweep and cluster exits once it sees the
  holder renew (within one heartbeat, BEAT seconds), naming it; the rerun after a preemption is
  never blocked for longer than TTL.
- TrialClaim: trials are shared by every sweep on the storage. A worker claims its trial before
  training; a claim held by another driver (another sweep or cluster) is waited out, and the
  worker returns without training if that driver finished the trial meanwhile. A claim held by
  this driver's own earlier worker (Tune retrying it after a lost node) is taken over at once.
  A claim is tied to its driver's lease: a worker whose driver lost the sweep's lease gives its
  claim up at its next heartbeat, so the successor's worker takes the trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid

from kd_core.seal import unseal_json

from ..domain.settings import env_number
from .ledger import TrialFile, trial_file
from .storage import Storage, StorageFull, WriteConflict

log = logging.getLogger(__name__)
TTL = env_number("KDSWEEP_LEASE_TTL", 120.0)  # seconds without a renewal
# The observer's own clock, for every expiry and trust window here (a test steps it by hand
# where a window's length is the subject, not real concurrency).
clock = time.monotonic


# Seconds between a holder's renewals when set (a test makes a holder whose heartbeat never
# comes first: only its own writes can find the lease lost); unset, beat()'s rule.
BEAT = env_number("KDSWEEP_LEASE_BEAT", 0.0)


def beat() -> float:
    """Seconds between renewals: often enough that a watcher sees a live holder within a few
    seconds, and that four renewals fit in a TTL (KDSWEEP_LEASE_BEAT, when set)."""
    return BEAT or min(TTL / 4, 5.0)


class LeaseHeld(ValueError):
    """Another driver holds the sweep and renews its lease: this one is refused (one line, exit
    2, like any user error: a ValueError to the CLI), never waits for it."""


class Watch:
    """How long a lease's version has stood unchanged, on this process's monotonic clock."""

    def __init__(self):
        self.version: str | None = None
        self.since: float | None = None
        self.changes = 0  # times the version changed while watched: its holder is alive

    def see(self, version: str | None) -> float:
        now = clock()
        if self.since is None or version != self.version:
            self.changes += self.since is not None
            self.version, self.since = version, now
        return now - self.since


def read_lease(storage: Storage, rel: str) -> tuple[dict, str | None]:
    """A lease as stored and its version ({} and None when there is none; {} and a version for
    an object that is not a lease: it is watched like any other)."""
    data, version = storage.read_versioned(rel)
    try:
        held = unseal_json(json.loads(data), rel) if data is not None else {}
    except ValueError:  # not JSON, or a sealed object whose bytes changed
        held = {}
    return (held if isinstance(held, dict) else {}), version


class Lease:
    def __init__(self, storage: Storage, rel: str, **tags):
        self.storage, self.rel = storage, rel
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
            "token": uuid.uuid4().hex,
            **tags,
        }
        self.version: str | None = None  # the version this holder wrote last
        self.confirmed = -math.inf  # monotonic time of that write
        self._stop = threading.Event()
        self._writing = threading.Lock()  # the heartbeat and the holder's own checks
        self.on_lost = lambda held: None  # called once, with the new holder, when superseded
        self._lost_lock = threading.Lock()
        self.lost: dict | None = None

    def read(self) -> tuple[dict, str | None]:
        return read_lease(self.storage, self.rel)

    def _write(self, expect: str | None) -> bool:
        """Write this holder's lease if storage still holds version ``expect``."""
        body = json.dumps({**self.me, "renewed": time.time()}, indent=1).encode()
        try:
            self.version = self.storage.write_if(self.rel, body, expect)
        except WriteConflict:
            return False
        self.confirmed = clock()
        return True

    @staticmethod
    def gone(held: dict) -> bool:
        """Its holder's process is gone from this host (no clock involved)."""
        if held.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, KeyError, TypeError):
            return False
        return False

    def take(self, held: dict, version: str | None) -> bool:
        """Take the lease as it stands at ``version`` and keep it renewed; False when another
        writer changed it first."""
        try:
            fence = int(held.get("fence", 0))
        except (TypeError, ValueError):
            fence = 0
        self.me["fence"] = fence + 1  # grows with every new holder
        with self._writing:
            if not self._write(version):
                return False
        threading.Thread(target=self._heartbeat, name="lease", daemon=True).start()
        return True

    def renew(self) -> bool:
        """Renew the version this holder wrote last; the storage refuses it once another holder
        has written, and then ``on_lost`` is told."""
        with self._writing:
            if self.lost is not None or self._stop.is_set():
                return False
            if self._write(self.version):
                return True
        self._lose(self.read()[0])
        return False

    def holds(self) -> bool:
        """Still the holder: trusted for TTL/2 after the last confirmed write, else renewed now."""
        if self.lost is not None:
            return False
        if clock() - self.confirmed < TTL / 2:
            return True
        return self.renew()

    def _lose(self, held: dict) -> None:
        with self._lost_lock:
            # released (the lease deleted on purpose) or told already: nothing was lost
            if self.lost is not None or self._stop.is_set():
                return
            self.lost = held
            self._stop.set()
        self.on_lost(held)

    def _beat(self) -> bool:
        """One heartbeat; False ends them."""
        return self.renew()

    def interval(self) -> float:
        """Seconds between heartbeats."""
        return beat()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval()):
            try:
                if not self._beat():
                    return
            except StorageFull:
                # The next beat tries again; the holder's own writes fail on the same full
                # storage and end its run with the message that names it.
                log.debug("%s: not renewed, storage full", self.rel)
            except Exception as e:  # storage unreachable for a moment: the next beat tries
                log.warning("%s: not renewed (%s)", self.storage.uri_of(self.rel), e)

    def stop_renewing(self) -> None:
        """End the heartbeat and leave the lease to expire, as a holder that is paused or gone
        leaves it (``release`` also deletes it)."""
        self._stop.set()

    def release(self) -> None:
        """Stop renewing and delete the lease, if it is still the version this holder wrote."""
        self.stop_renewing()
        with self._writing:
            if self.lost is None and self.version is not None:
                self.storage.delete_if(self.rel, self.version)


def driver_of(claim: dict) -> str | None:
    """The token of the driver lease a trial claim was taken under."""
    return claim.get("driver_token", claim.get("driver"))


def holder(held: dict) -> str:
    """Who holds a lease, for a message: its host, pid and fence, as far as they are known."""
    if not held.get("host"):
        return "since released, or not a lease" if not held else "its holder unnamed"
    fence = f", lease {held['fence']}" if held.get("fence") is not None else ""
    return f"host {held['host']}, pid {held.get('pid')}{fence}"


class DriverLease(Lease):
    """The sweep's lease (``rel``: ledger.sweep_file(spec, SweepFile.LEASE))."""

    @property
    def token(self) -> str:
        return self.me["token"]

    @property
    def fence(self) -> int:
        return int(self.me.get("fence", 0))

    def mine(self) -> bool:
        """The lease in storage, read now, is the version this holder wrote last."""
        held, version = self.read()
        return self.lost is None and version == self.version and held.get("token") == self.token

    def lose(self, held: dict) -> None:
        """Another driver holds the lease (found by a write to a shared file it fenced):
        ``on_lost`` is told, once."""
        self._lose(held)

    def check(self) -> int:
        """Before a write to the sweep's shared state (the trial list, results, MLflow runs):
        still the holder, or ``on_lost`` now. Returns the fence, which such a write carries."""
        self.holds()
        return self.fence

    def acquire(self, out=None) -> None:
        """Take the lease. A holder seen renewing it makes this raise LeaseHeld naming it; one
        that does not renew (a lost node, a paused driver) is waited out, TTL at most."""
        watch, said = Watch(), False
        while True:
            held, version = self.read()
            if version is not None and not self.gone(held):
                unchanged = watch.see(version)
                if watch.changes:
                    since = held.get("since")
                    since = (time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since))
                             if isinstance(since, (int, float)) else "")
                    raise LeaseHeld(
                        f"{self.storage.uri_of(self.rel)}: another driver runs this sweep "
                        f"({holder(held)}{since}; it renews its lease): stop it first, or "
                        "let it finish"
                    )
                if unchanged < TTL:
                    if not said:
                        print(f"{self.storage.uri_of(self.rel)}: held by {holder(held)}; "
                              f"watching it for a renewal (a live driver renews every "
                              f"{beat():.0f} s), taking it over if none comes in {TTL:.0f} s",
                              file=out, flush=True)
                        said = True
                    time.sleep(min(1.0, beat() / 2, TTL - unchanged))
                    continue
            if self.take(held, version):
                return
            # another driver wrote it at this moment: the next read sees it changed


class ClaimLost(RuntimeError):
    """This worker no longer holds its trial's claim (another driver's worker took it over, or
    this worker's own driver lost the sweep's lease): it stops before writing anything more of
    the trial."""

    def __init__(self, message: str, superseded: bool = False):
        super().__init__(message)
        self.superseded = superseded


class TrialClaim(Lease):
    def __init__(self, storage: Storage, key: str, driver_token: str, sweep: str | None = None):
        """``driver_token``: the token of the driver's lease (stored as the claim's
        ``driver_token``; claims from before 2026-12-05 say ``driver``); ``sweep``: that
        lease's file, which each heartbeat reads (a worker gives its claim up once its driver
        is superseded)."""
        super().__init__(storage, trial_file(key, TrialFile.CLAIM), driver_token=driver_token,
                         sweep=sweep)
        self.superseded: dict | None = None

    def interval(self) -> float:
        """Every TTL/4 (30 s by default): no one waits to see a claim renewed, and a trial's
        two requests per beat (its driver's lease read, the claim's renewal) stay cheap on S3
        with hundreds of trials running."""
        return max(beat(), TTL / 4)

    def _beat(self) -> bool:
        if self.me["sweep"] is not None:
            held, version = read_lease(self.storage, self.me["sweep"])
            if version is not None and held.get("token") != self.me["driver_token"]:
                self.superseded = held
                self.release()
                self.lost = held
                return False
        return self.renew()

    def check(self, confirm: bool = False) -> None:
        """Raise ClaimLost once the claim is not this worker's: as the heartbeat found it, or
        with ``confirm``, as a conditional renewal finds it now (before a write that must be
        this worker's)."""
        if self.lost is None and confirm:
            self.renew()
        if self.superseded is not None:
            raise ClaimLost(
                f"{self.storage.uri_of(self.rel)}: this worker's driver lost the sweep's lease "
                f"to another driver ({holder(self.superseded)}); its claim is given up",
                superseded=True,
            )
        if self.lost is not None:
            raise ClaimLost(
                f"{self.storage.uri_of(self.rel)}: taken over by another driver's worker "
                f"({holder(self.lost)}); this one stops"
            )

    def acquire(self, finished, poll: float = 2.0) -> bool:
        """Claim the trial; False (and no claim) when ``finished()``: another driver finished
        it while we waited, or just before we took it."""
        watch, said = Watch(), False
        while True:
            held, version = self.read()
            if (version is None or driver_of(held) == self.me["driver_token"] or self.gone(held)
                    or watch.see(version) >= TTL):
                if not self.take(held, version):
                    continue  # another worker wrote it at the same moment
                if finished():
                    self.release()
                    return False
                return True
            if finished():
                return False
            if not said:
                same = self.me["sweep"] is not None and held.get("sweep") == self.me["sweep"]
                who = ("a worker of this sweep's previous driver" if same
                       else "another sweep's driver")
                log.warning("%s: held by %s (%s); waiting until it is given up or expires",
                            self.storage.uri_of(self.rel), who, holder(held))
                said = True
            time.sleep(poll)
