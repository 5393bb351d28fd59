"""Engine: one Ray Tune experiment per `kdsweep run`, all generations in it.

Ray Tune has no trial dependencies of its own, so they live in the scheduler (scheduler.py,
pure) behind a Tune Searcher: Tune asks ``suggest()`` for work whenever it can start a trial,
and the DependencySearcher answers with the scheduler's most critical ready job, None while
everything left waits on running jobs, and FINISHED once nothing is left. One experiment keeps
Tune's workers warm across generations (reuse_actors) and never waits for a whole generation
to end. ASHA stops weak students within each generation; teachers always finish.

Ray internals are touched here only, each for its reason, and tests/test_private_apis.py
fails when Ray moves them: ``ray_constants.ENABLE_RAY_CLUSTER`` and ``ray.init``'s
``_node_ip_address`` (a local Ray on loopback, connect) and
``class_cache.ENV_VARS_TO_PROPAGATE`` (no credentials copied into runtime_envs,
run_experiment) and the TuneController's lists and sets of trials (finished trials forgotten,
prune_finished: Tune's cost per trial flat in one experiment). A job's resources go through
Tune's public ``PlacementGroupFactory``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from ray import tune
from ray.tune.error import TuneError
from ray.tune.execution import class_cache
from ray.tune.experiment import Trial
from ray.tune.progress_reporter import TrialProgressCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from ..domain.fusion import group_limit, sibling_key
from ..domain.scheduler import Job, Scheduler
from ..domain.settings import env_number
from ..domain.spec import ResourcesSpec, SearchSpec, SpecError, SweepSpec
from ..store.ledger import Ledger, TrialState
from ..store.measured import fusion_file, read_fusion
from ..store.storage import AWS_CREDENTIALS, Storage, StorageFull, node_cache
from .entry import run_job
from .stops import StopNotes
from .trial import WorkerMessage, member_results

log = logging.getLogger(__name__)


OWN_RAY: set = set()  # non-empty once connect started a Ray of this driver's own


# A Ray of our own runs its trials at this process's priority: Ray's default starts each worker
# at niceness +15 (to keep its raylet responsive on a shared node), which beside any other work
# at the user's priority left a trial ~1% of a CPU (a suite beside `stress-ng --cpu 4`: 5 tests
# in 35 minutes). `python train.py` would run at the user's priority; so does a trial here.
# A cluster's nodes keep what their `ray start` set.
# Nor does it prestart a worker per CPU for the driver (Ray's prestart_worker_first_driver):
# Tune's trials never ran on them (each trial's actor started a worker of its own beside the
# idle ones), so each was a Python start (~0.5 CPU-s here, and its memory) wasted, and on a
# 2-core machine they contend with the driver's own start (benchmarks/driver_cost.py).
OWN_RAY_CONFIG = {"worker_niceness": 0, "prestart_worker_first_driver": False}


@contextlib.contextmanager
def _keeps_sigterm_handler():
    """ray.init installs SIGTERM handlers of its own (its node's while a local Ray starts,
    then its driver's: sys.exit), each replacing the caller's: the CLI's, which marks the
    stop so that the run exits 143 with one line, whatever Ray's calls turn its SystemExit
    into. Going around Ray (its private hook, the one both call sites use): while a caller
    with a handler of its own connects, Ray's are not installed, so that handler takes a
    SIGTERM at any instant, during Ray's start too (Ray's exit hooks still end what it
    started). A caller without one (Python's default) gets Ray's, as before."""
    from ray._private import utils

    main = threading.current_thread() is threading.main_thread()
    if not (main and callable(signal.getsignal(signal.SIGTERM))):
        yield
        return
    install, utils.set_sigterm_handler = utils.set_sigterm_handler, lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = install


@_keeps_sigterm_handler()
def connect(address: str | None, runtime_env: dict | None = None) -> None:
    """Join the cluster at ``address`` ('auto' inside ray job submit), or start a Ray of our
    own: never one that `ray start` left on this machine (Ray's address discovery would join
    it), and listening on 127.0.0.1 only. ``runtime_env``: the job's (its plugins,
    plugins.runtime_env), which every worker gets."""
    import ray

    if ray.is_initialized():
        return
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if runtime_env:
        quiet["runtime_env"] = runtime_env
    OWN_RAY.clear()
    if address:
        _join(address, quiet)
        return
    OWN_RAY.add(True)  # job_slots: this driver's own Ray, its resources fixed
    # Going around Ray: ray.init turns a node address of 127.0.0.1 into the machine's external
    # IP unless Ray believes clusters are off (as on macOS); its processes then bind loopback.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # this process
    # ... and the Ray processes it starts (they inherit the variable), but not what this
    # process runs later (a `ray start` it spawns would refuse to join a cluster)
    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    before = os.environ.get(key)
    os.environ[key] = "0"
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 _system_config=OWN_RAY_CONFIG, **quiet)
    finally:
        if before is None:
            os.environ.pop(key)
        else:
            os.environ[key] = before


# A lost local Ray (its raylet or GCS server killed: the out-of-memory killer, a signal) ends
# `kdsweep run` with this code and one line (app/sweep.py); 2 is a user's error, 3 a lost lease.
EXIT_RAY_LOST = 4
WATCHED = ("raylet", "gcs_server")  # the processes without which a local Ray is gone


def own_processes() -> list:
    """Every process this one started and that still runs (psutil.Process each, which knows
    its process's start time, so a pid reused later is never mistaken for it): a local Ray's
    GCS, raylet, agents and workers. Taken before Ray shuts down: a worker whose raylet is gone
    belongs to init, no longer to this process, unless this process adopts orphans (the
    `kdsweep` process: cli.adopt_orphans). psutil is Ray's own dependency."""
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process().children(recursive=True)
    return []


def end_processes(procs: list, grace: float = 5.0) -> None:
    """SIGTERM what still runs of ``procs``, SIGKILL what is left after ``grace`` seconds: a
    driver that exits leaves nothing running, whatever its exit. ``grace=0``: SIGKILL each at
    once and return without waiting (a driver that must stop writing at once: its other
    threads run while this one waits)."""
    import psutil

    alive = [p for p in procs if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate() if grace else p.kill()
    if not grace:
        return
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5.0)


class LocalRayWatch:
    """Watches the local Ray this process started, while the block runs. Once its raylet or
    GCS server is gone, what this process prints goes to a log file from that moment (Ray's
    own account follows within moments, its tracebacks after it, and Ray then ends the driver
    with exit 1), and ``on_lost(cause, log, console, procs)`` is called, once: ``cause``, how
    it ended, as its exit status says; ``log``, that file (Ray's session logs named and their
    last lines in it); ``console``, a descriptor of the standard error as it was; ``procs``,
    this process's children as last seen, for the caller to end. Without a local Ray (a
    cluster joined), it watches nothing.

    Ray's account of a lost raylet comes from its agents, which see it go as soon as this
    process can, and is printed through ``sys.stdout``: so while the block runs, that stream
    and ``sys.stderr`` look at the watched processes (a pidfd each, Linux) before each write,
    and a write that comes after the loss goes to the log."""

    def __init__(self, on_lost, poll: float = 2.0):
        """``poll``: how often the list of this process's children is refreshed (and, where
        no pidfd wakes the watch, how often the watched processes are looked at)."""
        self.on_lost, self.poll = on_lost, poll
        self._stop = threading.Event()
        self._fired = threading.Lock()
        self._wake: tuple = ()  # a pipe written once the block ends: the watch stops at once
        self._thread = None
        self.watched, self.fds, self.log_dir = [], [], None
        self.procs: list = []  # this process's children, as last listed

    def __enter__(self) -> LocalRayWatch:
        import psutil

        self.procs = own_processes()
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                if p.name() in WATCHED:
                    self.watched.append((p.name(), p))
        if not self.watched:
            return self
        self.log_dir = _log_dir([p for _, p in self.watched])
        # woken the moment a watched process ends (a pidfd is readable then; Linux); elsewhere
        # a poll
        with contextlib.suppress(AttributeError, OSError):
            self.fds = [os.pidfd_open(p.pid) for _, p in self.watched]
        self._wake = os.pipe()
        self._streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Gate(sys.stdout, self.check), _Gate(sys.stderr, self.check)
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="kdsweep-ray-watch")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._wake:
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join()
            if isinstance(sys.stdout, _Gate) and isinstance(sys.stderr, _Gate):
                sys.stdout, sys.stderr = self._streams
        for fd in [*self._wake, *self.fds]:
            os.close(fd)
        self._wake, self.fds = (), []

    def stand_down(self) -> bool:
        """For a caller about to end this process for another cause, and to end Ray's processes
        on its way (a superseded driver): from now on the watch reports no loss, which would be
        the caller's own doing. False when the watch has already fired: its handler ends the
        process."""
        return self._fired.acquire(blocking=False)

    def check(self) -> None:
        """On a lost watched process, the loss handled (in this thread; it ends the process);
        otherwise nothing. A pidfd look and a read of each one's /proc stat, no wait: a process
        that is exiting counts as lost (Ray's agents see the raylet's pipe close, and the
        driver prints their account, before the raylet's exit completes and its pidfd wakes)."""
        if self._stop.is_set() or not self.watched:
            return
        if (self.fds and select.select(self.fds, [], [], 0)[0]) or any(
                _exiting(p.pid) for _, p in self.watched):
            self._lost()

    def _watch(self) -> None:
        import psutil

        while not self._stop.is_set():
            select.select([*self.fds, self._wake[0]], [], [], self.poll)
            if self._stop.is_set():
                return
            # everything seen so far that still runs: once the raylet is gone, its agents and
            # workers belong to init, and only this list still names them
            self.procs = [p for p in self.procs if p.is_running()]
            self.procs += [p for p in own_processes() if p not in self.procs]
            for _, p in self.watched:
                with contextlib.suppress(psutil.Error):
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        continue
                if not self._stop.is_set():  # not ended by this process's own shutdown
                    self._lost()
                return

    def _lost(self) -> None:
        import psutil

        if not self._fired.acquire(blocking=False):
            return  # another thread handles it (and ends the process)
        console, log = _hold_output(self._streams)
        for name, p in self.watched:
            with contextlib.suppress(psutil.Error):
                if (p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                        and not _exiting(p.pid)):
                    continue
            cause = _ended(name, p)
            break
        else:
            cause = "its raylet ended (killed: out of memory or a signal)"
        _note(log, cause, self.log_dir)
        self.on_lost(cause, log, console, self.procs)


