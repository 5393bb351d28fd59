"""Progress stepped by hand: counts kept per event equal the counts recomputed from every
state, the ETA's rate is this run's, and lines come at most once per interval."""

import io
from collections import Counter

from sweeps.app.progress import Progress
from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.store.ledger import TrialState


def plan():
    return build_plan(parse_spec({
        "name": "p", "dataset": {"name": "digits"}, "chains": [["cnn-small", "cnn-small"]],
        "grid": {"loss": ["kl", "mse"], "tau": [1, 4], "seeds": [0, 1], "baselines": False},
    }))


def test_counts_kept_per_event_match_a_recount():
    p = plan()
    keys = [t.key for t in p.trials]
    before = {keys[0]: TrialState.DONE}  # ended before this run
    progress = Progress(p, lambda k: before.get(k, TrialState.PENDING), io.StringIO(),
                        every=0.0)
    steps = [(keys[1], TrialState.RUNNING), (keys[1], TrialState.DONE),
             (keys[2], TrialState.RUNNING), (keys[2], TrialState.DIVERGED),
             (keys[0], TrialState.PENDING), (keys[0], TrialState.DONE),  # reset, done again
             (keys[3], TrialState.SKIPPED)]
    for key, state in steps:
        progress.set(key, state)
        for g in {t.generation for t in p.trials}:
            recount = Counter(s for k, s in progress.state.items()
                              if progress.generation[k] == g)
            assert +progress.counts(g) == +recount
    assert progress.left == sum(not s.ended for s in progress.state.values())
    assert progress.ended_now == 3  # keys 1, 2, 3: key 0 ended before this run


def test_lines_come_at_most_once_per_interval_and_flush_prints_the_rest():
    p = plan()
    out = io.StringIO()
    progress = Progress(p, lambda k: TrialState.PENDING, out, every=3600.0)
    for t in p.trials:
        progress.set(t.key, TrialState.RUNNING)
    assert len(out.getvalue().splitlines()) == 1  # the first event's line only
    progress.flush()  # every generation changed since: one line each
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 2 and "generation 1: 0 done, 6 running" in lines[-1]
