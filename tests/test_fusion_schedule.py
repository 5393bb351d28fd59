"""Fused jobs in the scheduler (pure, stepped by hand): a group is the siblings ready together,
never waited for; each member ends on its own; resources.fuse and its rule (fusion.py)."""

import pytest

from sweeps.domain.fusion import group_limit, group_size, sibling_key, teachers_cap
from sweeps.domain.plan import build_plan
from sweeps.domain.scheduler import Job
from sweeps.domain.spec import SpecError, parse_spec
from tests.test_scheduler import scheduler, spec_of


def test_a_teachers_students_start_as_one_fused_job_and_end_one_by_one():
    s, plan, _ = scheduler(spec_of(taus=(1, 4, 20), chains=[["cnn-medium", "cnn-small"]]),
                           wants_bank=lambda n: False)
    teacher = s.next_job()
    s.start("t", teacher)
    assert s.with_siblings(teacher, 8) == teacher  # a teacher never fuses
    s.complete("t", done=True, value=0.9)
    job = s.with_siblings(s.next_job(), 2)  # three ready; at most two per job
    assert len(job.members) == 2 and len({sibling_key(t) for t in job.members}) == 1
    s.start("g", job)
    rest = s.with_siblings(s.next_job(), 2)  # the third, alone: nothing is held back for it
    assert len(rest.members) == 1 and rest.trial not in job.members
    s.start("r", rest)
    assert s.next_job() is None
    first, second = job.members
    s.member_ended(first.key, done=False, value=None)  # e.g. stopped early: it leaves
    assert first.key in s.values and second.key in s.running_keys
    s.complete("g", done=True, value=0.7)  # the job ends: its other member with it
    assert s.done >= {second.key} and first.key not in s.done
    s.complete("r", done=True, value=0.6)
    assert s.finished()


def test_siblings_share_teacher_seed_noise_and_architecture():
    s, plan, _ = scheduler(spec_of(taus=(1, 4)))
    students = [t for t in plan.trials if t.generation == 1]
    keys = {sibling_key(t) for t in students}
    assert len(keys) == len({(t.teacher_key, t.model) for t in students})
    assert all(sibling_key(t) is None for t in plan.trials if t.generation == 0)


def test_fuse_rule_and_spec_field():
    assert group_limit("off", "cnn-small", gpu=False) == 1
    assert group_limit(4, "wrn-16-2", gpu=False) == 4
    assert group_limit("auto", "cnn-small", gpu=False) == 1  # on CPUs: not measured to pay
    assert group_limit(9, "cnn-small", gpu=False) == 9
    assert group_limit("auto", "wrn-16-2", gpu=False) == 1  # WideResNets lose on CPUs
    assert group_limit("auto", "wrn-16-2", gpu=True) == 8
    assert group_limit("auto", "cnn-small", gpu=False, measured={2: 1.3, 4: 1.8, 8: 1.7}) == 4
    assert group_limit("auto", "cnn-small", gpu=False, measured={4: 1.02}) == 1
    # the smallest K within NEAR (95%) of the best: 4 at 1.68x against 7 at 1.71x
    assert group_limit("auto", "cnn-small", gpu=False, measured={2: 1.25, 4: 1.68, 7: 1.71}) == 4
    assert group_limit("auto", "wrn-16-2", gpu=True, measured={4: 2.63, 8: 4.45, 9: 3.82}) == 8
    # ready students over free slots: 7 and 2 free make 4 (then 3); a limit caps; one alone
    assert [group_size(7, 2, 9), group_size(3, 1, 9), group_size(7, 1, 4)] == [4, 3, 4]
    assert [group_size(7, 8, 9), group_size(1, 1, 9), group_size(7, 2, 1)] == [1, 1, 1]
    # banks of 2 GiB within a 4 GiB budget: 2 teachers per job; one always; none: no cap
    assert [teachers_cap(16 * 2**27, 4 * 2**30), teachers_cap(2**33, 2**30)] == [2, 1]
    assert teachers_cap(0, 2**30) > 1000
    spec = spec_of()
    assert spec.resources.fuse == "auto"
    raw = spec.model_dump(mode="json")
    for bad in ("sometimes", 0, True):
        with pytest.raises(SpecError, match="fuse"):
            parse_spec({**raw, "resources": {**raw["resources"], "fuse": bad}})
    assert parse_spec({**raw, "resources": {**raw["resources"], "fuse": 3}}).resources.fuse == 3


