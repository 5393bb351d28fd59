"""The spec's sections (dataset, train, grid, search, resources): each field with its default,
bounds and the rule that checks it. The whole spec and its reading are in __init__.py."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Annotated, Literal, get_type_hints
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    create_model,
    field_validator,
    model_validator,
)

from kd_core import registry
from kd_core.config import PER_RUN, TrainConfig
from kd_core.names import (
    check_dataset_name,
    check_loss_params,
    check_model_name,
    check_noise_params,
    check_validation,
)

# What a trial reports that a search can maximize (Optuna's direction and ASHA's mode are "max").
# val_acc is a search's default; a test-set metric selects on the test set, and is refused
# unless the spec says search.allow_test_metric (and the report then marks the sweep).
SEARCH_METRICS = ("val_acc", "test_acc", "test_agreement", "train_acc", "train_acc_clean")
TEST_METRICS = ("test_acc", "test_agreement")
# Upper bounds no user means: each catches a typo (10^20 epochs) before it allocates or schedules.
MAX_CPUS, MAX_GPUS, MAX_MEMORY_GB = 1024, 64, 65536
MAX_FAILURES, MAX_PREEMPTIONS, MAX_SAMPLES = 100, 10_000, 100_000


def _as_list(v):
    return v if isinstance(v, list) else [v]


def _as_tuple(v):
    # Strict mode takes a tuple only as a tuple; YAML has lists.
    return tuple(v) if isinstance(v, list) else v


def _no_userinfo(value: str, env: str) -> str:
    """Refuse a URI carrying user:password@ (the spec is stored with every sweep); the message
    never repeats the value."""
    if "://" in value and "@" in urlparse(value).netloc:
        raise ValueError(f"credentials do not belong in the spec (it is stored with every "
                         f"sweep): remove the user:password@ part and set {env} in the "
                         "environment instead")
    return value


def _tau(v):
    # A plain `inf` in YAML is read as a float (spec.load_spec's loader), like `.inf`: both mean
    # the exact limit. A string ("inf", quoted) is not a number: refused, as types are strict.
    return v


Tau = Annotated[float, BeforeValidator(_tau)]


class _Strict(BaseModel):
    # strict: YAML `true` is not 1, "3" is not 3 (an int still passes as a float)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DatasetSpec(_Strict):
    name: str
    root: str | None = None  # folder holding the CIFAR archives (on every node)
    download: bool = False
    # The share of the training split held out (stratified, drawn with each trial's seed) to
    # select on: val_acc and val_loss per epoch. 0, the paper's protocol: the whole training
    # split, and the trials' keys are those of a spec without the field. A search (optuna,
    # asha) selects on val_acc and needs one.
    validation: float = 0.0

    @field_validator("validation")
    @classmethod
    def _validation(cls, v):
        check_validation(v)  # kd_core's rule
        return v

    @field_validator("root")
    @classmethod
    def _root_secret(cls, v):
        return v and _no_userinfo(v, "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        check_dataset_name(v)  # kdsweep's own or a plugin's (kd_core.registry)
        return v

    @model_validator(mode="after")
    def _root(self):
        if self.name.startswith("cifar") and self.root is None:
            raise ValueError(f"dataset {self.name!r} needs root: the folder holding its archive")
        return self


class _TrainBase(_Strict):
    """Recipe rules are kd_core's: a spec's recipe is checked by building a TrainConfig."""

    @model_validator(mode="after")
    def _kd_core_rules(self):
        self.config(loss="ce", tau=1.0, alpha=1.0, seed=0, device="auto")
        return self

    def config(self, *, loss: str, tau: float, alpha: float, seed: int, device: str,
               loss_params: tuple = ()) -> TrainConfig:
        recipe = self.model_dump(exclude=NOT_RECIPE)
        return TrainConfig(**recipe, loss=loss, tau=tau, alpha=alpha, seed=seed, device=device,
                           loss_params=loss_params)


# The train section's fields that are not kd_core's recipe: how a trial is kept, not what it
# learns, so no part of a trial's key (plan.trial_key).
NOT_RECIPE = frozenset({"checkpoint_every", "store_logits"})


def _recipe_fields() -> dict:
    """TrainConfig's recipe fields with their defaults: the spec's `train` section."""
    hints = get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in PER_RUN:
            continue
        kind = hints[f.name]
        # YAML `true` must not pass as epochs=1: whole-number fields take whole numbers only.
        if kind == tuple[float, ...]:
            kind = Annotated[kind, BeforeValidator(_as_tuple)]
        out[f.name] = (StrictInt if kind is int else kind, f.default)
    return out


TrainSpec = create_model(
    "TrainSpec",
    __base__=_TrainBase,
    __doc__="The training recipe shared by every trial: kd_core's TrainConfig less per-trial "
    "fields, plus how often a trial checkpoints.",
    **_recipe_fields(),
    checkpoint_every=(int, Field(1, ge=1)),  # epochs between trial checkpoints
    # each trial's test-set logits (float16) in its predictions.npz beside the predicted class
    # and the true class's probability it always holds (ledger.TrialFile.PREDICTIONS)
    store_logits=(bool, Field(False)),
)


class NoiseSpec(_Strict):
    kind: str = "symmetric"
    rate: Annotated[list[float], BeforeValidator(_as_list)] = [0.0]

    @model_validator(mode="after")
    def _valid(self):
        if not self.rate:
            raise ValueError("rate must list at least one value (an empty list would plan nothing)")
        for r in self.rate:  # kd_core's own rules, so the spec and the trainer never disagree
            check_noise_params(self.kind, r)
        return self


def student_loss(name: str) -> registry.Entry:
    """A loss a student may distil with: registered (kdsweep's own or a plugin's), not ce."""
    if name == "ce":
        raise ValueError("unknown loss 'ce': students distil (ce is the baseline's, "
                         "grid.baselines)")
    try:
        return registry.loss_entry(name)
    except registry.UnknownName as e:
        raise ValueError(f"{e} (ce is the baselines'; a plugin adds more: `plugins:`)") from None


def loss_params(name: str, given: dict) -> tuple[tuple[str, float], ...]:
    """The (name, value) pairs a loss's params beyond tau and alpha take: ``given``'s value,
    else the function's default; ValueError names a param with neither."""
    entry = registry.loss_entry(name)
    out = []
    for p in entry.params:
        if p in registry.GRID_PARAMS:
            continue
        if p in given:
            out.append((p, given[p]))
        elif p in entry.defaults:
            out.append((p, float(entry.defaults[p])))
        else:
            raise ValueError(f"loss {name!r} ({entry.origin}) takes {p}, which has no default: "
                             f"give it in grid.params.{p} (a list of values)")
    return tuple(out)


