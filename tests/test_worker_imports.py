"""What a process imports on the paths every sweep pays for: a trial actor's start (Ray builds
it around sweeps.ray.entry) and a driver's model checks (preflight, the critical path's
forward_macs). Each import named here cost a second or a fraction of one per process
(benchmarks/RESULTS.md, issue 46, third session); these fail when one comes back."""

import subprocess
import sys

import cloudpickle
import torch

from kd_core.models import build_model
from kd_core.models.base import to_cpu_storage
from testkit import HANG


def _child(code: str, stdin: bytes = b"") -> list[str]:
    """The modules of ``names`` (the code's last line prints them) a fresh process holds."""
    out = subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True,
                         timeout=HANG / 2)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode().split()


def test_a_trial_actor_is_built_without_the_workers_code():
    """Tune's trainable is pickled by reference to sweeps.ray.entry.run_job: unpickling it (as
    Ray does to build each actor, used or not) imports neither torch nor kd_core nor the worker
    (trial.py); the job imports them when it starts."""
    from sweeps.ray import engine, entry

    assert engine.run_job is entry.run_job
    code = ("import pickle, sys\n"
            "fn = pickle.loads(sys.stdin.buffer.read())\n"
            "assert fn.__module__ == 'sweeps.ray.entry', fn.__module__\n"
            "print(*[m for m in ('torch', 'kd_core', 'sweeps.ray.trial', 'mlflow', 'matplotlib',"
            " 'pandas', 'ray') if m in sys.modules])")
    assert _child(code, cloudpickle.dumps(engine.run_job)) == []


def test_the_drivers_model_checks_import_neither_sympy_nor_dynamo():
    """preflight's CPU check of a small model and forward_macs give a meta-built model CPU
    storage without torch's Python references (to_cpu_storage): no sympy, no symbolic shapes,
    no torch._dynamo in the driver."""
    code = ("import sys, torch\n"
            "from kd_core.models import build_model\n"
            "from kd_core.profile import forward_macs\n"
            "from sweeps.app.preflight import _logits_on_cpu\n"
            "with torch.device('meta'):\n"
            "    model = build_model('cnn-small', 10, 1)\n"
            "assert tuple(_logits_on_cpu(model, (2, 1, 8, 8)).shape) == (2, 10)\n"
            "assert forward_macs('cnn-small', 10, (1, 8, 8)) > 0\n"
            "print(*[m for m in ('sympy', 'torch.fx.experimental.symbolic_shapes',"
            " 'torch._dynamo') if m in sys.modules])")
    assert _child(code) == []


def test_cpu_storage_is_to_empty_without_its_imports():
    """The same module as to_empty's: every parameter and buffer on the CPU with its shape,
    stride, dtype, kind (Parameter or not) and requires_grad."""
    with torch.device("meta"):
        a, b = build_model("cnn-small", 10, 1), build_model("cnn-small", 10, 1)
    a.to_empty(device="cpu")
    to_cpu_storage(b)
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert sa.keys() == sb.keys() and ba.keys() == bb.keys() and sa and ba
    for x, y in [*((sa[k], sb[k]) for k in sa), *((ba[k], bb[k]) for k in ba)]:
        assert y.device.type == "cpu" and type(x) is type(y)
        assert (x.shape, x.stride(), x.dtype, x.requires_grad) == (
            y.shape, y.stride(), y.dtype, y.requires_grad)
