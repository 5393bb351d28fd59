import os
import pickle
import tempfile
from pathlib import Path

# Every test sees a machine without a GPU, whatever it runs on (the drivers and Ray workers
# the tests start inherit it): resources are what a test asks for, never what the host has.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)
# The node cache (banks, the migrated MLflow store template) outlives a run by design: one of
# its own for each test session (the drivers and Ray workers the tests start inherit it), so no
# test sees another run's banks.
os.environ["KDSWEEP_CACHE"] = tempfile.mkdtemp(prefix="kdcache-")


def pytest_collection_modifyitems(items):
    """The end-to-end tests (marked slow: real drivers and Ray, 10-120 s each) first, each tier
    in pytest-randomly's order (it shuffles before this hook; the sort is stable, so a SEED
    still repeats an order). With xdist handing out one test at a time as a worker frees up
    (the Makefile's --maxschedchunk 1), the longest tests start first and the short ones fill
    in behind them: no two-minute test starts when the other worker has nothing left to do."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)



def write_cifar(root: Path, name: str, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """Write a tiny dataset in the real CIFAR python-pickle layout that torchvision reads."""
    rng = np.random.default_rng(seed)
    k = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def dump(fname, n):
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, k, n).tolist(),
        }
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f)

    if name == "cifar10":
        for i in range(1, 6):
            dump(f"data_batch_{i}", n_train // 5)
        dump("test_batch", n_test)
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(k)]})
    else:
        dump("train", n_train)
        dump("test", n_test)
        meta = ("meta", {"fine_label_names": [f"c{i}" for i in range(k)]})
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f)
    return root


@pytest.fixture
def cifar_root(tmp_path):
    write_cifar(tmp_path, "cifar10")
    write_cifar(tmp_path, "cifar100")
    return tmp_path


@pytest.fixture(scope="session")
def local_ray():
    """The local Ray of the sweeps this test process runs itself (a start and a shutdown cost
    ~5 s): started by the first test that asks, shut down when the session ends."""
    import ray

    from sweeps.ray.engine import connect

    connect(None)
    yield
    ray.shutdown()


@pytest.fixture
def joined(local_ray):
    """The address of this test process's local Ray (``local_ray``, one per xdist worker: the
    Ray kdsweep starts, 127.0.0.1 only, the machine's CPUs, trials at the user's priority), for
    the drivers of a test to join with the CLI's `--address` (testkit.drivers' start_driver and
    fork_driver take it): a driver without it starts a Ray of its own (~4 s and ~5 CPU-s of
    its process tree, ~1.4 s to stop). Every driver starts a Ray of its own unless its test
    asks for this; the Ray is idle (every CPU free: the last test's trials ended) before the
    test and after it (drivers.wait_idle, bounded by HANG).

    A joined driver differs from one with a Ray of its own in what its trials inherit: their
    environment is the Ray's (this process's at the Ray's start), not the driver's, so a
    worker's fault point (KDSWEEP_FAULT=epoch=..., before-publish, seed-epoch), a driver's
    storage credentials or KDSWEEP_* setting never reach them; a SIGKILL of the driver's
    session leaves its trials to Ray, which ends them after it; job_slots is None (every
    ready job is offered at once), and no LocalRayWatch or memory fit check runs. So a test
    keeps a Ray of its own for each driver whose subject is the driver's Ray (its start, its
    loss, what its session leaves running: test_driver_exit, test_full_disk's left_behind,
    the real-time kill among Ray's start), a machine lost whole (a worker's fault point kills
    the driver, its Ray and its trials at once: the kill tests' faulted drivers,
    test_fused_sweep's, test_sequential_sweep's, test_clusters' beta), settings its trials
    read from the driver (test_s3's credentials, faketime in the clock-skew test), or a
    cluster of its own (test_cluster*.py). The others' drivers join: the reruns after a kill,
    the plugin's three drivers, the SIGTERMed trial's, the killed lease holder and its rerun.
    """
    import ray

    from testkit.drivers import wait_idle

    wait_idle()
    yield ray.get_runtime_context().gcs_address
    wait_idle()


@pytest.fixture(scope="session")
def forks(local_ray):
    """The drivers' forking process of this test process (testkit.drivers.DriverForks: its
    ~4 s of imports once, not once per driver), started by the first test that asks, after
    this process's local Ray: what that Ray sets in the environment (RAY_AUTH_MODE) is then in
    the forking process's from its start, as in every driver's (a fork whose Ray settings
    differ from those its Ray modules were imported with fails to start its Ray)."""
    from testkit.drivers import DriverForks

    forks = DriverForks()
    yield forks
    forks.close()


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny models: more threads only contend), restored
    after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kdsweep_here(capsys):
    """The `kdsweep` command in this process (each call would spend seconds importing it
    anew): ``kdsweep_here(*args)`` -> (exit code, its stdout, its stderr)."""
    from sweeps import cli

    def run(*args):
        capsys.readouterr()  # what the test printed before
        code = cli.main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def run_here(local_ray):
    """`kdsweep run SPEC` in this process, for a test whose subject is not the driver's own
    process: no interpreter, imports or Ray of its own (the process's local Ray)."""
    from sweeps import cli

    return lambda spec_path: cli.main(["run", str(spec_path)])
