"""Spec -> plan: the de-duplicated, content-addressed trials of a sweep, grouped by generation.

A trial's key hashes everything that determines its result, its teacher's key included, so the
key of a student covers its whole lineage. A teacher depends only on (dataset, architecture,
recipe, noise, seed): one teacher serves every tau/loss student and every chain that starts
with it, and a trial finished by any earlier sweep is found again by its key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from kd_core import registry

from .spec import GridSpec, SweepSpec
from .spec.sections import NOT_RECIPE

KEY_VERSION = 2  # bump when the trainer or a model changes what a given config produces


@dataclass(frozen=True)
class Trial:
    key: str
    generation: int  # 0: trained on the labels (teacher or baseline); g: distilled from g-1
    model: str
    lineage: tuple[str, ...]  # architectures from the generation-0 teacher down to this model
    loss: str  # "ce" for generation 0
    tau: float | None  # kl only
    alpha: float | None  # students only
    noise_kind: str
    noise_rate: float
    seed: int
    teacher_key: str | None
    # a loss's params beyond tau and alpha (a plugin's: grid.params), sorted (name, value) pairs
    params: tuple[tuple[str, float], ...] = ()
    # the plugins whose code it used (loss, model, dataset, its teacher's): name -> digest
    plugins: tuple[tuple[str, str], ...] = ()

    @property
    def chain(self) -> str:
        return ">".join(self.lineage)

    @property
    def setting(self) -> str:
        return setting_name(self.generation, self.loss, self.tau, self.alpha, self.params)

    @property
    def student(self) -> str:
        return student_name(self.generation, self.chain)

    @property
    def run_name(self) -> str:
        """What varies first (the MLflow UI cuts names): setting, noise, seed, then the model;
        the lineage is in the `student` param."""
        what = f"{self.setting} noise={self.noise_rate:g} s{self.seed}"
        return f"{what} g{self.generation} {self.model}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lineage"] = list(self.lineage)
        d["tau"] = _json_float(self.tau)
        for name in ("params", "plugins"):  # absent where empty: the records from before
            if d[name]:
                d[name] = {k: v for k, v in d[name]}
            else:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Trial:
        tau = d["tau"]
        pairs = {k: tuple(sorted((d.get(k) or {}).items())) for k in ("params", "plugins")}
        return cls(
            **{**d, "lineage": tuple(d["lineage"]), "tau": None if tau is None else float(tau),
               **pairs}
        )


def setting_name(generation: int, loss: str, tau: float | None, alpha: float | None,
                 params=()) -> str:
    """What a student was trained with, one word for report rows, MLflow's `setting` param and
    run names: "alone (ce)" (generation 0), "mse", "kl tau=4", "kl tau=inf a=0.5", a plugin's
    loss with its params: "dkd tau=4 beta=8". ``params``: pairs or a mapping."""
    if generation == 0:
        return "alone (ce)"
    what = loss
    if tau is not None and not math.isnan(tau):
        what += f" tau={'inf' if math.isinf(tau) else f'{tau:g}'}"
    for k, v in sorted(dict(params or ()).items()):
        what += f" {k}={v:g}"
    if alpha is not None and not math.isnan(alpha) and alpha != 1.0:
        what += f" a={alpha:g}"
    return what


def objective(loss: str, tau: float | None, alpha: float | None) -> str:
    """A setting's training objective by its weights, so no reader guesses the convention
    (kd_core.losses: (1 - alpha) CE + alpha tau^2 KL): "0.1 CE + 0.9 tau^2 KL" (kl, alpha 0.9),
    "tau^2 KL" (alpha 1), "MSE", "CE" (trained on the labels)."""
    if loss == "ce":
        return "CE"
    term = "MSE" if loss == "mse" else "tau^2 KL"
    a = 1.0 if alpha is None or math.isnan(alpha) else alpha
    if a == 1.0:
        return term
    return f"{1 - a:.3g} CE + {a:.3g} {term}"


def setting_order(name: str) -> tuple:
    """alone first, then kl by tau (inf last), then mse, then other losses by name."""
    if name.startswith("kl tau="):
        t = name.split("=")[1].split()[0]
        return (1, math.inf if t == "inf" else float(t), name)
    if name == "alone (ce)":
        return (0, 0.0, name)
    return (2 if name.split()[0] == "mse" else 3, 0.0, name)


def student_name(generation: int, chain: str) -> str:
    """A model and where it learnt from: "g2 cnn-large>cnn-medium>cnn-small"; with the setting,
    what a comparison groups by (a direct and a sequential student are never pooled)."""
    return f"g{generation} {chain}"


def _json_float(x: float | None):
    return "inf" if x is not None and math.isinf(x) else x


def trial_key(
    spec: SweepSpec,
    *,
    model: str,
    loss: str,
    tau,
    alpha,
    noise_rate: float,
    seed: int,
    teacher_key: str | None,
    params: tuple = (),
    plugins: tuple = (),
) -> str:
    """A trial's key: the SHA-256 of its identity, everything that decides its result (the
    definition: TrialKeys computes the same bytes for many trials)."""
    identity = {
        "v": KEY_VERSION,
        "dataset": spec.dataset.name,
        "recipe": spec.train.model_dump(exclude=NOT_RECIPE),
        "model": model,
        "loss": loss,
        "tau": _json_float(tau),
        "alpha": alpha,
        "noise": {"kind": spec.grid.noise.kind, "rate": noise_rate},
        "seed": seed,
        "teacher": teacher_key,
    }
    if spec.dataset.validation:  # trained on less: another trial (absent: the keys from before)
        identity["validation"] = spec.dataset.validation
    # a plugin's loss params and code (absent for kdsweep's own losses, models and datasets:
    # their keys are those from before plugins)
    if params:
        identity["params"] = dict(params)
    if plugins:
        identity["code"] = dict(plugins)
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class TrialKeys:
    """``trial_key`` and ``code_used`` of one spec's trials, the same bytes at a fraction of the
    cost (build_plan: 100k trials, every `kdsweep status`): the recipe is serialised once, not
    dumped from its pydantic model per trial, and each (model, loss, teacher's plugins) looks
    its code up once. tests/test_plan.py proves the keys equal trial_key's on every shipped
    config's plan."""

    # stands for the recipe in each trial's identity, its serialised JSON put in its place: a
    # string no other value of an identity can hold (names, hex digests and numbers)
    _RECIPE = "\x00kdsweep-recipe\x00"

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        recipe = json.dumps(spec.train.model_dump(exclude=NOT_RECIPE), sort_keys=True,
                            separators=(",", ":"))
        self._marker = json.dumps({"recipe": self._RECIPE}, separators=(",", ":"))[1:-1]
        self._recipe = f'"recipe":{recipe}'
        self._fixed: dict = {"v": KEY_VERSION, "dataset": spec.dataset.name,
                             "recipe": self._RECIPE}
        if spec.dataset.validation:
            self._fixed["validation"] = spec.dataset.validation
        self._noise = spec.grid.noise.kind
        self._losses: dict[str, registry.Entry] = {}
        self._code: dict[tuple, tuple[tuple[str, str], ...]] = {}

    def loss_entry(self, loss: str) -> registry.Entry:
        if (entry := self._losses.get(loss)) is None:
            entry = self._losses[loss] = registry.loss_entry(loss)
        return entry

    def code_used(self, model: str, loss: str, parent: Trial | None
                  ) -> tuple[tuple[str, str], ...]:
        at = (model, loss, parent.plugins if parent else None)
        if (code := self._code.get(at)) is None:
            code = self._code[at] = code_used(self.spec, model, self.loss_entry(loss), parent)
        return code

    def key(self, *, model: str, loss: str, tau, alpha, noise_rate: float, seed: int,
            teacher_key: str | None, params: tuple = (), plugins: tuple = ()) -> str:
        """trial_key(spec, ...)."""
        identity = {**self._fixed, "model": model, "loss": loss, "tau": _json_float(tau),
                    "alpha": alpha, "noise": {"kind": self._noise, "rate": noise_rate},
                    "seed": seed, "teacher": teacher_key}
        if params:
            identity["params"] = dict(params)
        if plugins:
            identity["code"] = dict(plugins)
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        blob = blob.replace(self._marker, self._recipe, 1)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def make_trial(
    spec: SweepSpec,
    model: str,
    parent: Trial | None,
    *,
    loss: str = "ce",
    tau: float | None = None,
    alpha: float | None = None,
    noise_rate: float,
    seed: int,
    params: tuple = (),
    keys: TrialKeys | None = None,
) -> Trial:
    """One trial; ``parent`` is its teacher (None for generation 0). ``keys``: the spec's
    TrialKeys, where many trials are made (one is made per call otherwise)."""
    keys = keys or TrialKeys(spec)
    if parent is None:
        loss, tau, alpha, params = "ce", None, None, ()
    entry = keys.loss_entry(loss)
    if "tau" not in entry.params:
        tau = None  # mse ignores tau: one trial, not one per tau
    if "alpha" not in entry.params and parent is not None:
        alpha = None
    params = tuple(sorted(params))
    teacher_key = parent.key if parent else None
    plugins = keys.code_used(model, loss, parent)
    key = keys.key(
        model=model,
        loss=loss,
        tau=tau,
        alpha=alpha,
        noise_rate=noise_rate,
        seed=seed,
        teacher_key=teacher_key,
        params=params,
        plugins=plugins,
    )
    return Trial(
        key=key,
        generation=0 if parent is None else parent.generation + 1,
        model=model,
        lineage=(*parent.lineage, model) if parent else (model,),
        loss=loss,
        tau=tau,
        alpha=alpha,
        noise_kind=spec.grid.noise.kind,
        noise_rate=noise_rate,
        seed=seed,
        teacher_key=teacher_key,
        params=params,
        plugins=plugins,
    )


def code_used(spec: SweepSpec, model: str, loss: registry.Entry, parent: Trial | None
              ) -> tuple[tuple[str, str], ...]:
    """The plugins whose code decides a trial's result, with their digests: its dataset's,
    model's and loss's, and its teacher's (empty: kdsweep's own code only)."""
    digests = {p.name: p.digest for p in spec.loaded_plugins}
    entries = [registry.DATASETS.resolve(spec.dataset.name)[0],
               registry.MODELS.resolve(model)[0], loss]
    used = dict(parent.plugins) if parent else {}
    for name in registry.used_plugins(*entries):
        used[name] = digests.get(name, "")
    return tuple(sorted(used.items()))


def student_settings(grid: GridSpec) -> list[tuple[str, float | None, float, tuple]]:
    """(loss, tau, alpha, params) combinations of the grid, then its extra settings; a loss
    without tau (mse) gets no duplicate per tau, and no setting comes twice."""
    out = []
    for loss in grid.loss:
        takes_tau = "tau" in registry.loss_entry(loss).params
        for params in grid.loss_settings(loss):
            for alpha in grid.alpha:
                taus = grid.tau if takes_tau else [None]
                out += [(loss, tau, alpha, params) for tau in taus]
    out += [(e.loss, e.tau, e.alpha, tuple(sorted(e.params.items()))) for e in grid.extra]
    return list(dict.fromkeys(out))


@dataclass
class Plan:
    spec: SweepSpec
    generations: list[list[Trial]]  # generations[g]: generation g, in a stable order
    keys: set[str] = field(init=False)  # every trial's key: a lookup, not a scan

    def __post_init__(self):
        self.keys = {t.key for gen in self.generations for t in gen}

    @property
    def trials(self) -> list[Trial]:
        return [t for gen in self.generations for t in gen]

    def add(self, trial: Trial) -> bool:
        """Add a trial found at run time (sampled); False if the plan holds it already."""
        if trial.key in self.keys:
            return False
        self.keys.add(trial.key)
        while len(self.generations) <= trial.generation:
            self.generations.append([])
        self.generations[trial.generation].append(trial)
        return True

    def describe(self, done: set[str] = frozenset()) -> str:
        """Trial counts per generation, split by chain; ``done`` marks keys already in storage."""
        s = self.spec
        lines = [
            f"sweep {s.name}: {len(self.trials)} trials in {len(self.generations)} generations "
            f"(dataset {s.dataset.name}, {s.train.epochs} epochs, search {s.search.type})"
        ]
        for g, gen in enumerate(self.generations):
            by_chain = Counter(t.chain for t in gen)
            parts = ", ".join(f"{c} {n}" for c, n in by_chain.items())
            n_done = sum(t.key in done for t in gen)
            tail = f"; {n_done} done, {len(gen) - n_done} to train" if done else ""
            lines.append(f"  generation {g}: {len(gen)} trials ({parts}){tail}")
        if len(self.generations) > 1 and s.search.type != "optuna":
            lines += ["  students:", *(f"    {x}" for x in self.settings())]
        noise = ", ".join(f"{r:g}" for r in s.grid.noise.rate)
        lines.append(f"  each at noise {s.grid.noise.kind} {noise} x seeds "
                     f"{', '.join(map(str, s.grid.seeds))}")
        if s.grid.add_seeds is not None:
            from .looks import worst_case  # looks builds on this module

            looks = s.grid.look_seeds()
            lines.append(
                f"  adding seeds (grid.add_seeds): the first look is {len(self.trials)} trials "
                f"(seeds {', '.join(map(str, s.grid.seeds))}); {len(looks) - 1} more look(s) "
                f"add {s.grid.add_seeds.per_look} seed(s) each to the lineages of the claims "
                f"still undecided, up to {s.grid.add_seeds.up_to} seeds: the worst case (no "
                f"claim decided early) is {worst_case(s)} trials")
        if s.search.type == "optuna":
            lines.append(
                f"  generation 1+: up to {s.search.num_samples} optuna samples per teacher "
                f"over loss {s.grid.loss} and tau in {list(s.search.tau_range)}"
            )
        return "\n".join(lines)

    def settings(self) -> list[str]:
        """The students' grid as the spec sets it, a line per loss and one for grid.extra:
        "kl: tau 1, 3, inf x alpha 0.5, 1 (6 settings)"; "mse: alpha 1"."""
        g, out = self.spec.grid, []
        alphas = ", ".join(f"{a:g}" for a in g.alpha)
        if "kl" in g.loss:
            taus = ", ".join(f"{float(t):g}" for t in g.tau)  # inf prints as "inf"
            out.append(f"kl: tau {taus} x alpha {alphas} ({len(g.tau) * len(g.alpha)} settings)"
                       " of (1 - alpha) CE + alpha tau^2 KL")
        if "mse" in g.loss:
            out.append(f"mse: alpha {alphas} of (1 - alpha) CE + alpha MSE")
        for loss in g.loss:
            if loss in ("kl", "mse"):
                continue
            entry = registry.loss_entry(loss)
            what = [f"tau {', '.join(f'{float(t):g}' for t in g.tau)}"] \
                if "tau" in entry.params else []
            combos = g.loss_settings(loss)
            for p in [p for p, _ in combos[0]]:
                values = dict.fromkeys(dict(c)[p] for c in combos)
                what.append(f"{p} {', '.join(f'{v:g}' for v in values)}")
            if "alpha" in entry.params:
                what.append(f"alpha {alphas}")
            n = len(combos) * (len(g.tau) if "tau" in entry.params else 1) * \
                (len(g.alpha) if "alpha" in entry.params else 1)
            digest = {p.name: p.digest for p in self.spec.loaded_plugins}.get(entry.plugin)
            origin = f"{entry.origin} {digest}" if digest else entry.origin
            out.append(f"{loss} ({origin}): {' x '.join(what) or 'no params'} ({n} settings)")
        if g.extra:
            extra = (f"{setting_name(1, e.loss, e.tau, e.alpha, e.params)} "
                     f"({objective(e.loss, e.tau, e.alpha)})" for e in g.extra)
            out.append("besides the grid: " + ", ".join(extra))
        return out


def build_plan(spec: SweepSpec) -> Plan:
    """Expand the grid over chains into de-duplicated generations.

    Generation g distils from the generation g-1 model of the same lineage, with the same noise,
    seed, loss, tau and alpha (so the same noisy labels) all the way down the chain.
    """
    seen: dict[str, Trial] = {}
    depth = max(len(c) for c in spec.chains)
    generations: list[list[Trial]] = [[] for _ in range(depth)]

    def add(t: Trial) -> Trial:
        if t.key not in seen:
            seen[t.key] = t
            generations[t.generation].append(t)
        return seen[t.key]

    settings = student_settings(spec.grid) if spec.search.type == "grid" else []
    keys = TrialKeys(spec)
    for rate in spec.grid.noise.rate:
        for seed in spec.grid.seeds:
            for chain in spec.chains:
                teacher = add(make_trial(spec, chain[0], None, noise_rate=rate, seed=seed,
                                           keys=keys))
                if spec.grid.baselines:
                    for arch in chain[1:]:
                        add(make_trial(spec, arch, None, noise_rate=rate, seed=seed, keys=keys))
                for loss, tau, alpha, params in settings:
                    parent = teacher
                    for arch in chain[1:]:
                        parent = add(
                            make_trial(
                                spec,
                                arch,
                                parent,
                                loss=loss,
                                tau=tau,
                                alpha=alpha,
                                noise_rate=rate,
                                seed=seed,
                                params=params,
                                keys=keys,
                            )
                        )
    return Plan(spec, [g for g in generations if g])


def children(spec: SweepSpec, parents: list[Trial]) -> list[Trial]:
    """The next generation below ``parents`` on every chain that continues past them.

    A child keeps its parent's loss, tau, alpha, noise and seed (used when generation 1 was
    sampled by optuna rather than planned from the grid).
    """
    out: dict[str, Trial] = {}
    keys = TrialKeys(spec)
    for p in parents:
        g = p.generation + 1
        for chain in spec.chains:
            if len(chain) > g and tuple(chain[:g]) == p.lineage:
                c = make_trial(
                    spec,
                    chain[g],
                    p,
                    loss=p.loss,
                    tau=p.tau,
                    alpha=p.alpha,
                    noise_rate=p.noise_rate,
                    seed=p.seed,
                    params=p.params,
                    keys=keys,
                )
                out.setdefault(c.key, c)
    return list(out.values())


def search_contexts(plan: Plan) -> list[tuple[Trial, str]]:
    """(teacher, student architecture) pairs whose generation-1 students optuna samples."""
    out, seen = [], set()  # seen: a lookup per pair, not a scan of those found (quadratic)
    students: dict[str, list[str]] = {}  # teacher architecture -> its students', chain order
    for chain in plan.spec.chains:
        if len(chain) > 1 and chain[1] not in students.setdefault(chain[0], []):
            students[chain[0]].append(chain[1])
    for t in plan.generations[0]:
        for model in students.get(t.model, ()):
            if (t.key, model) not in seen:
                seen.add((t.key, model))
                out.append((t, model))
    return out


def students_per_teacher(trials: list[Trial]) -> Counter:
    """Teacher key -> how many of ``trials`` distil from it."""
    return Counter(t.teacher_key for t in trials if t.teacher_key and t.loss != "ce")