class _Gate:
    """A text stream that calls ``check`` before each write, then writes to ``stream``; every
    other attribute is the stream's own (encoding, buffer, flush, fileno, isatty...)."""

    def __init__(self, stream, check):
        self.stream, self.check = stream, check

    def write(self, text: str) -> int:
        self.check()
        return self.stream.write(text)

    def writelines(self, lines) -> None:
        self.check()
        self.stream.writelines(lines)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _hold_output(streams) -> tuple[int, str]:
    """This process's standard output and error to a new log file from now on (``streams``
    flushed first); returns a descriptor of the standard error as it was, and the file."""
    for stream in streams:
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    made, path = tempfile.mkstemp(prefix="kdsweep-ray-lost-", suffix=".log")
    os.close(made)
    # appending: the note (_note, through its own descriptor) and what Ray writes through
    # these never overwrite each other (with a shared offset from 0, Ray's first line landed
    # on the note)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    console = os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return console, path


def _note(log: str, cause: str, log_dir: str | None) -> None:
    """The cause, Ray's session logs and their last lines, at the head of the log."""
    with open(log, "a") as f:
        f.write(f"the local Ray stopped: {cause}\nRay's session logs: {log_dir}\n")
        for name in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err"):
            with contextlib.suppress(OSError, TypeError):
                tail = Path(log_dir, name).read_text(errors="replace").splitlines()[-40:]
                f.write(f"\n--- the last lines of {Path(log_dir, name)}\n" + "\n".join(tail))
        f.write("\n--- what this driver and Ray printed from the moment it stopped:\n")