class SettingSpec(_Strict):
    """One student setting beside the grid's product: e.g. the field's standard KD (kl, tau 4,
    alpha 0.9: 0.1 CE + 0.9 tau^2 KL), or MSE at one alpha while KL sweeps several; a plugin's
    loss with its own params (``{loss: dkd, tau: 4, params: {beta: 8}}``)."""

    loss: str
    tau: Tau | None = None  # a loss that takes tau (kl)
    alpha: float = 1.0
    params: dict[str, float] = {}  # a plugin loss's params beyond tau and alpha

    @model_validator(mode="after")
    def _valid(self):
        entry = student_loss(self.loss)
        if (self.tau is None) == ("tau" in entry.params):
            raise ValueError(f"{self.loss} takes a tau" if self.tau is None
                             else f"{self.loss} takes no tau")
        if self.alpha != 1.0 and "alpha" not in entry.params:
            raise ValueError(f"{self.loss} takes no alpha")
        check_loss_params(self.loss, 1.0 if self.tau is None else self.tau, self.alpha,
                          self.params)
        loss_params(self.loss, self.params)
        return self


class AddSeedsSpec(_Strict):
    """A study that adds seeds until each claim is decided (docs/claims.md, "adding seeds"):
    grid.seeds is the first look; each later look adds ``per_look`` seeds (the integers after
    the largest seed of the study so far) to the lineages of the claims still undecided, up to
    ``up_to`` seeds in all."""

    up_to: StrictInt = Field(ge=2, le=1000)
    per_look: StrictInt = Field(1, ge=1, le=1000)


