"""Named fault points, for tests: a run dies exactly where a preemption could hit it, at once
and every time, instead of a test sleeping until it probably has.

``KDSWEEP_FAULT=name`` (or ``name=value``; several, comma-separated) SIGKILLs the run's whole
process group (the driver, its local Ray and the trial workers, as losing the machine does) the
first time any of its processes reaches that point (with that value). Unset, as in every real
run, a point costs one environment lookup. Only for a driver in a process group of its own
(`kdsweep run` started with a new session): the whole group dies.
"""

from __future__ import annotations

import os
import signal

# The points and where they are; a test names them, the code marks them with reached().
POINTS = {
    "after-lease": "driver: holds the sweep's lease; Ray not started, nothing else written",
    "store-creating": "driver: the MLflow store is migrated but not yet moved into place",
    "epoch": "trial worker: a generation-G trial's epoch E trained, its checkpoint handed to the "
    "uploader (epoch=G.E)",
    "seed-epoch": "trial worker: a seed-S generation-G trial's epoch E trained, its checkpoint "
    "handed to the uploader (seed-epoch=S.G.E: in a sequential study, a later look's seeds are "
    "its own)",
    "before-publish": "trial worker: every epoch in its checkpoint, the result not yet stored",
    "run-created": "driver: a trial's MLflow run created, its params and role tag not yet "
    "logged",
    "mid-export": "driver: results.parquet written, MLflow's copy and summary not yet",
    "shared-write": "driver: a shared file of the sweep checked (its version read under the "
    "lease), not yet written (shared-write=trials.json, results.parquet, added)",
    "added-folded": "driver: trials added by earlier runs folded into trials.json, their "
    "added/ files not yet removed",
}
ENV, GROUP = "KDSWEEP_FAULT", "KDSWEEP_FAULT_GROUP"
# ``KDSWEEP_PAUSE=name[=value]``: the process that reaches that point stops itself (SIGSTOP),
# as a driver paused by its machine would, until a test sends it SIGCONT.
PAUSE = "KDSWEEP_PAUSE"


def arm() -> None:
    """In the driver, before Ray starts: record its process group, which the workers inherit
    (through the environment) as the group to kill."""
    if os.environ.get(ENV) and GROUP not in os.environ:
        os.environ[GROUP] = str(os.getpgrp())


def reached(point: str, value: object = None) -> None:
    """Die here if the run was told to (see the module docstring)."""
    paused = os.environ.get(PAUSE)
    if paused and (point if value is None else f"{point}={value}") in paused.split(","):
        os.kill(os.getpid(), signal.SIGSTOP)
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    assert point in POINTS, point
    here = point if value is None else f"{point}={value}"
    if here in wanted.split(","):
        group = int(os.environ.get(GROUP, os.getpgrp()))
        os.killpg(group, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)  # a Ray worker is in a process group of its own