def _log_dir(procs: list) -> str | None:
    """Ray's session logs folder, from a watched process's command line (--log_dir=)."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.Error):
            for arg in p.cmdline():
                if arg.startswith("--log_dir="):
                    return arg.removeprefix("--log_dir=")
    return None


# /proc/PID/stat's flags: the kernel sets this as a process begins to exit (before it closes
# its files and long before it is a zombie)
PF_EXITING = 0x4
_PROC = os.path.isdir("/proc/self")


def _exiting(pid: int) -> bool:
    """Whether process ``pid`` is exiting or gone (Linux: /proc/PID/stat; elsewhere False)."""
    if not _PROC:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    fields = stat.rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & PF_EXITING)


def _ended(name: str, p) -> str:
    """How a watched process ended: its exit status when it is this process's child (one that
    is still exiting is waited for: an event, bounded against a hang)."""
    import psutil

    try:
        code = p.wait(timeout=10)  # at once once exited; a guard against a hang
    except (psutil.Error, ChildProcessError):
        code = None
    name = f"its {name} (pid {p.pid})"
    if code is None:
        return f"{name} ended (killed: out of memory or a signal)"
    if code < 0:
        sig = signal.Signals(-code).name
        why = " (as the out-of-memory killer does)" if -code == signal.SIGKILL else ""
        return f"{name} was killed by {sig}{why}"
    return f"{name} exited with code {code}"


def _join(address: str, quiet: dict) -> None:
    """ray.init(address) with Ray's own retry lines held back (its core logs each failed try to
    the process's stderr: twenty lines for a refused token): shown as they were when it joins,
    replaced by one line naming the address and what to do when it cannot (SpecError)."""
    import ray

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            _refused_at_once(address)
            ray.init(address=address, **quiet)
            error = None
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
            error = e
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        said = held.read()
    if error is None:
        sys.stderr.buffer.write(said)
        sys.stderr.flush()
        return
    chain, e = [], error
    while e is not None:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = "\n".join(chain) + said.decode(errors="replace")
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        raise SpecError(
            f"--address {address}: the cluster refused this driver's token (InvalidAuthToken): "
            "set RAY_AUTH_MODE=token and the cluster's token (`ray get-auth-token`, or "
            "RAY_AUTH_TOKEN_PATH) in this environment") from None
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise SpecError(f"--address {address}: could not join the Ray cluster ({first})") from None


def _refused_at_once(address: str) -> None:
    """A cluster that refuses this driver's token says so to one GCS client at once
    (ray.exceptions.AuthenticationError); ray.init would ask it twenty times, a second apart.
    Asked once here where the GCS listens (a plain host:port that accepts a connection): an
    unreachable address is left to ray.init, whose client waits for it (~40 s here)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # 'auto' (inside ray job submit) or a ray:// client address: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return
    # Going around Ray: its GCS client and token check are private. ray.init makes the same
    # check first (a token path without a token would abort Ray's C++ client, not raise);
    # test_cluster's refused-token test fails if either moves.
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray._raylet import GcsClient

    ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    try:
        GcsClient(address=address)
    except Exception as e:  # anything but a refused token is ray.init's to say
        if "InvalidAuthToken" in str(e) or type(e).__name__ == "AuthenticationError":
            raise _Refused(str(e)) from None


