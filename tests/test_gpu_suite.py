"""The GPU suite (benchmarks/gpu_suite.py) runs end to end on a CPU (--smoke): issue 44 item
5's students per GPU and the paper grid's device-hours from them; and the device-hours are
the plan's work at the measured rates."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.schedule_sim import MODES, device_hours
from sweeps.domain.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "sweeps/configs/cifar100-paper.yaml"


def figures(model: str, one: float, fused_gain: float, packed_gain: float, k: int = 8,
            scale: float = 1.0, captured: float = 1.0) -> dict:
    """students_per_gpu.py's JSON, with the figures given (student-images/s)."""
    def v(x):
        return {"median": x * scale}

    return {"model": model, "teacher": "wrn-28-4", "k": k, "device": "test",
            "bank_build": {"views_per_s": 5e4 * scale},
            "variants": {"one": v(one), "one graphs": v(one), f"packed {k}": v(one * packed_gain),
                         f"fused {k}": v(one * fused_gain),
                         f"fused {k} graphs": v(one * fused_gain * captured),
                         "teacher": v(one / 4)}}


def test_device_hours_are_the_plans_work_at_the_measured_rates():
    spec = load_spec(PAPER)
    flat = device_hours(spec, [figures("wrn-16-2", 1e4, 1.0, 1.0),
                               figures("wrn-16-4", 4e3, 1.0, 1.0)])
    h = flat["device_hours"]
    # no gain from packing or fusing: every way costs what one trial per GPU does
    assert h["one"] > flat["bank_hours"] > 0
    for mode in MODES:
        assert h[mode] == pytest.approx(h["one"], rel=1e-9)
    # every rate twice as fast: half the hours, whichever way
    fast = device_hours(spec, [figures("wrn-16-2", 1e4, 1.0, 1.0, scale=2),
                               figures("wrn-16-4", 4e3, 1.0, 1.0, scale=2)])
    for mode in MODES:
        assert fast["device_hours"][mode] == pytest.approx(h[mode] / 2, rel=1e-9)
    # students 4x faster fused or packed: the students' share of the hours drops, the
    # teachers' and banks' stays; captured (1.5x fused here) below fused
    gain = device_hours(spec, [figures("wrn-16-2", 1e4, 4.0, 4.0, captured=1.5),
                               figures("wrn-16-4", 4e3, 4.0, 4.0, captured=1.5)])
    g = gain["device_hours"]
    assert g["fused captured"] < g["fused"] < g["one"] and g["packed"] < g["one"]
    assert g["packed"] > g["one"] / 4  # teachers and banks are not packed
    scaled = {s.split()[0] for s in gain["scaled_by_macs"]}  # not measured: modelled
    assert {"wrn-28-2", "wrn-40-2"} <= scaled
    assert not [s for s in gain["scaled_by_macs"] if s.startswith(("wrn-16-2", "wrn-16-4"))
                and "bank build" not in s]  # the measured students' own figures are used


@pytest.mark.slow
def test_the_suites_smoke_run_measures_students_and_the_grids_device_hours(tmp_path):
    """The suite's own plumbing on a CPU at toy sizes: one student check (every variant,
    packed workers included) and the device-hours computed from its JSON."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_suite.py"), "--smoke",
                          "--only", "students_wrn-16-2,device_hours", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    students = json.loads((tmp_path / "students_wrn-16-2.json").read_text())
    names = {"one", "one fp32", "one contiguous", "one graphs", "fused 2", "fused 2 fp32",
             "fused 2 contiguous", "fused 2 graphs", "packed 2", "teacher"}
    assert set(students["variants"]) == names
    for name, v in students["variants"].items():
        assert "error" not in v and v["median"] > 0, name
    assert students["variants"]["fused 2 graphs"]["step"] == "eager"  # no CUDA graphs on a CPU
    hours = json.loads((tmp_path / "device_hours.json").read_text())
    assert set(hours["device_hours"]) == set(MODES) and hours["trials"] > 0
    assert all(h > 0 for h in hours["device_hours"].values())
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "cnn-small fused 2, student-images/s" in table and "device-hours" in table