class GridSpec(_Strict):
    loss: Annotated[list[str], BeforeValidator(_as_list)] = ["kl"]
    tau: Annotated[list[Tau], BeforeValidator(_as_list)] = [4.0]  # kl only
    alpha: Annotated[list[float], BeforeValidator(_as_list)] = [1.0]
    # a plugin loss's params beyond tau and alpha, each a list crossed with the rest for the
    # losses that take it (a param a loss gives a default may be left out)
    params: dict[str, Annotated[list[float], BeforeValidator(_as_list)]] = {}
    noise: NoiseSpec = NoiseSpec()
    seeds: Annotated[list[int], BeforeValidator(_as_list)] = [0]
    baselines: bool = True  # also train every student architecture alone (CE), per noise and seed
    # settings added to loss x tau x alpha (each at every chain position, noise rate and seed)
    extra: list[SettingSpec] = []
    # a sequential study: seeds added look by look to undecided claims (None: the seeds above)
    add_seeds: AddSeedsSpec | None = None

    @field_validator("loss", "tau", "alpha", "seeds")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("must list at least one value (an empty list would plan nothing)")
        return v

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, v):
        for seed in v:  # torch and numpy's generators take seeds in [0, 2^63)
            if not 0 <= seed < 2**63:
                raise ValueError(f"seeds must lie in [0, 2^63), got {seed}")
        if dupes := sorted(s for s, n in Counter(v).items() if n > 1):  # not v.count per seed:
            # quadratic (14k seeds, 100k trials: most of `kdsweep status`'s time)
            raise ValueError(f"seed {', '.join(map(str, dupes))} listed twice: each seed is one "
                             "replicate; list each once")
        return v

    @field_validator("loss")
    @classmethod
    def _losses(cls, v):
        for name in v:
            student_loss(name)
        return v

    @field_validator("tau")
    @classmethod
    def _taus(cls, v):
        for t in v:  # kd_core's own rules (tau > 0 or inf, alpha in [0, 1])
            check_loss_params("kl", t, 1.0)
        return v

    @field_validator("alpha")
    @classmethod
    def _alphas(cls, v):
        for a in v:
            check_loss_params("kl", 1.0, a)
        return v

    @model_validator(mode="after")
    def _params(self):
        """Every grid.params name is a param of a grid loss, with values; every param of a grid
        loss beyond tau and alpha has values here or a default."""
        taken = set()
        for name in self.loss:
            entry = registry.loss_entry(name)
            taken |= set(entry.params)
            loss_params(name, dict.fromkeys(self.params, 0.0))
        for p, values in self.params.items():
            if p in registry.GRID_PARAMS:
                raise ValueError(f"params.{p}: {p} is grid.{p}'s")
            if p not in taken:
                raise ValueError(f"params.{p}: no loss of grid.loss takes {p}")
            if not values:
                raise ValueError(f"params.{p}: must list at least one value")
            for v in values:
                if not math.isfinite(v):
                    raise ValueError(f"params.{p}: a finite number, got {v!r}")
        return self

    @field_validator("add_seeds")
    @classmethod
    def _add_seeds(cls, v, info):
        seeds = info.data.get("seeds")
        if v is None or not seeds:
            return v
        if v.up_to <= len(seeds):
            raise ValueError(f"up_to {v.up_to} is not more than grid.seeds' {len(seeds)} seeds "
                             "(the first look): nothing would be added")
        if max(seeds) + v.up_to >= 2**63:
            raise ValueError("the added seeds (the integers after the largest of grid.seeds) "
                             "would pass 2^63")
        return v

    def look_seeds(self) -> list[list[int]]:
        """The seeds each look adds: grid.seeds first, then add_seeds.per_look at a time (the
        integers after the largest so far, up to add_seeds.up_to in all); one look without
        add_seeds."""
        looks = [list(self.seeds)]
        if self.add_seeds is None:
            return looks
        n, nxt = len(self.seeds), max(self.seeds) + 1
        while n < self.add_seeds.up_to:
            k = min(self.add_seeds.per_look, self.add_seeds.up_to - n)
            looks.append(list(range(nxt, nxt + k)))
            n, nxt = n + k, nxt + k
        return looks

    def loss_settings(self, loss: str) -> list[tuple[tuple[str, float], ...]]:
        """A loss's extra params, every combination the grid gives (one empty one for a loss
        without any)."""
        combos: list[tuple] = [()]
        for p, value in loss_params(loss, dict.fromkeys(self.params)):
            values = self.params.get(p, [value])
            combos = [(*c, (p, float(v))) for c in combos for v in values]
        return combos


class AshaSpec(_Strict):
    grace_period: int = Field(5, ge=1, le=10_000)
    reduction_factor: float = Field(3.0, gt=1, le=100)


