"""A cluster that refuses the driver's token: the time of `kdsweep run --address` to its one
line, for code trees given as arguments (e.g. a `git archive` of an earlier commit), interleaved
over two rounds on one loopback head (testkit's Cluster). Issue 46; RESULTS.md.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/refused_token.py /tmp/before $PWD
"""
import subprocess
import sys
import time
from pathlib import Path

from testkit.drivers import Cluster, write_spec

trees = {Path(t).name or t: t for t in sys.argv[1:]}
c = Cluster()
try:
    c.start_head()
    addr = f"127.0.0.1:{c.gcs_port}"
    env = {k: v for k, v in c.env.items() if not k.startswith("RAY_AUTH")}
    times = {name: [] for name in trees}
    for r in range(2):
        for name, tree in list(trees.items())[::1 if r % 2 == 0 else -1]:
            folder = c.root / f"tok-{r}-{len(times[name])}-{abs(hash(name))}"
            folder.mkdir(parents=True)
            spec = write_spec(folder)
            t = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", str(spec), "--address",
                                addr], cwd=tree, env={**env, "PYTHONPATH": tree},
                               capture_output=True, text=True, timeout=300)
            times[name].append(time.monotonic() - t)
            print(name, r, p.returncode, f"{times[name][-1]:.1f} s", p.stderr.strip()[:90],
                  flush=True)
    for k, v in times.items():  # two rounds: the median is their mean
        print(k, f"min {min(v):.1f} s, median {sum(v) / len(v):.1f} s")
finally:
    c.stop()
