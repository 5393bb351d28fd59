"""Trial packing: shapes of a plan, the fractions suggested from measured peaks, and the
`kdsweep plan --measure` command on a real local Ray."""

import math
from collections import Counter

import pytest
import yaml

from kd_core.data import load_dataset
from kd_core.profile import GiB, MemoryProfile
from sweeps.domain.plan import build_plan
from sweeps.domain.scheduler import Job
from sweeps.domain.spec import parse_spec
from sweeps.ray.engine import job_resources
from sweeps.ray.packing import Shape, plan_shapes, suggest

CHAINS = [["cnn-large", "cnn-small"], ["cnn-large", "cnn-medium", "cnn-small"]]


def make_spec(**over):
    return parse_spec({
        "name": "pack",
        "dataset": {"name": "digits"},
        "chains": CHAINS,
        "train": {"epochs": 30},
        "grid": {"loss": ["kl", "mse"], "tau": [1, 4], "noise": {"rate": [0.0, 0.4]},
                 "seeds": [0, 1]},
        **over,
    })


def test_plan_shapes_cover_every_trial_with_its_logit_source():
    data = load_dataset("digits")
    spec = make_spec()
    counts = plan_shapes(spec, build_plan(spec), data)
    assert sum(counts.values()) == len(build_plan(spec).trials) == 48
    # digits has one view per image: a bank always pays; the generation-0 teachers' students
    # share one, each generation-1 teacher's single student builds its own
    assert counts == Counter({
        Shape("cnn-large"): 4, Shape("cnn-small"): 4, Shape("cnn-medium"): 4,
        Shape("cnn-small", "cnn-large", "shared"): 12,
        Shape("cnn-medium", "cnn-large", "shared"): 12,
        Shape("cnn-small", "cnn-medium", "private"): 12,
    })
    off = make_spec(train={"epochs": 30, "teacher_bank": "off"})
    shapes = plan_shapes(off, build_plan(off), data)
    assert {s.logit_source for s in shapes if s.teacher} == {"online"}
    opt = make_spec(search={"type": "optuna", "num_samples": 5},
                    dataset={"name": "digits", "validation": 0.1})
    counts = plan_shapes(opt, build_plan(opt), data)
    # up to 5 samples per teacher (2 noise rates x 2 seeds) on each teacher -> student edge
    assert counts[Shape("cnn-medium", "cnn-large", "shared")] == 20
    assert counts[Shape("cnn-small", "cnn-medium", "shared")] == 20


def _gpu(footprint_gib: float, total_gib: float = 80.0, host_gib: float = 3.0) -> MemoryProfile:
    ctx = 0.5 * GiB
    return MemoryProfile("NVIDIA H100", int(total_gib * GiB), int(footprint_gib * GiB - ctx),
                         int(ctx), int(host_gib * GiB), 0.01, 0.1, 391, None)


def test_suggested_fractions_fit_any_mix_in_one_gpu():
    measured = {
        Shape("wrn-16-2"): _gpu(2.0),
        Shape("wrn-16-2", "wrn-28-4", "shared"): _gpu(10.0),  # the largest shape of a model counts
        Shape("wrn-28-4"): _gpu(20.0, host_gib=5.0),
        Shape("wrn-16-4", "wrn-28-4", "online"): _gpu(3.0),
        Shape("wrn-28-10"): _gpu(90.0),
    }
    s = suggest(measured, headroom=0.1, max_per_gpu=8)
    usable = 80 * 0.9
    assert s.models["wrn-16-2"]["gpu"] == pytest.approx(1 / 7, abs=1e-4)  # 72 // 10 = 7
    assert s.models["wrn-28-4"]["gpu"] == pytest.approx(1 / 3, abs=1e-4)
    assert s.models["wrn-16-4"]["gpu"] == 0.125  # 24 would fit; capped at 8 per GPU
    assert s.models["wrn-28-10"]["gpu"] == 1.0 and "wrn-28-10" in s.warnings[0]
    worst = {"wrn-16-2": 10.0, "wrn-28-4": 20.0, "wrn-16-4": 3.0}
    for model, gib in worst.items():
        frac = s.models[model]["gpu"]
        # any set of trials whose fractions sum to <= 1 fits: each holds <= its share
        assert frac * usable >= gib * (1 - 1e-3) and round(1 / frac) * frac <= 1
    assert s.models["wrn-28-4"]["memory_gb"] == pytest.approx(5.5, abs=0.01)
    assert s.models["wrn-16-2"]["memory_gb"] == pytest.approx(3.3, abs=0.01)


