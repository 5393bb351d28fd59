"""Helpers for tests that run `kdsweep run` as a separate driver process."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import HANG

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

EPOCHS = 5


def progress(storage, keys) -> dict[str, int]:
    """The epoch each of ``keys`` has stored in its progress file, for the trials not yet
    published (what a kill interrupted, as storage says it)."""
    from sweeps.store.ledger import trial_file

    out = {}
    for k in keys:
        p = storage.read_json(trial_file(k, "progress.json"))
        if p and not storage.exists(trial_file(k, "result.json")):
            out[k] = p["epoch"]
    return out


def write_spec(tmp: Path, **over) -> Path:
    spec = {
        "name": "resume",
        "dataset": {"name": "digits"},
        "chains": [["cnn-medium", "cnn-small", "cnn-small"]],
        # kills land at named fault points (sweeps/domain/faults.py), so epochs need not be slow
        "train": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.02},
        "grid": {"loss": ["kl", "mse"], "tau": [4], "seeds": [0], "baselines": False},
        "storage": str(tmp / "store"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        **over,
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def ray_dir(tmp: Path) -> str:
    # Ray's socket paths must stay under 108 bytes: a short folder per test, found via a link.
    link = tmp / "ray"
    if not link.exists():
        link.symlink_to(tempfile.mkdtemp(prefix="kdr-", dir="/tmp"))
    return os.readlink(link)


# A Ray that listens on 127.0.0.1 only (kdsweep's own local Ray, engine.connect: conftest's
# ``local_ray``) is joined at 127.0.0.1:PORT with Ray's setting for a cluster on loopback: without
# it, ray.init resolves 127.0.0.1 to the machine's external address, where nothing listens (a
# `ray start` node listens on every interface and needs none). A setting of Ray's, read when its
# modules are imported: a forked driver applies it as it starts (_FORKS).
LOOPBACK_CLUSTER = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def joining(address: str | None) -> tuple[tuple[str, ...], dict]:
    """A driver's arguments and settings to join the Ray at ``address`` with `--address`, as a
    user's `kdsweep run SPEC --address HOST:PORT` does; none for ``None`` (a Ray of its own)."""
    if address is None:
        return (), {}
    return ("--address", address), LOOPBACK_CLUSTER


def start_driver(spec_path: Path, tmp: Path, env: dict | None = None,
                 prefix: tuple[str, ...] = (), address: str | None = None) -> subprocess.Popen:
    """`kdsweep run SPEC` in a Unix session of its own (so a process group too), logging to
    tmp/driver.log; ``prefix``: a command that runs it (faketime, unshare); ``address``: the
    Ray it joins (conftest's ``joined``), else it starts one of its own. Its session is noted
    in ``tmp``: `kill_leftovers(tmp)` ends every process it started (a joined driver's trials
    are the joined Ray's: Ray ends them once the driver is gone, `wait_idle`)."""
    args, joined = joining(address)
    # RAY_TMPDIR: a short folder of this test's own for Ray's sockets (ray_dir)
    env = {**os.environ, **(env or {}), **joined, "RAY_TMPDIR": ray_dir(tmp)}
    with open(tmp / "driver.log", "ab") as log:  # Popen keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "sweeps.cli", "run", str(spec_path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,  # its own session and group: killed whole, as a preemption
        )
    note_session(tmp, proc.pid)
    return proc


SESSIONS = ".driver-sessions"  # in a test's folder: the session ids of the drivers it started


def note_session(tmp: Path, sid: int) -> None:
    with open(tmp / SESSIONS, "a") as f:
        f.write(f"{sid}\n")


