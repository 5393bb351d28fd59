"""The training step's execution: eager, compiled, or captured as CUDA graphs (issue 44 item 4).

At the paper's shapes a GPU step is launch-bound (benchmarks/RESULTS.md, "GPU figures": a
WRN-16-2 step at batch 128 is ~8 ms of small kernels, ~1% of an H200's bf16 arithmetic), so
what a step costs is its kernel launches and Python, not its FLOPs. Two ways to cut them, for
the single step (train.Trainer) and the fused one (fused.FusedGroup) alike:

- ``compiled``: ``torch.compile`` (Inductor, default mode) of the step's loss: the forward
  pass, the teacher's logits and the loss (AOTAutograd compiles the matching backward), fewer
  and fused kernels. Runs on a CPU too (Inductor's C++ backend needs a C compiler), which is
  how its exactness is tested here (tests/test_capture.py).
- ``graphs``: the same, with ``mode="reduce-overhead"``: Inductor's CUDA graphs replay the
  forward and backward kernels with one launch each. CUDA only: on any other device the step
  stays eager (a CPU keeps today's path).

The optimizer step stays eager in both (SGD on a GPU is already the fused kernel, and its
learning rate, which the schedule changes, would be baked into a captured graph). Shapes are
static (``dynamic=False``): an epoch's last, shorter batch compiles once more, no symbolic
shapes. Which mode runs, and whether bf16 autocast and channels_last apply, is the recipe's
(config.TrainConfig: ``step``, ``bf16``, ``channels_last``, with their defaults and reasons);
``resolve`` turns those settings into what runs on a device.

Exactness: ``eager`` is the step as it was, op for op (float64 fused training stays bit-for-bit
separate training). ``compiled`` fuses kernels, so it matches eager to float32 rounding only.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import STEPS, SWITCHES


@dataclass(frozen=True)
class Execution:
    """How a step runs on one device: the mode, bf16 autocast, the memory format."""

    step: str  # "eager" | "compiled" | "graphs"
    autocast: bool
    memory_format: torch.memory_format


def _switch(value: str, cuda: bool) -> bool:
    return cuda if value == "auto" else value == "on"


def resolve(step: str, bf16: str, channels_last: str, device: torch.device) -> Execution:
    """What runs on ``device`` for these settings: ``graphs`` only on CUDA (eager elsewhere);
    bf16 and channels_last ``auto`` on CUDA only (the CPU stays float32 and contiguous, so a
    resumed run is bit-exact there)."""
    for name, value, allowed in (("step", step, STEPS), ("bf16", bf16, SWITCHES),
                                 ("channels_last", channels_last, SWITCHES)):
        if value not in allowed:
            raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
    cuda = device.type == "cuda"
    mode = "eager" if step == "graphs" and not cuda else step
    fmt = torch.channels_last if _switch(channels_last, cuda) else torch.contiguous_format
    return Execution(mode, _switch(bf16, cuda), fmt)


def capture(fn: Callable, step: str) -> Callable:
    """``fn`` (a step's loss: tensors in, tensors out) as ``step`` runs it: itself when eager,
    else compiled (``graphs``: with Inductor's CUDA graphs). Compiles lazily, on first call."""
    if step == "eager":
        return fn
    if step == "compiled":
        return torch.compile(fn, dynamic=False)
    compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)

    def replay(*args):
        # a new training step: the last step's graph outputs (its loss, logits) are dead, so
        # their memory may be reused (CUDA graph trees cannot tell an eager optimizer step
        # from the middle of an iteration)
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return replay


def graph_skips() -> int:
    """How many times Inductor fell back from CUDA graphs to plain compiled kernels in this
    process (e.g. an input mutated outside the graph's static memory): each one is in the log,
    and a ``graphs`` figure with skips measures ``compiled``, not CUDA graphs."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def compile_unavailable() -> str | None:
    """Why ``torch.compile`` cannot run on this machine's CPU (None: it can): Inductor's CPU
    code is C++, built by the system's compiler; Dynamo supports only some Pythons."""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler for Inductor's CPU backend (apt-get install g++)"
    try:
        import torch._dynamo  # noqa: F401
    except Exception as e:  # an unsupported Python raises on import
        return f"torch._dynamo unavailable: {e}"
    return None
