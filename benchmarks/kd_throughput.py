"""KD throughput: the paper's reference loop vs kd_core (online teacher) vs kd_core (bank).

The pair is WRN-28-4 -> WRN-16-2 on synthetic CIFAR-100-shaped data, all three measured in one
run on one machine:
  (a) reference: the official code's shape: torch DataLoader with per-sample torchvision
      transforms (RandomCrop 32 pad 4, flip, ToTensor, Normalize), fp32, the teacher run on
      every step, loss.item() per step, full evaluation of the train and test sets per epoch;
  (b) kd_core's Trainer with the online teacher;
  (c) kd_core's Trainer reading a teacher-logit bank (its build time reported apart).
It also times a CE epoch of the teacher, for the GPU-hours estimate of the paper's study.

The three run interleaved (harness.py): each round runs a, b and c once each, for --epochs
epochs (the first one of each untimed: warm-up), in an order rotated every round; ratios are
paired within a round; figures are min / median over --rounds. Bound: per training step, (b)
runs the student forward and backward (~3 student forwards) plus one teacher forward, (c) the
student alone, so c/b cannot exceed (3 S + T) / (3 S) with S, T the two models' forward FLOPs
(counted here); c/a neither, unless (a)'s data pipeline, not its arithmetic, is what limits it.

    PYTHONPATH=. python benchmarks/kd_throughput.py --device cpu --n-train 256 --n-test 256 \
        --epochs 2 --rounds 3
    PYTHONPATH=. python benchmarks/kd_throughput.py --device cuda --n-train 50000 \
        --n-test 10000 --epochs 3 --rounds 3 --workers 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import bound, fmt, interleaved, min_med, paired  # noqa: E402

from kd_core import TrainConfig
from kd_core.bank import bank_for
from kd_core.data import load_dataset
from kd_core.losses import distillation_loss
from kd_core.train import Trainer, init_model


class NumpyImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.x = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as torchvision's CIFAR holds
        self.y = labels.numpy()
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference(data, teacher, args, device) -> dict:
    """(a) The official scripts' loop."""
    norm = transforms.Normalize(data.mean, data.std)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.ToTensor(), norm])
    kw = dict(batch_size=args.batch_size, num_workers=args.workers,
              pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    train = DataLoader(NumpyImages(data.train_images, data.train_labels, train_tf), shuffle=True,
                       **kw)
    evals = [DataLoader(NumpyImages(x, y, eval_tf), shuffle=False, **kw) for x, y in
             ((data.train_images, data.train_labels), (data.test_images, data.test_labels))]
    torch.manual_seed(0)
    student = init_model("wrn-16-2", data, 0).to(device)
    teacher = teacher.to(device).eval()
    decay = [p for p in student.parameters() if p.ndim > 1]
    rest = [p for p in student.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest}], lr=0.1,
                          momentum=0.9, nesterov=True)
    train_times, epoch_times = [], []
    for _ in range(args.epochs):
        sync(device)
        t0 = time.perf_counter()
        student.train()
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                z_t = teacher(x)
            loss = distillation_loss(student(x), z_t, y, loss="kl", tau=4.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the reference logs the loss every step
        sync(device)
        train_times.append(time.perf_counter() - t0)
        student.eval()
        with torch.no_grad():
            for loader in evals:
                for x, y in loader:
                    F.cross_entropy(student(x.to(device)), y.to(device)).item()
        sync(device)
        epoch_times.append(time.perf_counter() - t0)
    return summarise(train_times, epoch_times, len(data.train_labels))


def summarise(train_times, epoch_times, n) -> dict:
    # The first epoch pays for warm-up (workers, cuDNN autotuning, compilation): drop it.
    tt = train_times[1:] or train_times
    et = epoch_times[1:] or epoch_times
    return {"train_images_per_s": n / statistics.median(tt),
            "train_s": statistics.median(tt), "epoch_s": statistics.median(et),
            "epochs_timed": len(tt)}


def kd_core_run(data, args, device, teacher=None, bank=None, loss="kl", model="wrn-16-2"):
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, loss=loss, tau=4.0,
                      device=str(device), teacher_bank="off", compile=args.compile)
    trainer = Trainer(init_model(model, data, 0), data, cfg, teacher=teacher, bank=bank)
    hist = list(trainer.epochs())
    return summarise([m.train_time for m in hist], [m.epoch_time for m in hist],
                     len(data.train_labels))


