"""The sweep spec: YAML in, typed and fully validated objects out; the one place that parses it.

Every error names the offending field (``grid.tau[1]``) and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Annotated, Literal, get_type_hints
from urllib.parse import parse_qs, urlparse

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from kd_core.config import PER_RUN, TrainConfig
from kd_core.names import DATASETS, check_loss_params, check_model_name, check_noise_params


class SpecError(ValueError):
    """A sweep spec that cannot run; the message names the file and the field."""


# What a trial reports that a search can maximize (Optuna's direction and ASHA's mode are "max").
SEARCH_METRICS = ("test_acc", "test_agreement", "train_acc", "train_acc_clean")
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
    # YAML reads `inf` as a string (only `.inf` is a float); both mean the exact limit.
    if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", ".inf", "infinity"):
        return math.inf
    return v


Tau = Annotated[float, BeforeValidator(_tau)]


class _Strict(BaseModel):
    # strict: YAML `true` is not 1, "3" is not 3 (an int still passes as a float)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DatasetSpec(_Strict):
    name: str
    root: str | None = None  # folder holding the CIFAR archives (on every node)
    download: bool = False

    @field_validator("root")
    @classmethod
    def _root_secret(cls, v):
        return v and _no_userinfo(v, "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}: expected one of {', '.join(DATASETS)}")
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

    def config(self, *, loss: str, tau: float, alpha: float, seed: int, device: str) -> TrainConfig:
        recipe = self.model_dump(exclude={"checkpoint_every"})
        return TrainConfig(**recipe, loss=loss, tau=tau, alpha=alpha, seed=seed, device=device)


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


class GridSpec(_Strict):
    loss: Annotated[list[str], BeforeValidator(_as_list)] = ["kl"]
    tau: Annotated[list[Tau], BeforeValidator(_as_list)] = [4.0]  # kl only
    alpha: Annotated[list[float], BeforeValidator(_as_list)] = [1.0]
    noise: NoiseSpec = NoiseSpec()
    seeds: Annotated[list[int], BeforeValidator(_as_list)] = [0]
    baselines: bool = True  # also train every student architecture alone (CE), per noise and seed

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
        return v

    @field_validator("loss")
    @classmethod
    def _losses(cls, v):
        for name in v:
            if name not in ("kl", "mse"):
                raise ValueError(f"unknown loss {name!r}: students use kl or mse")
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


class AshaSpec(_Strict):
    grace_period: int = Field(5, ge=1, le=10_000)
    reduction_factor: float = Field(3.0, gt=1, le=100)


class SearchSpec(_Strict):
    type: Literal["grid", "optuna"] = "grid"
    # optuna only: a trial budget for generation 1 over loss x a continuous tau range.
    num_samples: int = Field(8, ge=1, le=MAX_SAMPLES)
    tau_range: Annotated[tuple[Tau, Tau], BeforeValidator(_as_tuple)] = (0.5, 50.0)
    metric: str = "test_acc"
    asha: AshaSpec | None = None  # early stopping of students on `metric`

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
        if v not in SEARCH_METRICS:
            raise ValueError(f"unknown metric {v!r}: a search maximizes one the trainer "
                             f"reports: {', '.join(SEARCH_METRICS)}")
        return v


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


DATABASES = ("postgresql", "mysql", "mssql", "oracle")


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # paths, tags
    dataset: DatasetSpec
    chains: list[list[str]] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    grid: GridSpec = GridSpec()
    resources: ResourcesSpec = ResourcesSpec()
    search: SearchSpec = SearchSpec()
    storage: str = "./kdsweep-results"
    tracking_uri: str = "sqlite:///mlflow.db"
    # Recorded on every run; with the storage it names the cluster (a parent run per cluster).
    cluster: str = Field("local", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    # retries of a trial that raises an error
    max_failures: int = Field(2, ge=0, le=MAX_FAILURES)
    # restarts of a trial whose node or worker was lost
    max_preemptions: int = Field(20, ge=0, le=MAX_PREEMPTIONS)

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v):
        if not v.strip():
            raise ValueError("empty: give sqlite:///FILE, file:///DIR or a server's http(s) URL")
        _no_userinfo(v, "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
        scheme = urlparse(v).scheme.split("+")[0]
        if scheme in DATABASES:
            # A database straight from the driver skips the server's authentication and its
            # artifact proxy (models would land on the driver's disk), and needs a database
            # driver on every submitting machine: a cluster's store is behind `mlflow server`.
            raise ValueError(
                f"a {scheme} database is used through an MLflow server: start one on it "
                "(cluster/mlflow/start-mlflow.sh) and give its http(s) URL"
            )
        schemes = ("sqlite", "http", "https", "file")
        if scheme and scheme not in schemes:
            raise ValueError(f"unsupported scheme {scheme!r}: use one of {', '.join(schemes)}")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v):
        if not v.strip():
            raise ValueError("empty: give a directory or an s3:// URI")
        _no_userinfo(v, "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        query = parse_qs(urlparse(v).query) if "://" in v else {}
        if {"access_key", "secret_key", "session_token"} & query.keys():
            raise ValueError(
                "credentials do not belong in the spec: use AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY in the environment"
            )
        return v

    @property
    def architectures(self) -> list[str]:
        """Every architecture in the chains, once each, in order of first appearance."""
        return list(dict.fromkeys(m for chain in self.chains for m in chain))

    @model_validator(mode="after")
    def _resource_models(self):
        used = self.architectures
        for name in self.resources.models:
            if name not in used:
                known = ", ".join(sorted(used))
                raise ValueError(f"resources.models.{name}: not in any chain (chains use {known})")
        return self

    @field_validator("chains")
    @classmethod
    def _chains(cls, v):
        for i, chain in enumerate(v):
            if len(chain) == 0:
                raise ValueError(f"chain {i} is empty: list a teacher then its students")
            for name in chain:
                try:
                    check_model_name(name)
                except ValueError as e:
                    raise ValueError(f"chain {i}: {e}") from None
        return v


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        if isinstance(part, int) or part not in model.model_fields:
            continue  # a list index or a dict key: `model` is already the item's type
        ann = model.model_fields[part].annotation
        sub = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        model = next((a for a in sub if issubclass(a, BaseModel)), model)
    return list(model.model_fields)


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = _field_path(e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(SweepSpec, e["loc"]))
            lines.append(f"{where}: unknown key (allowed here: {allowed})")
        elif e["type"] == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] in ("int_type", "float_type") and isinstance(e["input"], (bool, float)):
                msg += f", got {e['input']!r}"  # numbers only: a string field may hold a secret
            m = re.match(r"(\w+): (.*)", msg) if where == "train" else None
            if m and m[1] in TrainSpec.model_fields:  # a kd_core recipe rule names its field
                where, msg = f"train.{m[1]}", m[2]
            lines.append(f"{where}: {msg}" if where else msg)
    return "\n  ".join(lines)


def parse_spec(data: dict, source: str = "<spec>") -> SweepSpec:
    """Validate a spec mapping; SpecError lists every bad field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a sweep spec is a YAML mapping, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: invalid sweep spec:\n  {_explain(e)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice (PyYAML would keep the last one silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a YAML sweep spec file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read the sweep spec: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SpecError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
            "save the spec as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    return parse_spec(data, str(path))
