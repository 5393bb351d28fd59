"""Student-images/s per GPU: one trial, K trials packed, K siblings fused, the step captured.

Issue 44 item 5, for one student architecture per call (the GPU suite calls it once per
model, each under its own limit): students of ``--model`` read a shared bank of a
``--teacher``'s logits (built here, by the sweep's own code, and timed: forward-views/s) on
synthetic CIFAR-100-shaped data with CIFAR's augmentation (162 views), batch 128, the paper's
recipe. Each variant is real kd_core training (train.Trainer, fused.FusedGroup); counted:
student-images/s, i.e. images trained per second summed over the students on the device:

- ``one``: one Trainer (one trial per GPU, as a sweep without packing or fusion runs);
  ``one fp32`` / ``one contiguous``: bf16 autocast / channels_last off; ``one <capture>``: the
  step compiled or captured (kd_core/capture.py; ``--capture graphs``: CUDA graphs).
- ``packed K``: K processes, one Trainer each, on the one device, timed from a common start
  (after each warmed up) to the last one's end.
- ``fused K`` (and ``fp32``, ``contiguous``, ``<capture>``): one FusedGroup of K siblings (the
  paper grid's kl at tau 0.1 ... inf and mse).
- ``teacher``: one Trainer of the teacher on the labels (the grid's teachers, for
  schedule_sim.py's device-hours).

Variants are interleaved over ``--rounds`` (rotated each round), min and median; a variant
that fails (e.g. a compile error) is recorded with its error and the others go on; the JSON is
rewritten after every variant, so a check stopped at its limit keeps what it measured. The
FLOP bound: FLOPs per training image = 2 x 3 x forward MACs (forward and two backward
matmuls), against the chip's dense bf16 peak by device name (``PEAK_BF16``).

    PYTHONPATH=. python3 benchmarks/students_per_gpu.py --device cuda --model wrn-16-2 \
        --json students_wrn-16-2.json                                        # GPU suite
    PYTHONPATH=. .venv/bin/python benchmarks/students_per_gpu.py --device cpu \
        --model cnn-small --teacher cnn-small --k 2 --batch-size 8 --steps 2 --image-size 8 \
        --classes 10 --rounds 1                                              # a CPU smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import min_med, packed_seconds, rotations  # noqa: E402

from kd_core.bank import TeacherBank, bank_for  # noqa: E402
from kd_core.capture import graph_skips  # noqa: E402
from kd_core.config import TrainConfig  # noqa: E402
from kd_core.data import synthetic  # noqa: E402
from kd_core.fused import FusedGroup  # noqa: E402
from kd_core.profile import forward_macs  # noqa: E402
from kd_core.train import Trainer, init_model  # noqa: E402

# Dense bf16 peak FLOP/s by device name (vendors' datasheets, without sparsity), first match.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
             ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("A10", 125e12))
# The paper grid's siblings (kl at every tau, and mse): a group of K takes the first K.
SIBLINGS = [("kl", t, 1.0) for t in (0.1, 0.25, 0.5, 1.0, 3.0, 5.0, 20.0, float("inf"))] + [
    ("mse", 1.0, 1.0)]


def peak_bf16(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((p for key, p in PEAK_BF16 if key in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_of(args):
    return synthetic(n_train=args.batch_size * max(args.steps, args.warmup), n_test=64,
                     num_classes=args.classes, image_size=args.image_size)


def trainer(args, data, bank, loss="kl", tau=4.0, alpha=1.0, model=None, **execution):
    cfg = TrainConfig(epochs=10_000, batch_size=args.batch_size, loss=loss, tau=tau,
                      alpha=alpha, device=args.device, **execution)
    return Trainer(init_model(model or args.model, data, 0), data, cfg,
                   bank=None if loss == "ce" else bank)


def run_steps(t, steps: int) -> None:  # Trainer or FusedGroup: ``steps`` training batches
    t._train_epoch(steps) if isinstance(t, Trainer) else t._train_epoch(t.active, steps)


WORKER = "worker"  # argv[1] of a packed worker process


def worker(argv: list[str]) -> None:
    """One packed trial: warm up, say "ready", wait for the go file, train, say "done"."""
    args = parse(argv)
    torch.set_num_threads(args.threads)
    data = data_of(args)
    state = torch.load(args.bank_file, mmap=True, weights_only=True)
    t = trainer(args, data, TeacherBank.from_state_dict(state))
    run_steps(t, args.warmup)
    sync(t.device)
    print("ready", flush=True)
    while not os.path.exists(args.go):
        time.sleep(0.001)
    run_steps(t, args.steps)
    sync(t.device)
    print("done", flush=True)


def packed(args, k: int, bank_file: str) -> float:
    go = Path(tempfile.mkdtemp()) / "go"
    threads = max(1, (os.cpu_count() or 1) // k) if args.device == "cpu" else 1
    cmd = [sys.executable, __file__, WORKER, *sys.argv[1:], "--bank-file", bank_file,
           "--go", str(go), "--threads", str(threads)]
    return k * args.steps * args.batch_size / packed_seconds(cmd, k, go)


def variants(args, data, bank, bank_file: str, ran: dict) -> dict:
    """Name -> a function returning one timing's student-images/s. Models are built (and
    compiled) lazily, on a variant's first call, then reused."""
    dev = torch.device(args.device)
    k, cap = args.k, args.capture
    built: dict[str, object] = {}

    def one(**execution):
        return lambda: trainer(args, data, bank, **execution)

    def fused(**execution):
        return lambda: FusedGroup([trainer(args, data, bank, loss=loss, tau=tau, alpha=alpha,
                                           **execution) for loss, tau, alpha in SIBLINGS[:k]])

    # the compiled variants last: a check stopped at its limit while compiling keeps the rest
    makers = {"one": (one(), 1), f"fused {k}": (fused(), k), "one fp32": (one(bf16="off"), 1),
              "one contiguous": (one(channels_last="off"), 1),
              f"fused {k} fp32": (fused(bf16="off"), k),
              f"fused {k} contiguous": (fused(channels_last="off"), k),
              "teacher": (lambda: trainer(args, data, bank, loss="ce", model=args.teacher), 1),
              f"one {cap}": (one(step=cap), 1), f"fused {k} {cap}": (fused(step=cap), k)}

    def timing(name):
        make, students = makers[name]

        def run():
            if name not in built:
                built[name] = t = make()
                lead = t if isinstance(t, Trainer) else t.members[0]
                ran[name] = lead.execution.step  # what ran: graphs is eager off CUDA
                run_steps(t, args.warmup)  # compiles, records graphs, tunes cuDNN
            t = built[name]
            run_steps(t, args.warmup)
            sync(dev)
            t0 = time.perf_counter()
            run_steps(t, args.steps)
            sync(dev)
            return students * args.steps * args.batch_size / (time.perf_counter() - t0)

        return run

    out = {name: timing(name) for name in makers}
    out = {"one": out.pop("one"), f"packed {k}": lambda: packed(args, k, bank_file), **out}
    return {name: out[name] for name in args.variants.split(",")} if args.variants else out


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="wrn-16-2")
    p.add_argument("--teacher", default="wrn-28-4")
    p.add_argument("--k", type=int, default=8, help="students packed or fused")
    p.add_argument("--capture", default="graphs", choices=["compiled", "graphs"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per timing")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    p.add_argument("--bank-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--go", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        return worker(sys.argv[2:])
    args = parse(sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name, peak = peak_bf16(dev)
    data = data_of(args)
    t0 = time.perf_counter()
    bank = bank_for(init_model(args.teacher, data, 0), data, dev)
    sync(dev)
    build_s = time.perf_counter() - t0
    views = data.augment.n_views * len(data.train_labels)
    shape = (3, args.image_size, args.image_size)
    flops = {m: 6 * forward_macs(m, args.classes, shape) for m in (args.model, args.teacher)}
    result = {"args": vars(args), "device": name, "torch": torch.__version__,
              "peak_bf16_flops": peak, "flops_per_image": flops, "k": args.k,
              "model": args.model, "teacher": args.teacher,
              "bank_build": {"views": views, "seconds": build_s,
                             "views_per_s": views / build_s}, "variants": {}}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))

    save()
    with tempfile.TemporaryDirectory() as tmp:
        bank_file = str(Path(tmp) / "bank.pt")
        torch.save(bank.state_dict(), bank_file)
        ran: dict[str, str] = {}
        todo = variants(args, data, bank, bank_file, ran)
        figures = {n: [] for n in todo}
        for order in rotations(list(todo), args.rounds):
            for n in order:
                entry = result["variants"].setdefault(n, {"images_per_s": []})
                if "error" in entry:
                    continue
                try:
                    figures[n].append(todo[n]())
                except Exception as e:  # recorded: the other variants go on
                    entry["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                    traceback.print_exc()
                    continue
                lo, med = min_med(figures[n])
                model = args.teacher if n == "teacher" else args.model
                entry.update(images_per_s=figures[n], min=lo, median=med,
                             step=ran.get(n, "eager"), graph_skips_so_far=graph_skips(),
                             flop_fraction=None if peak is None
                             else med * flops[model] / peak)
                save()
    print(f"{args.model} students from a {args.teacher} bank, {name}, K = {args.k}, batch "
          f"{args.batch_size}; student-images/s over {args.rounds} round(s), min / median")
    print("| variant | student-images/s | vs one | of the bf16 FLOP bound |")
    print("| --- | --- | --- | --- |")
    base = result["variants"].get("one", {}).get("median")
    for n, e in result["variants"].items():
        if "error" in e and "median" not in e:
            print(f"| {n} | failed: {e['error']} | | |")
            continue
        vs = f"{e['median'] / base:.2f}x" if base and n != "teacher" else "-"
        frac = "-" if e["flop_fraction"] is None else f"{e['flop_fraction']:.1%}"
        asked = args.capture in n.split()
        ran_as = f" (ran {e['step']})" if asked and e["step"] != args.capture else ""
        print(f"| {n}{ran_as} | {e['min']:.0f} / {e['median']:.0f} | {vs} | {frac} |")
    print(f"bank build: {views} views in {build_s:.1f} s")


if __name__ == "__main__":
    main()
