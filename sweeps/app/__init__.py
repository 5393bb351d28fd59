"""The application: ``run_sweep`` and its phases, the driver's events, progress and status,
the checks before Ray starts, ``kdsweep train``. The CLI (sweeps/cli.py) sits above it."""
