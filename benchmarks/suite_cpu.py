"""Where a machine's CPU goes while something runs (the whole suite): every process's user +
system seconds, sampled from /proc every 0.5 s and grouped by its command line, printed when
the sampler gets SIGINT or SIGTERM. A process that lives under one interval is missed; a Ray
worker is grouped by its latest name (``ray::IDLE`` until it runs a job).

    python3 benchmarks/suite_cpu.py > cpu.txt & sampler=$!
    make test SEED=1208; kill -INT $sampler
"""

from __future__ import annotations

import collections
import os
import re
import signal
import sys
import time

INTERVAL = 0.5
HZ = os.sysconf("SC_CLK_TCK")
# first match wins: a Ray worker's command line names its raylet, a driver's its spec path
GROUPS = [
    (r"ray::IDLE", "ray worker idle"),
    (r"ray::ImplicitFunc|ray::_Inner|ray::run_job|ray::.*Trainable", "trial actor"),
    (r"ray::", "ray other actor"),
    (r"default_worker|setup_worker", "ray worker (before its name)"),
    (r"raylet", "raylet"),
    (r"gcs_server", "gcs"),
    (r"dashboard", "dashboard and agents"),
    (r"runtime_env", "runtime_env agent"),
    (r"log_monitor|monitor\.py", "ray monitors"),
    (r"mlflow", "command lines naming mlflow"),
    (r"postgres", "postgres"),
    (r"moto", "moto"),
    (r"kdsweep|sweeps", "driver"),
    (r"-u -c import sys", "xdist test process"),
    (r"pytest|xdist", "pytest"),
]
RENAMED = {"ray worker idle", "ray worker (before its name)", "ray other actor"}
seen: dict[tuple[int, int], list] = {}  # (pid, start) -> [group, cpu now, cpu first seen]


def group(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return next((name for pat, name in GROUPS if re.search(pat, cmd)), "other") if cmd else None


def sample(first: bool) -> None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        cpu, key = (int(fields[11]) + int(fields[12])) / HZ, (int(entry), int(fields[19]))
        if key not in seen:  # a process running before the sampler counts from now
            seen[key] = [group(key[0]) or "?", cpu, cpu if first else 0.0]
        else:
            if seen[key][0] in RENAMED:
                seen[key][0] = group(key[0]) or seen[key][0]
            seen[key][1] = cpu


def report(*_) -> None:
    cpu, count = collections.Counter(), collections.Counter()
    for name, now, base in seen.values():
        cpu[name] += now - base
        count[name] += 1
    for name, seconds in cpu.most_common():
        print(f"{seconds:8.1f} {count[name]:5d} {name}")
    print(f"{sum(cpu.values()):8.1f} total")
    sys.exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, report)
    signal.signal(signal.SIGTERM, report)
    sample(first=True)
    while True:
        time.sleep(INTERVAL)
        sample(first=False)