def session(sid: int, ray_tmpdir: str | None = None) -> list:
    """The processes of Unix session ``sid`` (psutil.Process each), this process excepted;
    with ``ray_tmpdir``, only those whose environment names that Ray folder (a session id is a
    pid, and pids are reused: another test's driver may lead a session of the same number)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) == sid and p.pid != os.getpid() and (
                    ray_tmpdir is None or p.environ().get("RAY_TMPDIR") == ray_tmpdir):
                found.append(p)
    return found


def left_behind(pid: int) -> list[str]:
    """What still runs (zombies aside) in the process group or Unix session that a driver
    started with ``start_new_session`` led (both ids are its ``pid``), as "PID NAME"."""
    import psutil

    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if p.pid != os.getpid() and pid in (os.getpgid(p.pid), os.getsid(p.pid)) and (
                    p.status() != psutil.STATUS_ZOMBIE):
                out.append(f"{p.pid} {p.name()}")
    return out


def kill_session(sid: int, ray_tmpdir: str | None = None, timeout: float = HANG / 5) -> None:
    """SIGKILL every process of Unix session ``sid``, until none is left: a driver started in a
    session of its own (``start_new_session``, sid = its pid) keeps it in everything it starts,
    its local Ray and the Ray workers included (they leave its process group for groups of their
    own, and the workers retitle themselves `ray::ImplicitFunc.train`, but never start a
    session). Repeated, as a process can fork while its session is being killed; ``timeout``
    guards against a hang only."""
    import psutil

    deadline = time.monotonic() + timeout
    while found := session(sid, ray_tmpdir):
        for p in found:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(found, timeout=HANG / 10)
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {sid}: still running after {timeout} s: {found}")


def kill_matching(pattern: str) -> None:
    """SIGKILL every process whose command line holds ``pattern``, and all their descendants
    (Ray's agents retitle themselves, so only their parentage names them). For processes that
    are not in a session of ours (a `ray start` node, a test's own Ray); a driver's session is
    killed whole by `kill_session`."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if pattern in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
                found += [p, *p.children(recursive=True)]
    for p in found:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(found, timeout=HANG / 10)


def kill_leftovers(tmp: Path, remove: bool = False) -> None:
    """End everything the drivers started for ``tmp`` left running (a killed driver's local Ray
    and its workers): every process of their Unix sessions, then, as a second net, any process
    that names this test's Ray folder; ``remove`` that folder too."""
    if (tmp / SESSIONS).exists():
        for sid in {int(line) for line in (tmp / SESSIONS).read_text().split()}:
            kill_session(sid, ray_dir(tmp))
    kill_matching(ray_dir(tmp))
    if remove:
        shutil.rmtree(ray_dir(tmp), ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = HANG / 2) -> None:
    import socket
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Cluster:
    """A Ray cluster on loopback with token auth: a head without CPUs, workers added by name."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="kdc-", dir="/tmp"))  # short: socket paths
        home = self.root / "home"
        home.mkdir()
        # A fresh token for this cluster; every ray command and process gets it.
        subprocess.run(
            [BIN / "ray", "get-auth-token", "--generate"],
            check=True,
            capture_output=True,
            env={**os.environ, "HOME": str(home)},
            timeout=HANG / 2,
        )
        # A node starts clean, as on its own machine: nothing of a Ray or Tune this test
        # process ran before (its RAY_* and TUNE_* settings stay in os.environ) reaches it.
        own = ("RAY_", "TUNE_", "PYTHONBREAKPOINT", "_MLFLOW")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(own)},
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(home / ".ray" / "auth_token"),
            # A lost node is declared dead after 3 missed health checks 1 s apart (Ray's
            # defaults: 5, 3 s apart): what follows is the same, 10 s sooner.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            # trials at the test's priority, as kdsweep's own Ray runs them (engine.
            # OWN_RAY_CONFIG): Ray's default, +15, starves them beside any other work
            "RAY_worker_niceness": "0",
            "PATH": f"{BIN}:{os.environ['PATH']}",
        }
        self.gcs_port, self.dash_port = free_port(), free_port()

    def ray(self, *args, timeout=HANG / 2, check=True, wrap=()):
        """`ray ARGS` with the cluster's token; ``wrap``: a command that execs it (a script).
        ``check``: a failure raises with what Ray printed."""
        out = subprocess.run(
            [*map(str, wrap), BIN / "ray", *map(str, args)],
            env=self.env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(map(str, args[:2]))} exited {out.returncode}:\n"
                               f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        return out

    @staticmethod
    def own_ports() -> list[str]:
        """A node's agent ports, free ones: Ray's fixed default (52365) is taken by any other
        Ray on the machine (a test's local Ray on the other xdist worker), and a node whose
        agent cannot bind takes no job ("No available agent to submit job")."""
        return [f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}"]

    def start_head(self, cpus=0, wrap=(), extra=()):
        self.ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dash_port}",
            f"--num-cpus={cpus}",
            f"--temp-dir={self.root / 'h'}",
            *self.own_ports(),
            f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
            *extra,
            wrap=wrap,
        )

    def submit(self, *entrypoint, wait=False, deadline_s=HANG):
        """`ray job submit` (retried while the job server comes up); returns the result."""
        deadline = time.time() + deadline_s
        while True:
            sub = self.ray("job", "submit", f"--address=http://127.0.0.1:{self.dash_port}",
                           *(() if wait else ("--no-wait",)), "--", *entrypoint, check=False,
                           timeout=deadline_s)
            if sub.returncode == 0 or time.time() > deadline:
                return sub
            time.sleep(2)

    def start_worker(self, name, cpus=1, attempts=3):
        """Join a worker node; retried, as a node agent would, while a loaded head's GCS is
        slow to take it."""
        for attempt in range(attempts):
            out = self.ray(
                "start",
                f"--address=127.0.0.1:{self.gcs_port}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={cpus}",
                f"--temp-dir={self.root / name}",
                *self.own_ports(),
                "--disable-usage-stats",
                check=attempt == attempts - 1,
            )
            if out.returncode == 0:
                return
            self.kill_node(name)  # whatever the failed start left, before the next
            time.sleep(2)

    def kill_node(self, name):
        """A spot node vanishing: SIGKILL every process of that node."""
        kill_matching(str(self.root / name))

    def stop(self):
        for name in ("w1", "w2", "h"):
            self.kill_node(name)
        # Helpers such as Ray's client server name the GCS address, not the temp dir.
        kill_matching(f":{self.gcs_port}")
        shutil.rmtree(self.root, ignore_errors=True)


_FORKS = r"""
import json, os, select, sys
from sweeps import cli  # noqa: F401  the driver's imports (torch, MLflow, Ray), once
from sweeps.app import sweep  # noqa: F401
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  the SQLite store's (~0.8 s)
running, said = set(), b""
while True:
    if b"\n" not in said:
        ready, _, _ = select.select([0], [], [], 0.05 if running else None)
        if ready:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            said += chunk
    while b"\n" in said:
        line, said = said.split(b"\n", 1)
        cwd, log, env, *argv = line.decode().split("\t")
        pid = os.fork()
        if pid == 0:  # the driver: a session and process group of its own, as start_driver's
            os.setsid()
            os.environ.clear()
            os.environ.update(json.loads(env))  # the environment of its start, whole
            # what Ray read of it at import (drivers.LOOPBACK_CLUSTER), as a fresh import would
            from ray._common.utils import env_bool
            from ray._private import ray_constants as rc
            rc.ENABLE_RAY_CLUSTER = env_bool(rc.ENABLE_RAY_CLUSTERS_ENV_VAR,
                                             not rc.IS_WINDOWS_OR_OSX)
            os.chdir(cwd)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
            sys.argv = ["kdsweep", *argv]
            cli.console()  # exits
            os._exit(70)  # never reached: a driver never runs the loop of the forking process
        running.add(pid)
        print("started", pid, flush=True)
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        running.discard(pid)
        print("ended", pid, os.waitstatus_to_exitcode(status), flush=True)
"""


# the settings of a driver that its code reads when it runs, not when its modules are imported
READ_AT_RUN = {"KDSWEEP_FAULT", "KDSWEEP_PAUSE", "KDSWEEP_CACHE"}


class DriverForks:
    """`kdsweep <args>` drivers forked from one process that has imported the driver's modules
    (a preforked server's trick): each is a real driver process in a Unix session and process
    group of its own, with the whole environment of its start, without the ~4 s of imports
    (torch, Ray, MLflow, the SQLite store's), for a test whose subject is
    not the driver's start-up and whose driver's settings read at import are the forking
    process's (a lease's TTL is not: start_driver). One forking process per xdist worker
    (conftest's ``forks``), any number of drivers at once: ``start`` returns a pid,
    ``wait(pid)`` its exit code (-9 once SIGKILLed); `fork_driver` a handle like
    `start_driver`'s."""

    def __init__(self, env: dict | None = None):
        self.env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-c", _FORKS], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=self.env)
        self.said = b""  # what the forking process printed and no call has read yet
        self.codes: dict[int, int] = {}  # the drivers that ended: their exit codes
        self.last: int | None = None
        self.started: int | None = None

    def _read(self, timeout: float) -> bool:
        """Take in what the forking process said within ``timeout``; False when nothing."""
        import select

        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        chunk = os.read(fd, 4096)
        assert chunk, "the forking process ended"
        self.said += chunk
        while b"\n" in self.said:
            line, self.said = self.said.split(b"\n", 1)
            what, pid, *code = line.decode().split()
            if what == "ended":
                self.codes[int(pid)] = int(code[0])
            else:  # a pid of a driver that ended may be taken again
                self.started = int(pid)
                self.codes.pop(self.started, None)
        return True

    def start(self, cwd: Path, *args, env: dict | None = None) -> int:
        """``env``: settings of this driver on top of this process's environment now (a fault
        point: KDSWEEP_FAULT); its Ray's sockets in ``cwd``'s own folder (ray_dir)."""
        env = {**os.environ, "RAY_TMPDIR": ray_dir(cwd), **(env or {})}
        # kdsweep's settings are read when their modules are imported (the lease's TTL), which
        # the forking process did with its own: a driver whose settings differ there is a
        # plain process (start_driver), never a fork that would silently run with the others'.
        # Ray's (RAY_*, some of which a local Ray of this process sets) are read as its
        # processes start, from the driver's environment; Tune's pending trials
        # (TUNE_MAX_PENDING_TRIALS_PG) is what a sweep in this process leaves in its
        # environment (engine.py sets it for Tune): the fork reads Tune's default, as a user's
        # driver does
        imported = {k for k in {*env, *self.env} if k.startswith("KDSWEEP_")
                    and k not in READ_AT_RUN and env.get(k) != self.env.get(k)}
        if imported:
            raise ValueError(f"{sorted(imported)}: read at import; start this driver with "
                             "start_driver")
        self.started = None
        self.proc.stdin.write("\t".join([str(cwd), str(cwd / "driver.log"), json.dumps(env),
                                         *map(str, args)]).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + HANG
        while self.started is None:
            assert self._read(deadline - time.monotonic()), "no driver forked within HANG"
        note_session(cwd, self.started)  # setsid: its session id is its pid
        self.last = self.started
        return self.started

    def poll(self, pid: int) -> int | None:
        while self._read(0):
            pass
        return self.codes.get(pid)

    def wait(self, pid: int | None = None, timeout: float = HANG) -> int:
        """The exit code of driver ``pid`` (the last started by default) once it ends, within
        ``timeout`` (a guard against a hang)."""
        pid = self.last if pid is None else pid
        deadline = time.monotonic() + timeout
        while pid not in self.codes:
            assert self._read(deadline - time.monotonic()), f"no driver ended within {timeout} s"
        return self.codes[pid]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(HANG / 5)


class ForkedDriver:
    """What `start_driver` returns (the part of Popen the tests use), for a forked driver."""

    def __init__(self, forks: DriverForks, pid: int):
        self.forks, self.pid = forks, pid

    @property
    def returncode(self) -> int | None:
        return self.forks.codes.get(self.pid)

    def poll(self) -> int | None:
        return self.forks.poll(self.pid)

    def wait(self, timeout: float = HANG) -> int:
        return self.forks.wait(self.pid, timeout)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_driver(forks: DriverForks, spec_path: Path, tmp: Path,
                env: dict | None = None, address: str | None = None) -> ForkedDriver:
    """`start_driver` for a test whose subject is not the driver's start-up: the driver forked
    from ``forks`` (its imports done), logging to tmp/driver.log, in tmp, its session noted
    there (`kill_leftovers`); ``address``: the Ray it joins, as start_driver's."""
    args, joined = joining(address)
    return ForkedDriver(forks, forks.start(tmp, "run", spec_path, *args,
                                           env={**(env or {}), **joined}))


def wait_idle(timeout: float = HANG) -> None:
    """Until the Ray this process is connected to (conftest's ``local_ray``) has every CPU and
    GPU free again: a joined driver's trials released (Ray ends a job's actors once its driver
    has exited or died; Tune removes its placement groups), so the next test starts on the
    resources a Ray of its own would give it. ``timeout`` guards against a hang only."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        held = {k: total[k] - free.get(k, 0.0) for k in ("CPU", "GPU")
                if total.get(k, 0.0) - free.get(k, 0.0) > 1e-6}
        if not held:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the shared Ray still holds {held} after {timeout} s")
        time.sleep(0.1)