class _Refused(RuntimeError):
    """The cluster refused this driver's token (_refused_at_once)."""


# Finished trials Tune's controller keeps. A sweep is one Tune experiment from its first job to
# its last: every ready job pending at every moment and the trainable actors warm throughout
# (successive experiments drained: each ended only once its longest job did, nothing pending
# meanwhile, new actors for the next). Tune's controller, left alone, costs more per trial as
# its experiment grows (benchmarks/RESULTS.md: 9.5 ms of driver CPU per no-op trial at 1k, 19
# ms at 10k): its FIFO scheduler scans every trial it ever had at each step, and it keeps every
# Trial object and its JSON state, which each experiment snapshot writes out (its progress
# callback too: QuietProgress). FlatFIFO answers in O(1) and, once this many trials have ended
# since the last time, drops the finished ones from the controller's bookkeeping
# (prune_finished): O(1) per trial in all, memory bounded.
# kdsweep never restores Tune's state (the ledger is the sweep's state), so nothing is lost.
def tune_window() -> int:
    return int(env_number("KDSWEEP_TUNE_WINDOW", 2500, integer=True))


tune_window()  # a bad value is one line when the engine loads, before any work


class DependencySearcher(Searcher):
    """Tune's face of the scheduler (scheduler.py): hands out its next job and tells it how
    each ended. It reads no storage: a job's outcome is in its last report (WorkerMessage).

    A train job takes the siblings (and cousins) ready with it, up to ``fuse_limit``
    (fusion.py): one Tune trial trains them as one fused model (trial.py's fused job), and each
    member's outcome, in its own report, ends that member in the scheduler at once (its students
    may go).

    ``slots``: how many jobs the cluster runs at once (job_slots; None: not known, an
    autoscaling cluster). Where known, a job is handed out only when a slot is free, so that a
    fused job is grouped when it can start: the ready students then spread over the free slots
    (fusion.group_size), and a group's generation-2 cousins, released one report at a time as
    its members end, are all ready by the time its slot frees. A job could not start earlier
    anyway; Tune asks again at its next step. Where not known, every ready job is handed out at
    once (pending_window: the autoscaler sees them all) and grouped as it is handed out."""

    def __init__(self, scheduler: Scheduler, metric: str, fuse_limit=lambda trial: 1,
                 slots: int | None = None):
        super().__init__()
        self.scheduler, self.search_metric = scheduler, metric
        self.fuse_limit = fuse_limit
        self.slots = slots
        self.handed = 0

    def suggest(self, trial_id: str) -> dict | None:
        running = len(self.scheduler.running)
        if self.slots is not None and running >= self.slots:
            return None  # every slot busy: grouped when one frees
        if (job := self.scheduler.next_job()) is None:
            return Searcher.FINISHED if self.scheduler.finished() else None
        if job.kind == "train":
            free = 1 if self.slots is None else self.slots - running
            job = self.scheduler.with_siblings(job, self.fuse_limit(job.trial), free)
        self.scheduler.start(trial_id, job)
        self.handed += 1
        return job.config()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for one in member_results(result):  # a fused job's group epoch: its members' reports
            message = WorkerMessage.of(one)
            if message.member is not None and message.outcome is not None:  # a member ended
                self.scheduler.member_ended(message.member,
                                            done=message.outcome == TrialState.DONE,
                                            value=one.get(self.search_metric))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        job = self.scheduler.running.get(trial_id)
        if job is not None and job.siblings:
            # each member that ended said so in its own report (on_trial_result); one that
            # did not (the job failed, or a member failed to start) ends here, not done
            self.scheduler.complete(trial_id, done=False)
            return
        last = {} if error else result or {}
        outcome = WorkerMessage.of(last).outcome
        self.scheduler.complete(trial_id, done=outcome == TrialState.DONE,
                                value=last.get(self.search_metric))

    def save(self, checkpoint_path: str) -> None:
        """For Tune's experiment snapshot (taken every few seconds): how many jobs wait and
        run, O(1). Never restored: a rerun rebuilds the scheduler from storage, where trials
        live by content key, so the snapshot names no key (it had every waiting key: O(N) per
        snapshot)."""
        with open(checkpoint_path, "w") as f:
            json.dump(self.__getstate__(), f)

    def __getstate__(self) -> dict:
        # Tuner pickles its config (this searcher included) for Tuner.restore, which kdsweep
        # never uses: counts only, not the scheduler, the listener, clients or optuna's studies.
        s = self.scheduler
        return {"waiting": len(s.waiting), "running": len(s.running), "banks": len(s.banks),
                "handed": self.handed}