def test_the_searcher_hands_out_siblings_as_one_job_and_ends_each_member_on_its_report():
    """engine.DependencySearcher over the scheduler: a train job takes its ready siblings (up
    to fuse_limit); a member's report with its outcome ends that member at once (a done one's
    students may go); the job's end ends the members that said nothing, not done."""
    from sweeps.ray.engine import DependencySearcher, fuse_limit

    spec = spec_of(taus=(1, 4, 20), chains=[["cnn-medium", "cnn-small", "cnn-small"]])
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"fuse": 9})})
    s, plan, _ = scheduler(spec, wants_bank=lambda n: False)
    searcher = DependencySearcher(s, "test_acc", fuse_limit=fuse_limit(spec))
    assert "siblings" not in searcher.suggest("t")  # the teacher: a job of its own
    searcher.on_trial_complete("t", {"kdsweep": {"outcome": "done"}, "test_acc": 0.9})
    config = searcher.suggest("g")  # its three students, at once
    assert len(config["siblings"]) == 2
    first, second, third = s.running["g"].members
    searcher.on_trial_result("g", {"kdsweep/member": first.key, "kdsweep/outcome": "done",
                                   "test_acc": 0.7})  # flattened, as Tune hands it on
    searcher.on_trial_result("g", {"kdsweep": {"member": second.key, "outcome": "diverged"}})
    assert first.key in s.done and s.values[first.key] == 0.7
    assert second.key not in s.done and third.key in s.running_keys
    child = searcher.suggest("c")  # the first member's own student, while the job goes on
    assert Job.from_config(child).trial.teacher_key == first.key
    searcher.on_trial_complete("g", {"kdsweep": {"member": second.key}})
    assert third.key not in s.running_keys and third.key not in s.done  # said nothing

    def fuse(value):
        return spec.model_copy(update={"resources": spec.resources.model_copy(
            update={"fuse": value})})

    off, auto = fuse("off"), fuse("auto")
    asha = parse_spec({**spec.model_dump(mode="json"), "dataset": {"name": "digits",
                       "validation": 0.2}, "search": {"asha": {"grace_period": 1}}})
    for other in (off, auto):  # auto on a CPU without a measurement: no
        assert fuse_limit(other)(first) == 1
    assert fuse_limit(spec)(first) == 9
    assert fuse_limit(asha)(first) == 9  # under ASHA too: it ranks and stops each member


def _on(tmp_path, fuse="auto", **over):
    spec = spec_of(taus=(1, 4, 20), chains=[["cnn-medium", "cnn-small"]])
    raw = spec.model_dump(mode="json")
    return parse_spec({**raw, "storage": str(tmp_path / "store"),
                       "resources": {**raw["resources"], "fuse": fuse}, **over})


def _record(spec, ks: dict, model="cnn-small", kind="cpu", batch=None):
    """What `kdsweep plan --measure` records (store/measured.py), with given speedups."""
    from kd_core.profile import FusionProfile
    from sweeps.store.measured import entry, write_fusion
    from sweeps.store.storage import Storage

    profiles = [FusionProfile("cpu", k, 100.0, 100.0 * x, 2**28) for k, x in ks.items()]
    e = entry(model, kind == "gpu", "cpu", spec, 1, 10, 2, profiles)
    if batch is not None:
        e["batch_size"] = batch
    return write_fusion(Storage(spec.storage), spec, [e])


