"""The sweep spec: YAML in, typed and fully validated objects out; the one place that parses it.

Every error names the offending field (``grid.tau[1]``) and what is allowed, before any work starts.
The sections are in sections.py; here the whole spec, and reading it from YAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from kd_core import registry
from kd_core.names import check_model_name

from .sections import (
    MAX_FAILURES,
    MAX_PREEMPTIONS,
    SEARCH_METRICS,
    TEST_METRICS,
    AshaSpec,
    DatasetSpec,
    GridSpec,
    ModelResources,
    NoiseSpec,
    ReportSpec,
    ResourcesSpec,
    SearchSpec,
    TrainSpec,
    _no_userinfo,
    _Strict,
)

__all__ = [
    "SEARCH_METRICS", "AshaSpec", "DatasetSpec", "GridSpec", "ModelResources", "NoiseSpec",
    "ReportSpec", "ResourcesSpec", "SearchSpec", "SpecError", "SweepSpec", "TrainSpec",
    "load_spec", "parse_spec",
]


class SpecError(ValueError):
    """A sweep spec that cannot run; the message names the file and the field."""


DATABASES = ("postgresql", "mysql", "mssql", "oracle")


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # paths, tags
    dataset: DatasetSpec
    chains: list[list[str]] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    grid: GridSpec = GridSpec()
    resources: ResourcesSpec = ResourcesSpec()
    search: SearchSpec = SearchSpec()
    report: ReportSpec = ReportSpec()
    storage: str = "./kdsweep-results"
    tracking_uri: str = "sqlite:///mlflow.db"
    # Recorded on every run; with the storage it names the cluster (a parent run per cluster).
    cluster: str = Field("local", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    # retries of a trial that raises an error
    max_failures: int = Field(2, ge=0, le=MAX_FAILURES)
    # restarts of a trial whose node or worker was lost
    max_preemptions: int = Field(20, ge=0, le=MAX_PREEMPTIONS)
    # losses, models and datasets of one's own: .py files (relative to the spec's folder) or
    # installed modules' dotted names, imported before the rest is checked (parse_spec,
    # kd_core.registry); their names are then the grid's, chains' and dataset's to use
    plugins: list[str] = []
    # the plugins as loaded (parse_spec): what a trial's key and a worker's import take
    _plugins: tuple[registry.Plugin, ...] = PrivateAttr(default=())

    @property
    def loaded_plugins(self) -> tuple[registry.Plugin, ...]:
        return self._plugins

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v):
        if not v.strip():
            raise ValueError("empty: give sqlite:///FILE or a server's http(s) URL")
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
        if scheme in ("", "file"):
            # MLflow 3 keeps its file store for reading old runs only: it refuses new ones
            raise ValueError(
                f"{v} is MLflow's file store, which takes no new runs in this MLflow: give "
                "sqlite:///FILE (a local store) or a server's http(s) URL"
            )
        schemes = ("sqlite", "http", "https")
        if scheme not in schemes:
            raise ValueError(f"unsupported scheme {scheme!r}: use one of {', '.join(schemes)}")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v):
        if not v.strip():
            raise ValueError("empty: give a directory or an s3:// URI")
        _no_userinfo(v, "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        scheme = v.split("://", 1)[0] if "://" in v else "file"
        if scheme not in ("file", "s3"):
            # leases need a write the storage itself refuses when stale (storage.write_if)
            raise ValueError(f"{scheme}:// is not supported: give a directory (local or NFS) "
                             "or s3://bucket/prefix, whose conditional writes kdsweep's "
                             "leases need")
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

    @model_validator(mode="after")
    def _search_metric(self):
        """A search selects on the validation split, never silently on the test set."""
        search, validation = self.search, self.dataset.validation
        metric = search.metric or ("val_acc" if validation or search.selects else "test_acc")
        if search.selects and metric.startswith("val_") and not validation:
            raise ValueError(
                f"search.metric: {metric} (a search's default) needs a validation split: set "
                "dataset.validation (e.g. 0.1); a test-set metric would select on the test set")
        if search.selects and metric in TEST_METRICS and not search.allow_test_metric:
            raise ValueError(
                f"search.metric: {metric} selects trials on the test set: use val_acc with "
                "dataset.validation (e.g. 0.1), or set search.allow_test_metric: true (the "
                "report then marks the sweep)")
        if metric.startswith("val_") and not validation:
            raise ValueError(f"search.metric: {metric} needs dataset.validation (e.g. 0.1)")
        object.__setattr__(self, "search", search.model_copy(update={"metric": metric}))
        return self

    @model_validator(mode="after")
    def _sequential_grid(self):
        if self.grid.add_seeds is not None and self.search.type != "grid":
            raise ValueError("grid.add_seeds: a study that adds seeds decides the grid's claims: "
                             "it needs search.type grid")
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


def load_plugins(refs, source: str, base: Path | None) -> tuple[registry.Plugin, ...]:
    """Import the spec's plugins, in order; SpecError: one line naming the plugin."""
    if not isinstance(refs, list) or not all(isinstance(r, str) and r.strip() for r in refs):
        raise SpecError(f"{source}: plugins: a list of .py files or module names, got {refs!r}")
    out = []
    for i, ref in enumerate(refs):
        try:
            out.append(registry.load_plugin(ref, base))
        except (registry.PluginError, ValueError) as e:
            raise SpecError(f"{source}: plugins[{i}]: {e}".splitlines()[0]) from None
    names = [p.name for p in out]
    seen: dict = {}
    for p in out:
        for kind, name in registry.registered_by(p):
            if (kind, name) in seen:
                raise SpecError(f"{source}: plugins: {p.ref} and {seen[kind, name]} both "
                                f"register the {kind} {name!r}: rename one")
            seen[kind, name] = p.ref
    if len(set(names)) < len(names):
        raise SpecError(f"{source}: plugins: two plugins named "
                        f"{next(n for n in names if names.count(n) > 1)!r}: rename one file")
    return tuple(out)


def parse_spec(data: dict, source: str = "<spec>", base: Path | None = None) -> SweepSpec:
    """Validate a spec mapping; SpecError lists every bad field. Its plugins are imported first
    (relative paths from ``base``, the spec's folder), and its names resolve to kdsweep's own
    entries and theirs only."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a sweep spec is a YAML mapping, got {type(data).__name__}")
    plugins = load_plugins(data.get("plugins", []), source, base)
    try:
        with registry.visible(p.name for p in plugins):
            spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: invalid sweep spec:\n  {_explain(e)}") from None
    spec._plugins = plugins
    return spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice (PyYAML would keep the last one silently)."""


# No field takes an integer of more digits (a seed is below 2^63: 19 digits); a longer one is
# refused by field before Python's own digit limit (4300) names none.
MAX_DIGITS = 20


def _check_digits(where: str, node: yaml.Node) -> None:
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_digits(f"{where}[{i}]", item)
    elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        digits = sum(c.isdigit() for c in node.value)
        if digits > MAX_DIGITS:
            raise _TooLong(f"{where}: an integer of {digits} digits, beyond any sensible bound "
                           f"(line {node.start_mark.line + 1})")


class _TooLong(ValueError):
    """A number no field could take, named by its key while the YAML is read."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            _check_digits(key_node.value, value_node)
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# a plain `inf` (as `tau: [4, inf]` reads) is the float infinity, like YAML's own `.inf`; a
# quoted "inf" stays a string, refused where a number belongs
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:inf|Inf|INF|infinity|Infinity)$"),
    list("-+iI"))


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
        return parse_spec(data, str(path), path.parent)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    except _TooLong as e:
        raise SpecError(f"{path}: {e}") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a sweep spec") from None
