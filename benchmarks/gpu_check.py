"""GPU correctness smoke check for kd_core (run on a CUDA machine; CI has none).

Trains a digits teacher and students on CUDA (bf16 autocast, channels_last, fused SGD), with
the bank and with the online teacher, compares bank lookups with the online teacher on
CIFAR-shaped data, checks that a student of a bank holds no copy of it on the GPU, and
measures one trial's GPU footprint. Prints one line per check.
    PYTHONPATH=. python3 benchmarks/gpu_check.py [--json FIGURES.json]
"""

import json
import math
import sys

import torch

from kd_core import TrainConfig
from kd_core.bank import TeacherBank, bank_for
from kd_core.data import draw_views, load_dataset, render_views
from kd_core.profile import GiB, profile_run
from kd_core.run import RunSpec
from kd_core.train import Trainer, init_model


def main():
    assert torch.cuda.is_available(), "needs a CUDA device"
    figures = {}
    digits = load_dataset("digits")
    base = dict(epochs=15, batch_size=64, lr=0.05, device="cuda")
    teacher = Trainer(init_model("cnn-large", digits, 0), digits, TrainConfig(**base))
    t_acc = [m.test_acc for m in teacher.epochs()][-1]
    print(f"digits teacher cnn-large on cuda: test_acc={t_acc:.4f}")
    figures["digits_teacher_acc"] = t_acc
    for loss, tau, bank in (("kl", 4.0, "on"), ("kl", 4.0, "off"), ("kl", math.inf, "on"),
                            ("mse", 1.0, "on")):
        cfg = TrainConfig(**base, loss=loss, tau=tau, teacher_bank=bank)
        s = Trainer(init_model("cnn-small", digits, 0), digits, cfg, teacher=teacher.model)
        m = list(s.epochs())[-1]
        print(f"student cnn-small {loss} tau={tau} source={s.logit_source}: "
              f"test_acc={m.test_acc:.4f} agreement={m.test_agreement:.4f}")
        figures[f"student_{loss}_{tau:g}_{s.logit_source}_acc"] = m.test_acc

    data = load_dataset("synthetic", n_train=512, n_test=64, num_classes=100)
    t = init_model("wrn-16-4", data, 0).cuda().eval()
    bank = bank_for(t, data, "cuda", torch.float32)
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = torch.randint(0, 512, (256,), device="cuda", generator=g)
    views = draw_views(data.augment, 256, g, "cuda")
    tr = Trainer(init_model("wrn-16-2", data, 0), data, TrainConfig(epochs=1, device="cuda"))
    x = tr.prepare(render_views(tr.x_train[idx], views, data.augment))
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        online = t(x).float()
    err = (bank.epoch(idx, views, "cuda").float() - online).abs().max().item()
    scale = online.abs().max().item()
    print(f"bank vs online teacher (bf16 both, 162 views): max abs diff {err:.2e} "
          f"of max |logit| {scale:.2f}")
    figures["bank_vs_online_rel"] = err / scale

    # A bank stays in host memory: a student's GPU holds one epoch's rows, not the bank.
    assert bank.logits.device.type == "cpu"
    big = TeacherBank(torch.zeros(20_000, 162, 100, dtype=torch.float16), bank.test_logits,
                      data.augment)  # 0.6 GiB
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    cfg = TrainConfig(epochs=1, loss="kl", tau=4.0, device="cuda", batch_size=128)
    s = Trainer(init_model("wrn-16-2", data, 0), data, cfg, bank=big)
    s._train_epoch(2).tolist()
    held = torch.cuda.memory_allocated() - before
    assert held < big.logits.numel() * 2 / 4, held
    print(f"student of a {big.logits.numel() * 2 / GiB:.2f} GiB bank holds {held / GiB:.3f} "
          "GiB on the GPU (no bank copy)")
    figures["bank_student_gpu_gib"] = held / GiB

    # What `kdsweep plan --measure` reads on a GPU: allocator peak plus the CUDA context.
    cfg = TrainConfig(epochs=1, loss="kl", tau=4.0, device="cuda")
    p = profile_run(RunSpec("synthetic", "wrn-16-2", cfg), "wrn-28-4", "shared", 5, data)
    assert p.peak > 0 and p.context > 0 and p.logit_source == "shared", p
    print(f"profile wrn-16-2 from a wrn-28-4 bank: peak {p.peak / GiB:.2f} GiB, "
          f"context {p.context / GiB:.2f} GiB, step {p.step_seconds * 1e3:.1f} ms on {p.device}")
    figures["trial_gpu_gib"] = (p.peak + p.context) / GiB
    if len(sys.argv) > 2 and sys.argv[1] == "--json":
        with open(sys.argv[2], "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
