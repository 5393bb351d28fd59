"""How every benchmark here measures: variants interleaved, min and median, physical bounds.

A shared, noisy machine drifts (another job starts, a core is throttled): a variant timed
once, before or after another, measures the drift as much as the variant. So each round runs
every variant once, in an order rotated by one each round, and a figure is reported as the min
(the least disturbed run) and the median over rounds. A ratio is formed within each round
(paired), then summarised. Where physics bounds a figure (a compute ratio, one copy of a file),
``bound`` says so when a figure crosses it: that is a measuring error, not a result.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path


def timed(fn: Callable[[], object], sync: Callable[[], object] = lambda: None) -> float:
    """Seconds for fn(), with ``sync`` (e.g. torch.cuda.synchronize) before and after, so that
    queued device work is neither charged to it nor left out."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: ``names`` rotated by one more each round."""
    return [names[r % len(names):] + names[: r % len(names)] for r in range(rounds)]


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each variant once per round, in rotated order; each call returns its figure.
    Returns the figures per variant, in round order (so ratios can be paired by round)."""
    out: dict[str, list[float]] = {name: [None] * rounds for name in variants}
    for r, order in enumerate(rotations(list(variants), rounds)):
        for name in order:
            out[name][r] = variants[name]()
    return out


def min_med(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def paired(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios num/den."""
    return [a / b for a, b in zip(num, den, strict=True)]


def fmt(values: list[float], digits: int = 3) -> str:
    """'min / median (n)'."""
    lo, med = min_med(values)
    return f"{lo:.{digits}f} / {med:.{digits}f} (n={len(values)})"


def bound(label: str, values: list[float], limit: float, above: bool = True) -> str:
    """An empty string when every value respects ``limit`` (an upper bound when ``above``,
    else a lower one); otherwise a line saying the figure crossed its bound."""
    crossed = [v for v in values if (v > limit if above else v < limit)]
    if not crossed:
        return ""
    side = "above its upper" if above else "below its lower"
    return (f"BOUND CROSSED: {label} {', '.join(f'{v:.3f}' for v in crossed)} is {side} "
            f"bound {limit:.3f}: a measuring error (noise, a different baseline), not a result")


def packed_seconds(cmd: list[str], k: int, go: Path) -> float:
    """K processes of ``cmd`` at once (packed trials on one device): each prints "ready" once
    warmed up and waits for the file ``go``; the wall time from touching it to the last one's
    "done". A worker that fails before either is a RuntimeError; every worker is waited for
    (killed after 600 s)."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a packed worker failed before its warm-up ended")
        t0 = time.perf_counter()
        go.touch()
        for p in procs:
            if p.stdout.readline().strip() != "done":
                raise RuntimeError("a packed worker failed while timed")
        return time.perf_counter() - t0
    finally:
        for p in procs:
            try:
                p.wait(600)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime + stime in clock ticks, start time) of ``pid`` from /proc, or None once it
    is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def tree_cpu_run(cmd: list[str], every: float = 0.2, **kw) -> tuple[subprocess.CompletedProcess,
                                                                     float, float]:
    """subprocess.run(cmd, **kw) and the CPU seconds (user + system) of its whole process tree:
    every process descended from it (Ray's GCS, raylet and workers included), sampled from
    /proc every ``every`` s, each pid's last sample summed (a process that ends between two
    samples loses at most ``every`` s of CPU; one living less than ``every`` may be missed).
    Returns (the completed process, wall seconds, CPU seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[tuple[int, int], int] = {}  # (pid, start time) -> its last CPU ticks
    done = threading.Event()
    proc = subprocess.Popen(cmd, **{k: v for k, v in kw.items() if k != "timeout"})

    def sample():
        while True:
            stats = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
                    stats[int(entry)] = st
            # the tree: the command and its descendants; an orphan (reparented) stays in by
            # its pid and start time (a pid reused by another process is not the same)
            tree = {proc.pid} | {pid for pid, (_, _, start) in stats.items()
                                 if (pid, start) in seen}
            grew = True
            while grew:
                grew = False
                for pid, (ppid, _, _) in stats.items():
                    if ppid in tree and pid not in tree:
                        tree.add(pid)
                        grew = True
            for pid in tree:
                if pid in stats:
                    seen[pid, stats[pid][2]] = stats[pid][1]
            if done.wait(every):
                return

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    out, err = proc.communicate(timeout=kw.get("timeout"))
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    return (subprocess.CompletedProcess(cmd, proc.returncode, out, err), wall,
            sum(seen.values()) / tick)