def test_trial_resources_follow_the_architecture():
    spec = make_spec(resources={"cpu": 2, "gpu": 0.25, "memory_gb": 1,
                                "models": {"cnn-small": {"gpu": 0.125, "memory_gb": 0.5}}})
    request = job_resources(spec.resources)
    plan = build_plan(spec)
    small = next(t for t in plan.trials if t.model == "cnn-small")
    large = next(t for t in plan.trials if t.model == "cnn-large")
    assert request(Job("train", small).config()).required_resources == {
        "CPU": 2, "GPU": 0.125, "memory": 2**29}
    assert request(Job("train", large).config()).required_resources == {
        "CPU": 2, "GPU": 0.25, "memory": 2**30}
    # a bank build holds the teacher, its batches of views and the bank: a whole GPU
    assert request(Job("bank", large).config()).required_resources == {
        "CPU": 2, "GPU": 1, "memory": 2**30}


@pytest.mark.slow
def test_plan_measure_prints_a_packing_that_the_spec_accepts(tmp_path, local_ray,
                                                             kdsweep_here):
    raw = {"name": "measure", "dataset": {"name": "digits"},
           "chains": [["cnn-medium", "cnn-small"]], "train": {"epochs": 5},
           "grid": {"loss": ["kl"], "tau": [4], "seeds": [0]},
           "storage": str(tmp_path / "store")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    # in this process, on its local Ray: the measurements run in Ray's worker processes
    code, text, err = kdsweep_here("plan", path, "--measure", "--steps", "2")
    assert code == 0, err
    rows = {line.split("  ")[0].strip() + " " + line[13:39].strip()
            for line in text.splitlines() if line.startswith("cnn-")}
    assert rows == {"cnn-medium on labels", "cnn-small on labels",
                    "cnn-small from cnn-medium (private)"}
    assert "estimated compute:" in text and "no GPU here" in text
    suggested = yaml.safe_load(text.split("suggested resources (paste into the spec):\n")[1])
    models = suggested["resources"]["models"]
    assert set(models) == {"cnn-medium", "cnn-small"}
    for r in models.values():  # a torch worker's measured peak RSS, plus headroom
        assert 0.2 < r["memory_gb"] < 8 and "gpu" not in r
    spec = parse_spec({**raw, **suggested})
    assert spec.resources.for_model("cnn-small")["memory"] > 0.2 * GiB
    assert not (tmp_path / "store").exists()  # planning writes nothing


@pytest.mark.slow
def test_plan_measure_records_fusion_where_fuse_auto_reads_it(tmp_path, local_ray, kdsweep_here):
    """Siblings in the plan: `plan --measure` times them fused against one at a time and
    records it in the sweep's storage (store/measured.py); `fuse: auto` then decides by it."""
    from sweeps.domain.fusion import PAYS, group_limit
    from sweeps.domain.plan import build_plan
    from sweeps.ray.engine import fuse_limit
    from sweeps.store.measured import read_fusion
    from sweeps.store.storage import Storage

    raw = {"name": "fusion", "dataset": {"name": "digits"},
           "chains": [["cnn-medium", "cnn-small"]], "train": {"epochs": 5, "batch_size": 64},
           "grid": {"loss": ["kl", "mse"], "tau": [4, 20], "seeds": [0], "baselines": False},
           "resources": {"cpu": 1}, "storage": str(tmp_path / "store")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, text, err = kdsweep_here("plan", path, "--measure", "--steps", "3")
    assert code == 0, err
    spec = parse_spec(raw)
    measured, problem = read_fusion(Storage(spec.storage), spec)
    assert problem == "" and set(measured) == {("cnn-small", "cpu")}
    speedups = measured[("cnn-small", "cpu")]
    assert set(speedups) == {2, 3}  # K = 2, and the 3 siblings of each teacher
    # measured speedups: timings of 3 steps, any positive figure on a busy machine (their
    # bound, fused <= K, is benchmarks/fusion.py's check on a quiet one, not a test's)
    assert all(math.isfinite(x) and x > 0 for x in speedups.values())
    assert "fusion measurements recorded in" in text and "fuse: auto -> cnn-small" in text
    student = next(t for t in build_plan(spec).trials if t.generation == 1)
    # what auto takes is the rule applied to the record read from storage (the rule itself:
    # test_fusion_schedule.py); a record that says no gain keeps one student per job
    k = fuse_limit(spec)(student)
    assert k == group_limit("auto", "cnn-small", False, measured=speedups)
    assert (k == 1) == (max(speedups.values()) < PAYS)
