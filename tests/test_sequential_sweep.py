"""A study that adds seeds until each claim is decided (grid.add_seeds), end to end on a real
local Ray and a real MLflow SQLite store: the repository's sweeps/configs/digits-sequential.yaml,
its storage and MLflow store moved into the test's folder."""

import io
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sweeps.app.sweep import run_sweep
from sweeps.domain.looks import in_strand, look_trials
from sweeps.domain.plan import build_plan
from sweeps.domain.record import TrialState
from sweeps.domain.spec import parse_spec
from sweeps.report.claims import claims
from sweeps.report.export import export
from sweeps.report.load import load
from sweeps.report.page import summary
from sweeps.report.sequential import (
    FUTILE,
    SPENT,
    needed,
    next_look,
    replay,
    sequential_sections,
)
from sweeps.store.ledger import trial_file
from sweeps.store.storage import Storage

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "digits-sequential.yaml"


def test_a_sequential_study_adds_seeds_to_undecided_claims_only_and_reruns_alike(
        local_ray, tmp_path):
    data = yaml.safe_load(SPEC.read_text())
    data.update(storage=str(tmp_path / "store"), tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}")
    spec = parse_spec(data, str(SPEC))
    looks = spec.grid.look_seeds()
    assert len(looks) > 1

    first = io.StringIO()
    uri = run_sweep(spec, out=first, judge=next_look)
    rows, _ = load([uri])
    done = rows[rows.state == TrialState.DONE]
    assert set(done.seed) >= set(spec.grid.seeds)
    # the spec is chosen so that on digits a claim is still undecided after the first look
    # (C5, at two epochs): a second look ran, for its undecided claims' strands only
    assert set(done.seed) - set(spec.grid.seeds), first.getvalue()[-2000:]

    # replayed from the stored results alone: what each look decided, and what it added
    decisions = replay(done, spec, lambda d: claims(d, spec.report.similar_margin))
    assert {d.claim for d in decisions} == {f"C{i}" for i in range(1, 7)}
    for k in range(2, len(looks) + 1):
        seen = done[done.seed.isin([s for look in looks[:k - 1] for s in look])]
        before = replay(seen, spec, lambda d: claims(d, spec.report.similar_margin))
        wanted = needed(before, spec)
        added = done[done.seed.isin(looks[k - 1])]
        planned = look_trials(spec, looks[k - 1], wanted)
        # exactly the trials of the undecided claims' strands, with the keys they would have
        # had in grid.seeds
        assert set(added.key) == {t.key for t in planned}
        full = build_plan(spec.model_copy(update={"grid": spec.grid.model_copy(
            update={"seeds": looks[k - 1], "add_seeds": None})}))
        assert {t.key for t in planned} <= {t.key for t in full.trials}
        assert all(any(in_strand(t, lin) for lin in wanted) for t in planned)
        if not wanted:
            assert added.empty
    for d in decisions:  # each claim decided at a look, or the budget ran out (or untestable)
        assert d.code in (1, -1, FUTILE, SPENT) or d.untestable, d
        assert 1 <= d.look <= len(looks)

    # a rerun trains nothing and decides the same, look by look (stored results only)
    storage = Storage(spec.storage)
    finished = {k: storage.read_json(trial_file(k, "result.json"))["finished_at"]
                for k in done.key}
    again = io.StringIO()
    run_sweep(spec, out=again, judge=next_look)
    said = [line for line in first.getvalue().splitlines() if re.match(r"look \d+:", line)]
    assert said
    assert said == [line for line in again.getvalue().splitlines()
                    if re.match(r"look \d+:", line)]
    assert finished == {k: storage.read_json(trial_file(k, "result.json"))["finished_at"]
                        for k in done.key}

    # the report says per claim where it was decided (its claims' sections and the claims
    # table, as `kdsweep report SPEC` makes them; the figures are the report's own tests'),
    # and its claims CSV carries the columns
    sections = sequential_sections(done, spec, lambda d: claims(d, spec.report.similar_margin))
    text = summary(sections).text()
    files = export([summary(sections)], tmp_path / "report")
    table = pd.read_csv(next(f for f in files if f.suffix == ".csv"))
    assert {"seeds", "decided_at_look", "boundary (nominal p)", "alpha spent"} <= set(
        table.column)
    for d in decisions:
        line = next(x for x in text.splitlines() if x.startswith(d.claim + " "))
        assert ("decided at look" in line or "the budget ran out" in line
                or "futile at look" in line or "an arm is missing" in line), line