def test_fuse_auto_follows_the_recorded_measurement(tmp_path, caplog):
    """`plan --measure`'s record in the sweep's storage decides `fuse: auto`: fusion measured
    to pay fuses (at the best K), measured not to pay keeps one per job; a record for another
    batch size, or none, or a corrupt one: the rule (no fusion on a CPU), with one warning."""
    from sweeps.ray.engine import fuse_limit

    spec = _on(tmp_path)
    student = next(t for t in build_plan(spec).trials if t.generation == 1)
    teacher = next(t for t in build_plan(spec).trials if t.generation == 0)

    def limit(s):
        caplog.clear()
        with caplog.at_level("WARNING", logger="sweeps"):
            lim = fuse_limit(s)
            out = [lim(student), lim(student), lim(teacher)]
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) <= 1  # once per architecture, never for a teacher
        return out[0], warned

    k, warned = limit(spec)  # no record: the rule, and a line saying so
    assert k == 1 and "fuse: auto: no fusion measurement for cnn-small on cpu" in warned[0]
    assert "none (`kdsweep plan --measure` records one)" in warned[0]

    uri = _record(spec, {2: 1.3, 3: 1.7})  # pays: fuse the K that paid best
    assert uri.endswith("sweeps/sched/local/fusion.json")
    assert limit(spec) == (3, [])
    _record(spec, {2: 0.9, 3: 1.05})  # measured, does not pay (fusion.PAYS): one per job
    assert limit(spec) == (1, [])
    # fuse: off and a fixed K never read it
    assert limit(_on(tmp_path, "off")) == (1, []) and limit(_on(tmp_path, 2)) == (2, [])

    _record(spec, {3: 1.8}, batch=512)  # measured at another batch size: not this sweep's
    k, warned = limit(spec)
    assert k == 1 and "holds no cpu measurement of cnn-small at batch 128" in warned[0]

    path = tmp_path / "store/sweeps/sched/local/fusion.json"
    _record(spec, {3: 1.8})
    path.write_text(path.read_text().replace("1.8", "9.8"))  # a digit changed under the seal
    k, warned = limit(spec)
    assert k == 1 and "fusion.json: corrupt" in warned[0] and "fusing by the rule" in warned[0]
    path.write_text("{not json")
    k, warned = limit(spec)
    assert k == 1 and "corrupt (not valid JSON" in warned[0]

    gpu = _on(tmp_path, resources={"cpu": 1, "gpu": 1, "fuse": "auto"})  # the GPU rule: 8
    k, warned = limit(gpu)
    assert k == 8 and "on gpu" in warned[0]


def test_optuna_samples_of_one_teacher_fuse_as_siblings():
    """A sampled student's job takes its source's next samples as siblings, asked at once, up
    to the limit and the source's budget; each member is told its value as it ends."""
    from sweeps.domain.plan import make_trial
    from sweeps.domain.scheduler import Scheduler
    from tests.test_scheduler import Events, work

    spec = spec_of(chains=[["cnn-medium", "cnn-small"]])
    [teacher] = [t for t in build_plan(spec).trials if t.generation == 0]

    class Taus:  # optuna's face (sampling.py): asks from a list, records what it is told
        def __init__(self, taus):
            self.teacher, self.model, self.taus, self.told = teacher, "cnn-small", taus, []

        def left(self):
            return len(self.taus)

        def ask(self):
            return make_trial(spec, "cnn-small", teacher, loss="kl", tau=self.taus.pop(0),
                              alpha=1.0, noise_rate=teacher.noise_rate, seed=teacher.seed)

        def tell(self, key, value):
            self.told.append((key, value))

    src = Taus([1.0, 2.0, 4.0, 2.0, 8.0, 16.0])  # the second 2.0: a sample already in flight
    s = Scheduler(spec, [teacher], [teacher], done=(), banks=(), values={},
                  priority=work(spec), wants_bank=lambda n: False, listener=Events(),
                  sources=[src])
    s.start("t", s.next_job())
    s.complete("t", done=True, value=0.9)
    job = s.with_siblings(s.next_job(), 3)
    assert [t.tau for t in job.members] == [1.0, 2.0, 4.0]
    assert len({sibling_key(t) for t in job.members}) == 1
    s.start("g", job)
    rest = s.with_siblings(s.next_job(), 3)  # 2.0 again is told when it ends, not trained twice
    assert [t.tau for t in rest.members] == [8.0, 16.0] and src.left() == 0
    s.start("r", rest)
    assert s.next_job() is None
    for t, v in zip(job.members, (0.5, 0.6, 0.7), strict=True):
        s.member_ended(t.key, done=True, value=v)
    s.complete("g", done=True)
    s.complete("r", done=True, value=0.8)
    # each key told once (the source tells each of its asks of it: sampling.py)
    assert sorted(k for k, _ in src.told) == sorted(t.key for t in job.members + rest.members)
    told = dict(src.told)
    assert told[job.members[1].key] == 0.6 and told[rest.trial.key] == 0.8 and s.finished()


SEVEN = (0.5, 1, 2, 4, 8, 16, 20)  # seven settings per teacher, as the demo's