class _Member:
    """A fused job's member as ASHA sees a trial: an id (ASHA reads nothing else of a trial)."""

    def __init__(self, key: str):
        self.trial_id = "member-" + key


# The TuneController attributes prune_finished touches (tests/test_private_apis.py checks each
# exists with the type it expects): the list and status sets of its trials, its JSON states of
# them (each experiment snapshot writes them all), the trials it holds actors for.
CONTROLLER_TRIALS = ("_trials", "_live_trials", "_stopped_trials", "_failed_trials",
                     "_trial_metadata", "_trials_to_cache", "_trial_to_actor", "_staged_trials",
                     "_pending_trials")


def prune_finished(controller) -> int:
    """Drops the trials that have ended (TERMINATED or ERROR, no actor, nothing staged) from a
    TuneController's bookkeeping; returns how many. O(trials it holds): called once per
    tune_window() ended trials, O(1) per trial in all.

    Going around Tune: it has no API to forget a finished trial, and keeps each one (its list,
    a status set, its JSON state, rewritten into every experiment snapshot) for Tuner.restore
    and the ResultGrid, neither of which kdsweep uses (its ledger is the sweep's state; results
    reach it through SweepCallback as trials end). ``controller``: the TuneController, or the
    TrialRunnerWrapper Tune hands its schedulers."""
    c = getattr(controller, "_tune_controller", controller)
    ended = (Trial.TERMINATED, Trial.ERROR)
    keep, gone = [], []
    for t in c._trials:
        (gone if t.status in ended and t not in c._trial_to_actor
         and t not in c._staged_trials and t not in c._pending_trials else keep).append(t)
    if not gone:
        return 0
    c._trials[:] = keep  # in place: Tune hands this list to callbacks
    for t in gone:
        c._live_trials.discard(t)  # an errored trial stays "live" in Tune (finished all the same)
        c._stopped_trials.discard(t)
        c._failed_trials.discard(t)
        c._trials_to_cache.discard(t)
        c._trial_metadata.pop(t.trial_id, None)
    return len(gone)


class FlatFIFO(FIFOScheduler):
    """Tune's FIFO scheduling at a cost per trial that does not grow with the experiment.

    ``choose_trial_to_run`` answers None (no trial of its own choosing): Tune's controller then
    starts its pending trials from its own queue, first in first out, as it does for those past
    the first (FIFOScheduler's answer scans every trial the experiment ever had for the first
    pending one, at every step: O(N) per step, the growth of Tune's cost per trial). kdsweep
    never pauses a trial, so no PAUSED trial waits for it. Once ``window`` trials have ended
    since the last time, it drops the finished ones from the controller (prune_finished), at
    the start of a step, where Tune handles no event."""

    def __init__(self, window: int | None = None):
        super().__init__()
        self.window = tune_window() if window is None else window
        self.ended = self.pruned = 0

    def choose_trial_to_run(self, tune_controller):
        if self.ended >= self.window:
            self.ended = 0
            self.pruned += prune_finished(tune_controller)
        return None

    def on_trial_complete(self, tune_controller, trial, result):
        self.ended += 1

    def on_trial_error(self, tune_controller, trial):
        self.ended += 1

    def on_trial_remove(self, tune_controller, trial):
        self.ended += 1