class SearchSpec(_Strict):
    type: Literal["grid", "optuna"] = "grid"
    # optuna only: a trial budget for generation 1 over loss x a continuous tau range.
    num_samples: int = Field(8, ge=1, le=MAX_SAMPLES)
    tau_range: Annotated[tuple[Tau, Tau], BeforeValidator(_as_tuple)] = (0.5, 50.0)
    # what Optuna and ASHA maximize: default val_acc (needs dataset.validation)
    metric: str | None = None
    asha: AshaSpec | None = None  # early stopping of students on `metric`
    allow_test_metric: bool = False  # select on a test-set metric anyway (the report says so)

    @property
    def selects(self) -> bool:
        """Whether the sweep chooses or stops trials by a metric (an Optuna search, ASHA)."""
        return self.type == "optuna" or self.asha is not None

    @field_validator("tau_range")
    @classmethod
    def _range(cls, v):
        lo, hi = v
        if not 0 < lo < hi or math.isinf(hi):
            raise ValueError(f"tau_range must be 0 < low < high < inf, got {list(v)}")
        check_loss_params("kl", lo, 1.0)  # kd_core's smallest tau
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v):
        if v is not None and v not in SEARCH_METRICS:
            raise ValueError(f"unknown metric {v!r}: a search maximizes one the trainer "
                             f"reports: {', '.join(SEARCH_METRICS)}")
        return v


class ReportSpec(_Strict):
    """How `kdsweep report` judges this sweep's claims (no trial depends on it)."""

    # C2's "MSE similar to the best KL" as a non-inferiority margin, in accuracy points: for
    # every tau, MSE - KL's 95% interval lies above -similar_margin. 1 point by default: below
    # the paper's tau effects (1-3 points on CIFAR-100), above one test image on CIFAR (0.01)
    # and digits (0.22). A dataset with other effect sizes sets its own, before it sees results.
    similar_margin: float = Field(1.0, gt=0, le=50)


def _check_gpu(v: float | None) -> float | None:
    # Ray schedules fractions of one GPU, or whole GPUs: 1.5 cannot be placed.
    if v is not None and 0 < v < 0.01:
        raise ValueError(f"gpu must be 0 or at least 0.01 (a hundredth of a GPU), got {v}")
    if v is not None and v > 1 and v != int(v):
        raise ValueError(f"gpu above 1 must be a whole number of GPUs, got {v}")
    return v


class ModelResources(_Strict):
    """Per-architecture overrides of the per-trial resources."""

    cpu: float | None = Field(None, ge=0.01, le=MAX_CPUS)
    gpu: float | None = Field(None, ge=0, le=MAX_GPUS)
    memory_gb: float | None = Field(None, ge=0.01, le=MAX_MEMORY_GB)

    _gpu = field_validator("gpu")(classmethod(lambda cls, v: _check_gpu(v)))


class ResourcesSpec(_Strict):
    """What Ray reserves for one trial. GPU fractions pack several trials on one GPU (Ray does
    not watch GPU memory: size them with `kdsweep plan --measure`); memory_gb reserves host
    memory, so Ray packs a node only as full as its RAM allows."""

    # Ray counts resources in steps of 1/10000: a hundredth of a CPU or a GPU is the finest
    # share a trial can use.
    cpu: float = Field(1.0, ge=0.01, le=MAX_CPUS)
    gpu: float = Field(0.0, ge=0, le=MAX_GPUS)
    memory_gb: float | None = Field(None, ge=0.01, le=MAX_MEMORY_GB)
    models: dict[str, ModelResources] = {}  # keyed by architecture, e.g. {wrn-28-4: {gpu: 0.5}}
    # Sibling students (one teacher, seed, architecture, recipe) trained as one fused job:
    # "auto" where a measurement (or, without one, fusion.py's rule) says it pays, "off", or
    # at most K per job (1 is off).
    fuse: Literal["auto", "off"] | Annotated[int, Field(ge=1, le=64)] = "auto"

    _gpu = field_validator("gpu")(classmethod(lambda cls, v: _check_gpu(v)))

    @field_validator("models")
    @classmethod
    def _models(cls, v):
        for name in v:
            check_model_name(name)
        return v

    def for_model(self, model: str) -> dict[str, float]:
        """The Ray resource request of one trial of ``model``."""
        over = self.models.get(model, ModelResources())
        gb = over.memory_gb or self.memory_gb
        return {
            "cpu": over.cpu or self.cpu,
            "gpu": self.gpu if over.gpu is None else over.gpu,
            **({"memory": int(gb * 2**30)} if gb else {}),
        }

    @property
    def uses_gpu(self) -> bool:
        return self.gpu > 0 or any(m.gpu for m in self.models.values())