def test_ready_students_spread_over_the_free_slots_and_cousins_fuse():
    """Seven siblings ready and two free slots: 4 + 3, not 7 and an idle slot; one free slot:
    all ready (up to the limit). A group's generation-2 students (one per member, each under
    its own teacher: cousins) fuse as one job once ready, each reading its own teacher; the
    teachers one job reads are capped (max_teachers); one ready student is never held back."""
    from sweeps.domain.fusion import fusion_key

    spec = spec_of(taus=SEVEN, chains=[["cnn-large", "cnn-medium", "cnn-small"]])
    s, plan, _ = scheduler(spec, wants_bank=lambda n: False)
    s.start("t", s.next_job())
    s.complete("t", done=True, value=0.9)
    first = s.with_siblings(s.next_job(), 9, free=2)
    s.start("a", first)
    second = s.with_siblings(s.next_job(), 9, free=1)
    s.start("b", second)
    assert (len(first.members), len(second.members)) == (4, 3) and s.next_job() is None
    assert {t.teacher_key for t in first.members + second.members} == {plan.trials[0].key}
    for t in first.members:  # the first group's members end, one report each
        s.member_ended(t.key, done=True, value=0.8)
    s.complete("a", done=True)
    cousins = s.with_siblings(s.next_job(), 9, free=1)
    assert len(cousins.members) == 4 and all(t.model == "cnn-small" for t in cousins.members)
    assert {t.teacher_key for t in cousins.members} == {t.key for t in first.members}
    assert len({fusion_key(t) for t in cousins.members}) == 1
    assert len({sibling_key(t) for t in cousins.members}) == 4  # not siblings: cousins
    s.start("c", cousins)
    member = second.members[0]
    s.member_ended(member.key, done=True, value=0.8)  # one ready: a job of one, never held
    alone = s.with_siblings(s.next_job(), 9, free=2)
    assert alone.members == (next(t for t in plan.trials if t.teacher_key == member.key),)

    capped, plan, _ = scheduler(spec, wants_bank=lambda n: False)
    capped.max_teachers = 2  # Scheduler(max_teachers=): fusion.teachers_cap of the banks
    capped.start("t", capped.next_job())
    capped.complete("t", done=True, value=0.9)
    group = capped.with_siblings(capped.next_job(), 9)
    capped.start("g", group)
    for t in group.members:
        capped.member_ended(t.key, done=True, value=0.8)
    capped.complete("g", done=True)
    sizes = []
    while (job := capped.next_job()) is not None:
        job = capped.with_siblings(job, 9)
        assert len({t.teacher_key for t in job.members}) <= 2
        capped.start(f"j{len(sizes)}", job)
        sizes.append(len(job.members))
    assert sizes == [2, 2, 2, 1]


def test_the_searcher_groups_a_job_when_a_slot_frees():
    """engine.DependencySearcher with the cluster's slots known (a driver's own Ray): no job is
    handed out while every slot is busy, so a fused group's cousins, released one member's
    report at a time, are grouped together when its slot frees; the ready siblings spread
    over the free slots."""
    from sweeps.ray.engine import DependencySearcher

    spec = spec_of(taus=SEVEN, chains=[["cnn-large", "cnn-medium", "cnn-small"]])
    s, plan, _ = scheduler(spec, wants_bank=lambda n: False)
    searcher = DependencySearcher(s, "test_acc", fuse_limit=lambda trial: 9, slots=2)
    assert "siblings" not in searcher.suggest("t")
    assert searcher.suggest("x") is None  # a slot is free, nothing ready
    searcher.on_trial_complete("t", {"kdsweep": {"outcome": "done"}, "test_acc": 0.9})
    assert len(searcher.suggest("a")["siblings"]) == 3  # 4 of 7 (two slots free)
    assert len(searcher.suggest("b")["siblings"]) == 2  # the other 3
    for t in s.running["a"].members:
        searcher.on_trial_result("a", {"kdsweep": {"member": t.key, "outcome": "done"},
                                       "test_acc": 0.8})
        assert searcher.suggest("c") is None  # its cousin is ready, but both slots are busy
    searcher.on_trial_complete("a", {})
    job = Job.from_config(searcher.suggest("c"))
    assert len(job.members) == 4 and len({t.teacher_key for t in job.members}) == 4
    assert searcher.suggest("d") is None
