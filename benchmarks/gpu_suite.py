"""Every GPU check in one call, within 8 minutes on one H100-class GPU: one table of figure vs
target, and exit 1 when a check fails to run (a figure that misses its target is reported, not
an error: it is the finding). A plain call runs issue 44's item 5: correctness, then
student-images/s per GPU for WRN-16-2 and WRN-16-4 students of a WRN-28-4 bank (one trial,
packed K, fused K, fused with the step captured, bf16 and channels_last each off; the
fraction of the bf16 FLOP bound each reaches), then the paper grid's device-hours from those
figures (schedule_sim.py --students); ``--all`` adds the checks first run on 2026-12-04 (KD
epoch, bank gather, trial packing, the fusion probe), which do not all fit the deadline
beside them.

    PYTHONPATH=. python3 benchmarks/gpu_suite.py --out "$OUT"        # on the GPU machine
    PYTHONPATH=. .venv/bin/python benchmarks/gpu_suite.py --smoke    # plumbing, on a CPU

Each check runs in a process of its own (a CUDA context and allocator peak belong to one
check), under its own time limit and the suite's deadline; its log and JSON figures go to
--out. ``--smoke`` runs the same scripts at toy sizes on the CPU, to prove the suite runs
end to end where no GPU is; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEADLINE_S = 480  # the whole suite


@dataclass
class Check:
    name: str
    script: str
    cuda: list[str]  # arguments on the GPU ("{out}": --out; "{students}": the students' JSONs)
    smoke: list[str]  # arguments for a CPU smoke run
    limit_s: int
    gpu_only: bool = False  # a check that needs CUDA itself (skipped by --smoke)
    key: str = ""  # its log's and JSON's name (default: the script's)
    default: bool = True  # in a plain call; the others (measured 2026-12-04) with --all

    def __post_init__(self):
        self.key = self.key or Path(self.script).stem


# Issue 44 item 5's figures for one student architecture (students_per_gpu.py): K = 8 as
# fusion's GPU rule (sweeps/domain/fusion.py GPU_RULE), the step captured as CUDA graphs.
STUDENTS_SMOKE = ["--device", "cpu", "--teacher", "cnn-small", "--k", "2", "--batch-size",
                  "8", "--steps", "2", "--warmup", "1", "--image-size", "8", "--classes", "10",
                  "--rounds", "1", "--threads", "1"]

CHECKS = [
    Check("correctness and a trial's GPU memory", "gpu_check.py", [], [], 60, gpu_only=True),
    # each students check: a bank build (~415k teacher forwards), 2 rounds of 10 variants
    # (the packed one starts K processes each round), and two compilations (one, fused K)
    Check("students per GPU: wrn-16-2 from a wrn-28-4 bank", "students_per_gpu.py",
          ["--device", "cuda", "--model", "wrn-16-2", "--k", "8", "--rounds", "2"],
          ["--model", "cnn-small", *STUDENTS_SMOKE], 200, key="students_wrn-16-2"),
    Check("students per GPU: wrn-16-4 from a wrn-28-4 bank", "students_per_gpu.py",
          ["--device", "cuda", "--model", "wrn-16-4", "--k", "8", "--rounds", "2"],
          ["--model", "cnn-medium", *STUDENTS_SMOKE], 180, key="students_wrn-16-4"),
    Check("the paper grid's device-hours on one GPU, from the figures above", "schedule_sim.py",
          ["sweeps/configs/cifar100-paper.yaml", "--students", "{students}"],
          ["sweeps/configs/cifar100-paper.yaml", "--students", "{students}"], 30,
          key="device_hours"),
    Check("KD epoch: reference, online, bank", "kd_throughput.py",
          ["--device", "cuda", "--n-train", "5000", "--n-test", "2000", "--epochs", "2",
           "--rounds", "3", "--workers", "16"],
          ["--device", "cpu", "--n-train", "16", "--n-test", "16", "--epochs", "2",
           "--rounds", "2", "--batch-size", "8", "--workers", "0"], 200, default=False),
    Check("bank gather: host vs device-resident", "bank_gather.py",
          ["--device", "cuda", "--rounds", "5"], ["--images", "500", "--rounds", "2"], 60,
          default=False),
    Check("trial packing (plan --measure's figures)", "trial_memory.py",
          ["--device", "cuda", "--steps", "20", "--n-train", "10000", "--n-test", "2000"],
          ["--device", "cpu", "--steps", "2", "--n-train", "64", "--n-test", "32"], 120,
          default=False),
    Check("fused siblings vs separate vs packed", "fusion.py",
          ["--device", "cuda", "--model", "wrn-16-2", "--ks", "1,2,4,8,9", "--steps", "10",
           "--rounds", "3", "--packed", "--packed-ks", "4,9"],
          ["--device", "cpu", "--model", "cnn-small", "--ks", "1,2", "--steps", "2",
           "--rounds", "2", "--packed"], 150, default=False),
    Check("kd_core's fused group vs separate Trainers (a fused job's epoch)", "fused_epoch.py",
          ["--device", "cuda", "--dataset", "synthetic", "--models", "wrn-16-2", "--k", "8",
           "--n-train", "5000", "--batch-size", "128", "--rounds", "2"],
          ["--device", "cpu", "--dataset", "synthetic", "--models", "cnn-small", "--k", "2",
           "--n-train", "64", "--batch-size", "16", "--rounds", "1"], 90, default=False),
]


def arguments(check: Check, args, out: Path) -> list[str]:
    students = sorted(str(p) for p in out.glob("students_*.json"))
    argv = []
    for a in check.smoke if args.smoke else check.cuda:
        argv += students if a == "{students}" else [a.replace("{out}", str(out))]
    return argv


def run_check(check: Check, args, out: Path, left_s: float) -> dict:
    figures = out / f"{check.key}.json"
    cmd = [sys.executable, str(HERE / check.script), *arguments(check, args, out),
           "--json", str(figures)]
    limit = min(check.limit_s, left_s)
    t0 = time.perf_counter()
    with open(out / f"{check.key}.log", "w") as log:
        try:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit,
                                  cwd=HERE.parent,
                                  env={**os.environ, "PYTHONPATH": str(HERE.parent)}).returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {limit:.0f} s"
    seconds = time.perf_counter() - t0
    data = json.loads(figures.read_text()) if figures.exists() else {}
    return {"code": code, "seconds": seconds, "figures": data}


def rows_of(name: str, figures: dict) -> list[tuple[str, str, str]]:
    """(figure, value, target) rows of one check's JSON."""
    f, rows = figures, []
    if name == "gpu_check":
        rows += [("bank vs online teacher, max |diff| / max |logit|",
                  f"{f['bank_vs_online_rel']:.1e}", "< 2e-2 (bf16 both)"),
                 ("a bank student's GPU memory", f"{f['bank_student_gpu_gib']:.3f} GiB",
                  "< 0.15 GiB (no bank copy)"),
                 ("one wrn-16-2 trial's GPU footprint", f"{f['trial_gpu_gib']:.2f} GiB", "-")]
    elif name == "kd_throughput":
        rows += [("KD epoch with the bank, scaled to 50k images",
                  f"{f['bank_epoch_s_at_50k']:.2f} s", "<= 0.5 s")]
        for r in ("c/b", "c/a"):
            if r in f:
                med = sorted(f[r]["train"])[len(f[r]["train"]) // 2]
                rows.append((f"{r}, training step (median)", f"{med:.2f}",
                             f"<= {f['compute_bound']:.2f} (FLOP bound)" if r == "c/b"
                             else ">= 20"))
        rows.append(("paper study, device-hours", f"{f['paper_study_device_hours']:.1f}", "-"))
    elif name == "bank_gather":
        rows += [("host gather + copy, per epoch", f"{f['host']['median_ms']:.1f} ms",
                  "<< epoch time")]
        if "resident" in f:
            rows.append(("device-resident bank, per epoch",
                         f"{f['resident']['median_ms']:.1f} ms", f"{f['bank_gib']:.2f} GiB/trial"))
    elif name == "trial_memory":
        rows += [(f"footprint {shape}", f"{v['footprint_gib']:.2f} GiB", "-")
                 for shape, v in f["shapes"].items()]
    elif name == "fusion":
        for r in f["rows"]:
            med = {m: sorted(r[m])[len(r[m]) // 2] for m in ("separate", "fused", "packed")
                   if m in r}
            text = f"fused {med['fused'] / med['separate']:.2f}x separate"
            if "packed" in med:
                text += f", packed {med['packed'] / med['separate']:.2f}x"
            rows.append((f"K = {r['k']} student-steps/s", text, "> 1 decides for fusion"))
    elif name.startswith("students_"):
        base = f["variants"].get("one", {}).get("median")
        for n, v in f["variants"].items():
            if "median" not in v:
                rows.append((f"{f['model']} {n}, student-images/s",
                             f"failed: {v.get('error', 'not measured')}", "-"))
                continue
            ran = f" (ran {v['step']})" if v["step"] != "eager" or "graphs" in n else ""
            if "graphs" in n and v.get("graph_skips_so_far"):
                ran += f" ({v['graph_skips_so_far']} CUDA-graph skips: see the log)"
            vs = f", {v['median'] / base:.2f}x one" if base and n != "teacher" else ""
            frac = "" if v["flop_fraction"] is None else f", {v['flop_fraction']:.1%} of bf16 peak"
            target = (">= 4x one (issue 44)" if n.startswith(("fused", "packed"))
                      and f["model"] == "wrn-16-2" else "-")
            who = f["teacher"] if n == "teacher" else f["model"]
            rows.append((f"{who} {n}{ran}, student-images/s (median)",
                         f"{v['median']:.0f}{vs}{frac}", target))
        b = f["bank_build"]
        rows.append((f"{f['teacher']} bank build, views/s", f"{b['views_per_s']:.0f}", "-"))
    elif name == "device_hours":
        for mode, h in f["device_hours"].items():
            rows.append((f"paper grid ({f['trials']} trials), students {mode}, K = {f['k']}",
                         f"{h:.1f} device-hours, {f['vs_one'][mode]:.2f}x one",
                         "<= 0.25x one (issue 44)" if mode != "one" else "-"))
        if f["scaled_by_macs"]:
            rows.append(("architectures scaled by MACs (modelled)",
                         ", ".join(f["scaled_by_macs"]), "-"))
    elif name == "fused_epoch":
        rows += [(f"{r['model']} fused K = {r['k']}, student-epochs/s",
                  f"{r['ratio_median']:.2f}x separate", ">= 4x (issue 44, on a GPU)")
                 for r in f["rows"]]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-suite"))
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU")
    p.add_argument("--all", action="store_true",
                   help="also the checks measured on 2026-12-04 (past the deadline: not all fit)")
    p.add_argument("--only", default=None, help="comma-separated check keys (e.g. "
                   "students_wrn-16-2,device_hours)")
    args = p.parse_args()
    keys = {c.key for c in CHECKS}
    only = None if args.only is None else args.only.split(",")
    if only and (bad := sorted(set(only) - keys)):
        sys.exit(f"gpu_suite: --only: no check {', '.join(bad)} (checks: {', '.join(keys)})")
    chosen = [c for c in CHECKS if (c.key in only if only else c.default or args.all)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_suite: no CUDA device here (use --smoke for a CPU plumbing run)")
    start, failed, table = time.perf_counter(), [], []
    for check in chosen:
        if args.smoke and check.gpu_only:
            table.append((check.name, "skipped (needs CUDA)", "", ""))
            continue
        left = DEADLINE_S - (time.perf_counter() - start)
        r = run_check(check, args, out, left) if left > 5 else {"code": "no time left"}
        stem = check.key
        if r["code"] != 0:
            failed.append(check.name)
            table.append((check.name, f"FAILED ({r['code']}; see {stem}.log)", "", ""))
            if not r.get("figures", {}).get("variants"):
                continue
            table.append(("", "what it measured before it stopped:", "", ""))  # a partial JSON
        else:
            table.append((check.name, f"ran in {r['seconds']:.0f} s", "", ""))
        try:
            table += [("", *row) for row in rows_of(stem, r["figures"])]
        except (KeyError, TypeError, IndexError) as e:
            failed.append(check.name)
            table.append(("", f"FAILED: its figures lack {e}", "", ""))
    lines = ["| check | figure | value | target |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in table]
    lines.append(f"\ntotal {time.perf_counter() - start:.0f} s (deadline {DEADLINE_S} s)")
    text = "\n".join(lines)
    print(text)
    (out / "gpu_suite.md").write_text(text + "\n")
    if failed:
        sys.exit(f"gpu_suite: {len(failed)} check(s) failed to run: {', '.join(failed)}")


if __name__ == "__main__":
    main()
