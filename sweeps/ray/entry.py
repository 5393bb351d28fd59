"""The function Tune's trial actors are built around: it imports the worker's code (trial.py:
torch, kd_core, matplotlib's user) when a job starts, not when Ray starts the actor.

Ray builds an actor by unpickling its class, which imports the module of the function the
class wraps. Tune starts an actor for each pending trial and, when a running trial ends first,
hands the pending one to the ended trial's warm actor (reuse_actors) and removes the one it was
starting: with trial.py as that module, each such actor imported torch and kd_core (~1.5 CPU-s)
for nothing, once or more per sweep of short trials (benchmarks/RESULTS.md, issue 46, third
session). An actor that runs a job imports the same modules, at its first job instead. Nothing
here may import more than the standard library at module level (tests/test_worker_imports.py).
"""

from __future__ import annotations


def run_job(config: dict, spec, driver_token: str) -> None:
    """Tune's entry point: trial.run_job (``spec`` and the driver's lease token bound once
    with tune.with_parameters)."""
    from .trial import run_job

    run_job(config, spec, driver_token)
