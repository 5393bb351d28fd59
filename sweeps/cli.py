"""The `kdsweep` command: train | plan | run | status | report."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

from .app import train_cmd

# Each command imports what it needs when it runs: `kdsweep --help` loads neither torch nor Ray.


def load_spec(path):
    from .domain.spec import load_spec

    return load_spec(path)


def _plan(args) -> int:
    from .app.preflight import check_all
    from .domain.plan import build_plan
    from .store.ledger import Ledger
    from .store.snapshot import Snapshot
    from .store.storage import Storage

    spec = load_spec(args.spec)
    plan = build_plan(spec)
    power = None
    if args.power:  # a pilot refused is one line before anything is printed
        from .report.power import power_table

        power = power_table(args.power, spec, args.project_from_other_dataset)
    data = None
    if not args.offline:  # every check `run` makes before Ray (this machine's resources too,
        data = check_all(spec, args.address)  # unless a cluster is named)
    done = set()
    if args.check_storage:  # read only: a plan changes nothing
        ledger = Ledger(Storage(spec.storage), repair=False)
        done = Snapshot.load(ledger, (t.key for t in plan.trials)).ended()
    print(plan.describe(done))
    from .ray.teacher_bank import bank_summary

    if summary := bank_summary(spec, plan):
        print(summary)
    if args.measure:
        _measure(spec, plan, args, data)
    if power:
        print(power)
    return 0


FUSION_ROUNDS = 3  # plan --measure's rounds of fused against separate steps


def _measure(spec, plan, args, data) -> None:
    import ray

    from .app.preflight import check_dataset, check_fits, local_resources
    from .app.sweep import connect
    from .ray.packing import (
        measure,
        measure_fusion,
        plan_shapes,
        render,
        render_fusion,
        sibling_groups,
        suggest,
    )
    from .ray.plugins import runtime_env
    from .store.measured import entry, write_fusion
    from .store.storage import Storage

    if args.address is None:
        check_fits(spec.resources, spec.architectures, local_resources())
    data = data if data is not None else check_dataset(spec.dataset)
    counts = plan_shapes(spec, plan, data)
    groups = sibling_groups(spec, plan, data)
    connect(args.address, runtime_env(spec))  # the plugins' files, for the measuring workers
    if args.address is None:
        check_fits(spec.resources, spec.architectures, ray.cluster_resources())
    measured = measure(spec, list(counts), args.steps)
    print(
        render(spec, counts, measured, suggest(measured, max_per_gpu=args.max_per_gpu), args.steps)
    )
    if not groups:
        return
    # fused vs separate is a ratio of short timings: three interleaved rounds, medians (a
    # loaded machine still moves it: measure where the sweep will run, as quiet as it will be)
    fused = measure_fusion(spec, groups, args.steps, FUSION_ROUNDS)
    print(render_fusion(fused, groups, args.steps))
    gpu = spec.resources.uses_gpu
    uri = write_fusion(Storage(spec.storage), spec, [
        entry(s.model, gpu, p[0].device, spec, int(spec.resources.for_model(s.model)["cpu"]),
              args.steps, FUSION_ROUNDS, p) for s, p in fused.items()])
    print(f"fusion measurements recorded in {uri} (fuse: auto reads them)")


# `ray job stop`, schedulers and a spot node's shutdown send SIGTERM: it is marked, then the
# run exits through Python so that exit handlers (the MLflow writer's flush, the lease's
# release) run; everything else resumes on the next run. The exit code and the line come from
# the mark, not from the exception: a SystemExit raised inside one of Ray's calls comes out of
# it as another (core_worker.wait ends in SystemExit(1)).
STOPPED = threading.Event()
STOPPED_LINE = ("kdsweep run: stopped by SIGTERM: finished trials and the epochs' checkpoints "
                "are kept in storage; rerun the same command to go on")


def _on_sigterm(signum, frame) -> NoReturn:
    STOPPED.set()
    sys.exit(128 + signum)


def _run(args) -> int:
    spec = load_spec(args.spec)  # validated in full before Ray starts
    from .app.sweep import LARGE_GRID, GridTooLarge, run_sweep

    signal.signal(signal.SIGTERM, _on_sigterm)  # kept across ray.init (engine.connect)

    try:
        judge = None
        if spec.grid.add_seeds is not None:  # a sequential study: the report's rule decides
            from .report.sequential import next_look as judge
        run_sweep(spec, address=args.address, retry_failed=args.retry_failed,
                  max_trials=None if args.large else LARGE_GRID, judge=judge)
    except GridTooLarge as e:
        raise GridTooLarge(f"{args.spec}: {e}") from None
    return 0


def _status(args) -> int:
    from .app.preflight import check_storage
    from .app.progress import sweep_status
    from .domain.spec import SpecError

    spec = load_spec(args.spec)
    check_storage(spec.storage, reading=True)
    try:
        print(sweep_status(spec))
    except OSError as e:  # the storage stopped answering part way
        raise SpecError(f"storage: {spec.storage}: {str(e).splitlines()[0]}") from None
    return 0


def _report(args) -> int:
    from .report import report
    from .report.load import specs_in
    from .tracking.sweep_run import publish_report

    if not args.inputs and not args.experiment:
        raise ValueError("give results (spec files or .parquet) or --experiment NAME")
    for given in args.inputs:  # each input readable, before anything is read or written
        if "://" in given:
            continue
        path = Path(given)
        if path.is_dir():
            raise ValueError(f"{given}: a directory, not a sweep spec file or a results "
                             ".parquet file")
        if path.exists() and not os.access(path, os.R_OK):
            raise ValueError(f"{given}: not readable (permission denied)")
    text, paths = report(args.inputs, args.out, args.tracking_uri, args.experiment)
    out = Path(args.out)
    publish_report(specs_in(args.inputs), text, paths, out)  # on each spec's sweep run
    print(text)
    print(f"report: {out / 'report.html'}; figures: "
          + ", ".join(p.name for p in paths if p.suffix == ".png")
          + f"; tables (CSV, LaTeX): {sum(p.suffix == '.csv' for p in paths)} in {out / 'tables'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kdsweep", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    try:
        release = version("kdsweep")
    except PackageNotFoundError:
        release = "unknown"
    parser.add_argument("--version", action="version", version=f"kdsweep {release}")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cmd.add_parser(sub)

    p = sub.add_parser(
        "plan", help="validate a sweep spec and print its trial counts per generation"
    )
    p.add_argument("spec", help="sweep spec YAML, e.g. sweeps/configs/digits.yaml")
    p.add_argument("--check-storage", action="store_true", help="also count trials already done")
    p.add_argument(
        "--offline",
        action="store_true",
        help="check the spec alone, not that its storage and tracking server answer from here",
    )
    p.add_argument(
        "--measure",
        action="store_true",
        help="run each kind of trial for a few steps; print peak memory, time, and a packing",
    )
    p.add_argument(
        "--power",
        nargs="+",
        metavar="PILOT",
        help="a pilot's results (.parquet or spec files): per claim, the effect this spec's "
        "seeds detect and the seeds the paper's effect needs",
    )
    p.add_argument(
        "--project-from-other-dataset",
        action="store_true",
        help="with --power: project a pilot whose dataset or architectures differ from the "
        "spec's (refused otherwise); every figure then names the pilot's dataset",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--max-per-gpu", type=int, default=8, help="most trials packed on one GPU")
    p.add_argument("--address", default=None, help="Ray cluster to measure on; default: local")
    p.set_defaults(func=_plan)

    p = sub.add_parser("run", help="run (or continue) a sweep on Ray")
    p.add_argument("spec", help="sweep spec YAML, e.g. sweeps/configs/digits.yaml")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address ('auto' inside ray job submit); default: local Ray",
    )
    p.add_argument(
        "--large", action="store_true", help="run a grid of more than 1000 trials"
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="train diverged trials again from their first epoch (failed ones always retry)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("status", help="print a sweep's progress from storage")
    p.add_argument("spec", help="sweep spec YAML, e.g. sweeps/configs/digits.yaml")
    p.set_defaults(func=_status)

    p = sub.add_parser("report", help="compare sweeps: tables and plots")
    p.add_argument(
        "inputs", nargs="*", help="sweep spec files or results .parquet paths/URIs (clusters)"
    )
    p.add_argument("--experiment", help="also read this MLflow experiment's runs (every cluster)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="with --experiment")
    p.add_argument("--out", default="kdsweep-report", help="folder for the PNG plots")
    p.set_defaults(func=_report)

    args = parser.parse_args(argv)
    from .store.storage import StorageFull

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, StorageFull) as e:  # SpecError is a ValueError
        print(f"kdsweep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if (why := _no_credentials(e)) is None:
            raise
        print(f"kdsweep {args.command}: error: {why}", file=sys.stderr)
        return 2


def _no_credentials(e: BaseException) -> str | None:
    """The one line for S3 refused for want of credentials (botocore's NoCredentialsError and
    PartialCredentialsError), None for any other error."""
    if "botocore" not in sys.modules:
        return None
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if not isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return None
    return ("S3: no credentials found: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in this "
            "environment (or a profile or instance role)")


def adopt_orphans() -> None:
    """Make this process the reaper of what its descendants leave (Linux's
    PR_SET_CHILD_SUBREAPER), so that _exit finds and ends them: a local Ray's raylet that ends
    while it starts its agents (a SIGTERM during Ray's start) leaves them to their grandparent,
    this process, rather than to init, where they would outlive it. Elsewhere, nothing. For
    the `kdsweep` process alone (console), never a process that runs sweeps among other work
    (a test's, through main): it would inherit others' orphans, and its LocalRayWatch would
    take an orphaned raylet for its own Ray."""
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER, on


def console() -> NoReturn:
    """The `kdsweep` command (and `python -m sweeps.cli`): main, then a quick exit."""
    adopt_orphans()
    try:
        code = main()
        sys.stdout.flush()  # a reader gone shows here too, not only mid-command
    except SystemExit as e:  # SIGTERM (see _run), argparse's --help and usage errors
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        if isinstance(e.code, str):  # sys.exit("message"), as Python prints it
            print(e.code, file=sys.stderr)
    except BrokenPipeError:
        # The reader went away (`kdsweep plan SPEC | head`): it has what it wanted. Exit as a
        # command killed by SIGPIPE would (Python ignores the signal, so it arrives as this
        # error), with standard output pointed at /dev/null so no later flush raises again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    except BaseException:  # what a stop's SystemExit became on its way out of Ray or Tune
        if not STOPPED.is_set():
            raise
    if STOPPED.is_set():
        print(STOPPED_LINE, file=sys.stderr)
        code = 128 + signal.SIGTERM
    _exit(code)


def _exit(code: int) -> NoReturn:
    """Exit without Python's teardown of every loaded module, which takes about 2 s once torch,
    Ray and MLflow are loaded (benchmarks/RESULTS.md): what that teardown does that matters is
    done first, as the interpreter does it (threading._shutdown: executors drained, threads
    joined; then the exit handlers: Ray's shutdown, logging's flush), then the streams; then
    whatever this process started that still runs (a local Ray's agents and workers, which
    Ray's shutdown leaves to end on their own) is ended: nothing is left behind, whatever the
    exit code."""
    import atexit
    import threading

    # taken before Ray's shutdown, after which its workers belong to init, not to this process
    engine = sys.modules.get("sweeps.ray.engine")  # loaded: Ray may run; not: nothing to end
    started = engine.own_processes() if engine else []
    threading._shutdown()  # private, but it is the interpreter's own first step of exiting
    ray = sys.modules.get("ray")
    if code == 0 and ray is not None and ray.is_initialized():
        # Ray's shutdown before its exit handler, which first sleeps 0.5 s for log lines still
        # on their way (Ray's worker.shutdown, _exiting_interpreter): a driver that ended its
        # work has none. Any other exit keeps the wait (Ray's account of what went wrong).
        ray.shutdown()
    atexit._run_exitfuncs()
    if engine:
        engine.end_processes(started)
        # then what those left to this process as they ended (adopt_orphans): a
        # raylet's agents, spawned after the list above was taken (a stop during Ray's start)
        engine.end_processes(engine.own_processes())
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone (`| head`), a closed stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