class StudentASHA(FlatFIFO):
    """ASHA among the students of each generation (one ASHA per generation, so students are
    ranked against their own generation); teachers and bank builds always run to the end.

    A fused job's members are ranked each on its own (its reports name the member,
    WorkerMessage.member): a member ASHA stops is told to its job through storage (its
    ``stop.json``, naming the job's Tune trial id and the epoch; ``storage``), which the job
    reads after each of the member's epochs: it drops the member, publishes it as stopped
    early and goes on with the others. The job itself is never stopped by ASHA. Those notes
    are written, and removed once the member's outcome is reported, by a thread of their own
    (stops.StopNotes): Tune's loop never waits on storage for them."""

    def __init__(self, search: SearchSpec, epochs: int, storage: Storage | None = None,
                 window: int | None = None):
        super().__init__(window)
        self.search, self.epochs = search, epochs
        self.stops = None if storage is None else StopNotes(storage)
        self.by_generation: dict[int, ASHAScheduler] = {}
        self.members: set[str] = set()  # members ASHA ranks (added to their generation's)

    def _asha(self, job: Job) -> ASHAScheduler | None:
        """The ASHA of a train job's generation (None for a teacher or a bank)."""
        g = job.trial.generation
        if job.kind != "train" or g == 0:
            return None
        if g not in self.by_generation:
            a = self.search.asha
            self.by_generation[g] = ASHAScheduler(
                time_attr="epoch",
                metric=self.search.metric,
                mode="max",
                max_t=self.epochs,
                grace_period=a.grace_period,
                reduction_factor=a.reduction_factor,
            )
        return self.by_generation[g]

    def _job(self, trial) -> ASHAScheduler | None:
        """The ASHA of a job of one trial (None for a teacher, a bank, or a fused job)."""
        job = Job.from_config(trial.config)
        return None if job.siblings else self._asha(job)

    def on_trial_add(self, tune_controller, trial):
        if asha := self._job(trial):
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        job = Job.from_config(trial.config)  # once per result: Tune's loop waits on this
        asha = self._asha(job)
        if not job.siblings:
            return asha.on_trial_result(tune_controller, trial, result) if asha else self.CONTINUE
        if asha is not None:
            for one in member_results(result):  # a group epoch's report: each member's own
                self._member_result(tune_controller, trial, asha, one)
        return self.CONTINUE

    def _member_result(self, tune_controller, trial, asha: ASHAScheduler, result: dict) -> None:
        """A fused job's member's report (its member's epoch or outcome) to its ASHA."""
        message = WorkerMessage.of(result)
        if message.member is None:
            return
        member = _Member(message.member)
        if message.outcome is not None:  # it ended (its own end, or a stop said)
            if self.stops is not None:  # its result is stored: a note of its stop goes
                self.stops.ended(message.member)
            if member.trial_id in self.members:
                self.members.discard(member.trial_id)
                asha.on_trial_remove(tune_controller, member)
            return
        if "epoch" not in result or self.search.metric not in result:
            return
        if member.trial_id not in self.members:
            self.members.add(member.trial_id)
            asha.on_trial_add(tune_controller, member)
        epoch = int(result["epoch"])
        if (asha.on_trial_result(tune_controller, member, result) == self.STOP
                and epoch < self.epochs and self.stops is not None):
            self.stops.said(message.member, trial.trial_id, epoch)  # queued, not written here

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        if asha := self._job(trial):
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial):
        super().on_trial_error(tune_controller, trial)
        if asha := self._job(trial):
            asha.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        super().on_trial_remove(tune_controller, trial)
        if asha := self._job(trial):
            asha.on_trial_remove(tune_controller, trial)


class SweepCallback(tune.Callback):
    """Runs in the driver: forwards each Tune event of a job to the driver's record keeper. A
    fused job's reports each name their member (WorkerMessage.member): its epoch goes to that
    member's run, and its outcome ends that member, once. The analysis and curve a worker
    made ride with its outcome (WorkerMessage.outputs) to the trial's run: never read back."""

    def __init__(self, events, early_stopping: bool):
        self.events, self.early_stopping = events, early_stopping
        self.ended: dict[str, set[str]] = {}  # Tune trial id -> fused members ended
        self.outputs: dict[str, dict] = {}  # Tune trial id -> its one trial's artifacts

    def __getstate__(self) -> dict:
        # Tuner pickles its run config for Tuner.restore, which kdsweep never uses (see
        # DependencySearcher.__getstate__); the record keeper holds a writer thread and clients.
        return {"early_stopping": self.early_stopping}

    def on_trial_start(self, iteration, trials, trial, **info):
        job = Job.from_config(trial.config)
        if job.kind == "train":
            for member in job.members:
                self.events.started(member)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for one in member_results(result):  # a fused job's group epoch: its members' reports
            self._result(trial, one)

    def _result(self, trial, result: dict) -> None:
        outputs = WorkerMessage.take_outputs(result)  # out of Tune's trial state
        message = WorkerMessage.of(result)
        if outputs is not None and message.member is None:  # until the job completes
            self.outputs[trial.trial_id] = outputs
        key = message.member or trial.config["trial"]["key"]
        if message.warnings:
            self.events.warned(key, list(message.warnings))
        if message.corrupt:
            self.events.corrupt(message.corrupt)
        if message.storage_full:  # raised here, it ends the experiment: nothing can be stored
            raise StorageFull(message.storage_full)
        if "epoch" in result:
            self.events.epoch(key, result)
        if message.member is not None and message.outcome is not None:
            ended = self.ended.setdefault(trial.trial_id, set())
            if message.member not in ended:  # a retried job reports its stored members again
                ended.add(message.member)
                member = next(t for t in Job.from_config(trial.config).members
                              if t.key == message.member)
                self.events.ended(member, message.outcome, message.error, result,
                                  self.early_stopping, outputs)

    def _unended(self, trial) -> list:
        """A fused job's members whose outcome no report said (all of them: ended here)."""
        ended = self.ended.pop(trial.trial_id, set())
        return [t for t in Job.from_config(trial.config).members if t.key not in ended]

    def on_trial_complete(self, iteration, trials, trial, **info):
        job = Job.from_config(trial.config)
        if job.kind == "bank":
            self.events.bank_built(job.trial, (trial.last_result or {}).get("bank_seconds"))
        elif job.siblings:
            for member in self._unended(trial):
                self.events.ended(member, None, None, {}, self.early_stopping)
        else:
            last = trial.last_result or {}
            message = WorkerMessage.of(last)
            self.events.ended(job.trial, message.outcome, message.error, last,
                              self.early_stopping, self.outputs.pop(trial.trial_id, None))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.outputs.pop(trial.trial_id, None)
        job = Job.from_config(trial.config)
        text = str(trial.get_error() or "unknown error")  # Tune's traceback
        if job.kind == "train":
            for member in self._unended(trial) if job.siblings else [job.trial]:
                self.events.failed(member, text)
        else:
            self.events.bank_built(job.trial, None, text)


