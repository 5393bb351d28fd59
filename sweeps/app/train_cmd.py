"""`kdsweep train`: one trial on this machine, no Ray, no MLflow; the sweep's epoch loop
(kd_core.loop.fit), so a rerun of the same command resumes from --out's checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..domain.record import TrialState


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one teacher or student locally (no Ray)")
    p.add_argument("--dataset", default="digits", help="digits | cifar10 | cifar100 | synthetic")
    p.add_argument("--data-root", default=None, help="folder holding the CIFAR python archives")
    p.add_argument("--download", action="store_true", help="download CIFAR into --data-root")
    p.add_argument("--model", required=True, help="e.g. cnn-small, wrn-16-2, resnet-20")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (from an earlier train)")
    p.add_argument("--loss", default=None, help="ce | kl | mse | a plugin's (default: kl with a "
                   "teacher)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="a .py file or module registering losses, models or datasets "
                        "(repeatable)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a plugin loss's param beyond tau and alpha (repeatable)")
    p.add_argument("--tau", type=float, default=4.0, help="KL temperature; 'inf' for the limit")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--noise-kind", default="symmetric", help="symmetric | asymmetric")
    p.add_argument("--noise-rate", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-augment", action="store_true", help="turn off crop/flip")
    p.add_argument("--out", required=True,
                   help="output folder: checkpoint.pt (the same command resumes from it), "
                        "metrics.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `kdsweep --help` and light commands never load torch.
    from tqdm import tqdm

    from kd_core.checkpoint import CheckpointError, load_checkpoint
    from kd_core.config import TrainConfig
    from kd_core.data import Augment
    from kd_core.loop import CheckpointFile, fit
    from kd_core.registry import load_plugin
    from kd_core.run import RunSpec, build_trainer
    from kd_core.train import load_model

    for ref in args.plugin:
        load_plugin(ref)  # PluginError (a ValueError): one line naming it
    params = []
    for item in args.param:
        name, _, value = item.partition("=")
        try:
            params.append((name.strip(), float(value)))
        except ValueError:
            raise ValueError(f"--param {item}: NAME=NUMBER") from None
    loss = args.loss or ("kl" if args.teacher else "ce")
    cfg = TrainConfig(
        loss_params=tuple(params),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=loss,
        tau=args.tau,
        alpha=args.alpha,
        seed=args.seed,
        device=args.device,
    )
    run = RunSpec(
        dataset=args.dataset,
        model=args.model,
        train=cfg,
        data_root=args.data_root,
        download=args.download,
        noise_kind=args.noise_kind,
        noise_rate=args.noise_rate,
        augment=Augment() if args.no_augment else None,
    )
    teacher = None
    if args.teacher:
        try:
            teacher = load_model(args.teacher)
        except CheckpointError as e:  # missing, truncated, not ours: one line, exit 2
            raise ValueError(f"--teacher: {e}") from None
    trainer, noisy = build_trainer(run, teacher)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():  # the same command again continues where it stopped
        try:
            trainer.load_state_dict(load_checkpoint(checkpoint))
        except CheckpointError as e:
            raise ValueError(f"--out: {e}; delete it to start again") from None

    def publish(outcome) -> dict:
        summary = {
            "model": args.model,
            "loss": loss,
            "tau": args.tau,
            "alpha": args.alpha,
            "noise_kind": args.noise_kind,
            "noise_rate": args.noise_rate,
            "realised_noise_rate": noisy.realised_rate,
            "labels_hash": noisy.labels_hash,
            "state": outcome.state,
            "reason": outcome.reason,
            "epochs": trainer.history,
        }
        (out / "metrics.json").write_text(json.dumps(summary, indent=1))
        return {"state": outcome.state, "reason": outcome.reason}

    left = cfg.epochs - trainer.epoch
    bar = tqdm(fit(trainer, CheckpointFile(checkpoint), publish=publish), total=left,
               desc=f"{args.model} {loss}", unit="epoch")
    outcome = {"state": TrialState.DONE, "reason": None}
    for m, published in bar:
        bar.set_postfix(loss=f"{m.train_loss:.3f}", test_acc=f"{m.test_acc:.4f}")
        outcome |= published
    if not trainer.history:
        raise ValueError(f"--out: {checkpoint} holds no epoch")
    last = trainer.history[-1]
    extra = (
        f" logit_dist={last['test_logit_distance']:.3f}" if "test_logit_distance" in last else ""
    )
    what = f"{loss} tau={args.tau:g}" if loss == "kl" else loss
    ended = "" if outcome["state"] == TrialState.DONE else f" DIVERGED ({outcome['reason']})"
    print(
        f"{args.model} {what} noise={args.noise_rate:g}: "
        f"test_acc={last['test_acc']:.4f} train_acc_clean={last['train_acc_clean']:.4f}{extra} "
        f"-> {checkpoint}{ended}"
    )
    return 0 if outcome["state"] == TrialState.DONE else 1