def forward_flops(model, data) -> float:
    """FLOPs of one forward pass of one image."""
    x = torch.zeros(1, *data.train_images.shape[1:])
    model = model.eval()
    with FlopCounterMode(display=False) as count, torch.no_grad():
        model(x)
    return float(count.get_total_flops())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2, help="per variant per round; first untimed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--compile", action="store_true", help="torch.compile kd_core's student")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    data = load_dataset("synthetic", n_train=args.n_train, n_test=args.n_test, num_classes=100)
    teacher = init_model("wrn-28-4", data, 1)
    flops_s = forward_flops(init_model("wrn-16-2", data, 0), data)
    flops_t = forward_flops(teacher, data)
    limit = (3 * flops_s + flops_t) / (3 * flops_s)
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "cpus": os.cpu_count(), "torch": torch.__version__, "n_train": args.n_train,
           "n_test": args.n_test, "batch_size": args.batch_size, "workers": args.workers,
           "compile": args.compile, "rounds": args.rounds, "compute_bound": limit}
    print(f"forward GFLOP/image: student {flops_s / 1e9:.3f}, teacher {flops_t / 1e9:.3f}; "
          f"compute bound on c/b per step: {limit:.2f}", flush=True)

    sync(device)
    t0 = time.perf_counter()
    bank = bank_for(teacher, data, device)
    sync(device)
    out["bank_build_s"] = time.perf_counter() - t0
    out["bank_gb"] = bank.logits.numel() * bank.logits.element_size() / 2**30
    print(f"bank: built in {out['bank_build_s']:.1f}s, {out['bank_gb']:.3f} GiB", flush=True)

    variants = {"b_online": lambda: kd_core_run(data, args, device, teacher=teacher),
                "c_bank": lambda: kd_core_run(data, args, device, bank=bank)}
    if not args.skip_reference:
        variants = {"a_reference": lambda: reference(data, teacher, args, device), **variants}
    runs = interleaved(variants, args.rounds)
    for name, rs in runs.items():
        out[name] = {k: [r[k] for r in rs] for k in ("train_images_per_s", "train_s", "epoch_s")}
        print(f"{name}: train s/epoch {fmt(out[name]['train_s'])}, epoch s "
              f"{fmt(out[name]['epoch_s'])}", flush=True)
    variants = bank = None  # the bank freed before the teacher is timed
    out["teacher_ce"] = kd_core_run(data, args, device, loss="ce", model="wrn-28-4")
    print("teacher CE epoch:", out["teacher_ce"], flush=True)

    ratios = {"c/b": ("c_bank", "b_online")}
    if "a_reference" in out:
        ratios |= {"c/a": ("c_bank", "a_reference"), "b/a": ("b_online", "a_reference")}
    for label, (num, den) in ratios.items():
        train = paired(out[den]["train_s"], out[num]["train_s"])  # speed-up: time ratio
        epoch = paired(out[den]["epoch_s"], out[num]["epoch_s"])
        out[label] = {"train": train, "epoch": epoch}
        print(f"{label}: training step {fmt(train, 2)}, epoch {fmt(epoch, 2)}")
        if label == "c/b" and (crossed := bound("c/b (training step)", train, limit)):
            print(crossed)
            out[label]["bound_crossed"] = True
        if label == "c/a" and max(train) > limit:  # (a) is slower than its arithmetic
            print(f"c/a is above the compute bound {limit:.2f}: (a) loses time outside its "
                  "arithmetic (its data pipeline; see b/a), so c/a is not the bank's gain; "
                  "c/b is")
    # The paper's main study: 3 teachers (one per seed) + 18 students (6 settings x 3 seeds),
    # 200 epochs each, scaled to 50k training images; banks built once per teacher.
    scale = 50000 / args.n_train
    bank_epoch = min_med(out["c_bank"]["epoch_s"])[1]
    hours = (3 * (200 * out["teacher_ce"]["epoch_s"] + out["bank_build_s"])
             + 18 * 200 * bank_epoch) * scale / 3600
    out["paper_study_device_hours"] = hours
    out["bank_epoch_s_at_50k"] = bank_epoch * scale
    print(f"KD epoch with the bank, scaled to 50k images: {bank_epoch * scale:.2f} s; "
          f"paper study: {hours:.1f} device-hours")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