class QuietProgress(TrialProgressCallback):
    """Tune's per-trial progress lines, which kdsweep does not print (verbose=0; its own
    progress is progress.py), without their bookkeeping: Tune adds a TrialProgressCallback of
    its own unless it is given one, and that one keeps every trial it saw (a set of the
    completed and two dicts keyed by trial), so no finished trial would ever be freed."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        pass

    def on_trial_error(self, iteration, trials, trial, **info):
        pass

    def on_trial_complete(self, iteration, trials, trial, **info):
        pass


def job_resources(resources: ResourcesSpec):
    """Tune asks per trial: a trial gets its architecture's resources; a bank build its
    teacher's, with a whole GPU (it holds the teacher, batches of views and the bank at once)."""

    def request(config: dict):
        job = Job.from_config(config)
        ask = resources.for_model(job.trial.model)
        if job.kind == "bank" and resources.uses_gpu:
            ask = {**ask, "gpu": 1}
        return tune.PlacementGroupFactory([{"CPU": ask["cpu"], "GPU": ask["gpu"],
                                            "memory": ask.get("memory", 0)}])

    return request


def run_experiment(spec: SweepSpec, ledger: Ledger, scheduler: Scheduler, events, driver_token: str
                   ) -> DependencySearcher:
    """Run every job the scheduler has, in one Tune experiment (``driver_token``: the token of
    this driver's lease, which its workers' trial claims carry); returns its searcher."""
    state = tune_dir(spec, ledger.storage.uri)
    shutil.rmtree(state, ignore_errors=True)  # the last run's, never restored
    searcher = DependencySearcher(scheduler, spec.search.metric, fuse_limit(spec),
                                  slots=job_slots(spec))
    if not scheduler.finished():
        _run_tune(spec, searcher, events, driver_token, state=state)
    return searcher


def job_slots(spec: SweepSpec) -> int | None:
    """How many jobs this driver's own Ray runs at once (its resources are fixed: the
    machine's), from the least any architecture asks of each resource (so never fewer than
    fit: a slot is never left idle for it); None on a cluster joined at an address, which may
    autoscale (DependencySearcher then hands out every ready job at once)."""
    import ray

    if not OWN_RAY or not ray.is_initialized():
        return None
    have = ray.cluster_resources()
    asks = [spec.resources.for_model(m) for m in spec.architectures] or [
        spec.resources.for_model("")]
    slots = []
    for name, field in (("CPU", "cpu"), ("GPU", "gpu"), ("memory", "memory")):
        least = min(a.get(field, 0) for a in asks)
        if least > 0:
            slots.append(math.floor(have.get(name, 0) / least + 1e-9))
    return max(1, min(slots)) if slots else None


def fuse_limit(spec: SweepSpec):
    """The most siblings one job of a trial's architecture trains (fusion.group_limit, from
    ``resources.fuse``). ``auto`` reads what `kdsweep plan --measure` recorded in the sweep's
    storage (store/measured.py: fused / separate student-steps/s by K, per architecture and
    device kind), once here; without a record that reads, or for an architecture it does not
    hold, the rule, with one warning line. Under ASHA too: StudentASHA ranks and stops a fused
    job's members one by one."""
    resources = spec.resources
    measured: dict = {}
    problem = ""
    if resources.fuse == "auto":
        measured, problem = read_fusion(Storage(spec.storage), spec)
    warned: set = set()

    def limit(trial) -> int:
        gpu = resources.for_model(trial.model)["gpu"] > 0
        kind = "gpu" if gpu else "cpu"
        found = measured.get((trial.model, kind))
        if (resources.fuse == "auto" and found is None and sibling_key(trial) is not None
                and (trial.model, kind) not in warned):
            warned.add((trial.model, kind))
            why = problem or (f"{fusion_file(spec)} holds no {kind} measurement of "
                              f"{trial.model} at batch {spec.train.batch_size}")
            log.warning("fuse: auto: no fusion measurement for %s on %s (%s): fusing by the "
                        "rule (up to %d)", trial.model, kind, why,
                        group_limit("auto", trial.model, gpu))
        return group_limit(resources.fuse, trial.model, gpu, measured=found)

    return limit


