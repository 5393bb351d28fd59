"""KD throughput: the paper's reference loop vs kd_core (online teacher) vs kd_core (bank).

The pair is WRN-28-4 -> WRN-16-2 on synthetic CIFAR-100-shaped data, all three measured in one
run on one machine:
  (a) reference: the official code's shape: torch DataLoader with per-sample torchvision
      transforms (RandomCrop 32 pad 4, flip, ToTensor, Normalize), fp32, the teacher run on
      every step, loss.item() per step, full evaluation of the train and test sets per epoch;
  (b) kd_core's Trainer with the online teacher;
  (c) kd_core's Trainer reading a teacher-logit bank (its build time reported apart).
It also times a CE epoch of the teacher, for the GPU-hours estimate of the paper's study.

    python benchmarks/kd_throughput.py --device cpu --n-train 256 --n-test 256 --epochs 3
    python benchmarks/kd_throughput.py --device cuda --n-train 50000 --n-test 10000 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
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
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "cpus": os.cpu_count(), "torch": torch.__version__, "n_train": args.n_train,
           "n_test": args.n_test, "batch_size": args.batch_size, "workers": args.workers,
           "compile": args.compile}

    if not args.skip_reference:
        out["a_reference"] = reference(data, teacher, args, device)
        print("a reference:", out["a_reference"], flush=True)
    out["b_online"] = kd_core_run(data, args, device, teacher=teacher)
    print("b kd_core online:", out["b_online"], flush=True)
    sync(device)
    t0 = time.perf_counter()
    bank = bank_for(teacher, data, device)
    sync(device)
    out["bank_build_s"] = time.perf_counter() - t0
    out["bank_gb"] = bank.logits.numel() * bank.logits.element_size() / 2**30
    print(f"bank: built in {out['bank_build_s']:.1f}s, {out['bank_gb']:.3f} GiB", flush=True)
    out["c_bank"] = kd_core_run(data, args, device, bank=bank)
    print("c kd_core bank:", out["c_bank"], flush=True)
    del bank
    out["teacher_ce"] = kd_core_run(data, args, device, loss="ce", model="wrn-28-4")
    print("teacher CE epoch:", out["teacher_ce"], flush=True)

    if "a_reference" in out:
        a = out["a_reference"]
        for k in ("b_online", "c_bank"):
            out[f"{k[0]}/a_train"] = out[k]["train_images_per_s"] / a["train_images_per_s"]
            out[f"{k[0]}/a_epoch"] = a["epoch_s"] / out[k]["epoch_s"]
    # The paper's main study: 3 teachers (one per seed) + 18 students (6 settings x 3 seeds),
    # 200 epochs each, scaled to 50k training images; banks built once per teacher.
    scale = 50000 / args.n_train
    hours = (3 * (200 * out["teacher_ce"]["epoch_s"] + out["bank_build_s"])
             + 18 * 200 * out["c_bank"]["epoch_s"]) * scale / 3600
    out["paper_study_device_hours"] = hours
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