def tune_dir(spec: SweepSpec, storage_uri: str):
    """Where Ray Tune keeps its experiment state: the driver's own disk, never the sweep's
    storage. kdsweep restores nothing of Tune's (the ledger is the sweep's state), so on shared
    storage Tune's directory markers and per-trial files would only cost requests in the
    driver's loop (six PUTs and a HEAD per trial on S3). The latest run's is kept, for Tune's
    logs; a worker node writes its trials' Tune files under the same path on its own disk."""
    where = hashlib.sha256(storage_uri.encode()).hexdigest()[:12]
    return node_cache() / "tune" / where / spec.name / spec.cluster


def _run_tune(spec: SweepSpec, searcher: DependencySearcher, events, driver_token: str,
              state) -> None:
    """The sweep's Tune experiment: the jobs ``searcher`` hands out, until the end; Tune's
    state under ``state`` (tune_dir)."""
    # Tune copies the driver's AWS credentials into every trainable's runtime_env, and Ray's
    # runtime-env agent logs that env verbatim in its session logs: a secret on disk. Workers
    # take credentials from their node (its environment or instance role), as the driver does.
    class_cache.ENV_VARS_TO_PROPAGATE = class_cache.ENV_VARS_TO_PROPAGATE - AWS_CREDENTIALS
    trainable = tune.with_resources(
        tune.with_parameters(run_job, spec=spec, driver_token=driver_token),
        job_resources(spec.resources),
    )
    early = spec.search.asha is not None
    scheduler = (StudentASHA(spec.search, spec.train.epochs, Storage(spec.storage))
                 if early else FlatFIFO())
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=-1,  # the searcher says when it is done
            trial_dirname_creator=lambda t: f"{t.config['job']}-{t.config['trial']['key'][:12]}",
            reuse_actors=True,  # warm workers across generations: no torch import per trial
        ),
        run_config=tune.RunConfig(
            name=time.strftime("run-%Y%m%d-%H%M%S"),
            storage_path=str(state),
            # Tune retries both a lost node and a raising trial; the trial itself gives up after
            # spec.max_failures errors (trial.py), so the rest of the budget is for preemptions.
            failure_config=tune.FailureConfig(
                max_failures=spec.max_failures + spec.max_preemptions
            ),
            callbacks=[SweepCallback(events, early), QuietProgress()],
            verbose=0,
        ),
    )
    # Results live in storage and MLflow, not in Tune's per-trial logger files (turned off in
    # sweep.py): Tune's end-of-run analysis would warn once per trial that it found none.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        with pending_window():
            tuner.fit()
    except TuneError as e:  # Tune wraps what a callback raised: a full storage ends the run
        if (full := _storage_full(e)) is not None:
            raise full from None
        raise
    finally:
        if getattr(scheduler, "stops", None) is not None:
            scheduler.stops.close()  # ASHA's last notes written, its thread ended


PENDING_KEY = "TUNE_MAX_PENDING_TRIALS_PG"  # Ray's setting; "auto" (or unset): pending_window's
PENDING = (None if os.environ.get(PENDING_KEY, "auto").strip() in ("", "auto")
           else int(env_number(PENDING_KEY, 1, integer=True)))


@contextlib.contextmanager
def pending_window():
    """Let Tune keep every ready job pending at once (each a placement group the autoscaler
    sees), up to Ray's own bound for its searchers: max(200, 1.1 x the cluster's CPUs). Tune
    asks a custom Searcher for one pending trial at a time unless told otherwise (its
    ``_get_max_pending_trials``), so an autoscaling cluster would grow by one trial's nodes per
    round. ``TUNE_MAX_PENDING_TRIALS_PG``, Ray's setting, overrides the bound."""
    import ray

    if PENDING is not None:
        yield PENDING
        return
    window = max(200, int(1.1 * ray.cluster_resources().get("CPU", 1.0)))
    os.environ[PENDING_KEY] = str(window)  # read once, when Tune's controller starts
    try:
        yield window
    finally:
        os.environ.pop(PENDING_KEY, None)


def _storage_full(error: BaseException | None) -> StorageFull | None:
    """The StorageFull among an exception's causes and contexts, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StorageFull):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
