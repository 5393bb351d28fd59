"""What kd_core accepts by name: losses, models and datasets, each a registry filled by one
decorator (``register_loss``, ``register_model``, ``register_dataset``), kdsweep's own entries
and a researcher's plugins alike.

Torch-free: a spec check resolves names without importing torch. kdsweep's own entries are
declared here by name, with their params and the module that defines them
(``kd_core.names``); that module's decorator fills the function in when it is first imported.
A plugin's decorators run when the plugin is imported (``load_plugin``), and its entries carry
the plugin's name, so a trial's key can include the digest of the code it used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# the parameters a loss reads from the grid's own fields; others come from grid.params
GRID_PARAMS = ("tau", "alpha")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Entry:
    """One registered name. ``fn`` is None until the module in ``target`` is imported."""

    kind: str  # "loss", "model" or "dataset"
    name: str
    fn: Callable | None = None
    target: str | None = None  # "module" whose import registers fn (kdsweep's own entries)
    params: tuple[str, ...] = ()  # a loss's keyword parameters
    defaults: dict = field(default_factory=dict)  # a loss's params with a default value
    pattern: re.Pattern | None = None  # a parametric model name (wrn-D-W): groups -> builder
    check: Callable[[str], None] | None = None  # a parametric name's own rules (torch-free)
    plugin: str | None = None  # the plugin that registered it; None: kdsweep's own
    facts: dict = field(default_factory=dict)  # a dataset's classes, shape, ... when declared

    def matches(self, name: str) -> re.Match | None:
        return self.pattern.fullmatch(name) if self.pattern else None

    def load(self) -> Callable:
        if self.fn is None and self.target:
            importlib.import_module(self.target)  # its decorator sets fn
        if self.fn is None:
            raise ValueError(f"{self.kind} {self.name!r}: {self.target} registers no function")
        return self.fn

    @property
    def origin(self) -> str:
        return f"plugin {self.plugin}" if self.plugin else "kdsweep"


class UnknownName(ValueError):
    pass


# the plugins a resolution may see besides kdsweep's own (None: every plugin loaded); set by
# ``visible`` while a spec that lists its plugins is validated
_visible: frozenset[str] | None = None
# the plugin being imported by load_plugin: its decorators' entries carry its name
_loading: str | None = None
# each imported plugin module's entries, so loading a module imported before (a file edited
# and then restored) puts its own entries back
_by_module: dict[str, list[Entry]] = {}
_loading_module: str | None = None


@contextlib.contextmanager
def visible(plugins: Iterable[str]):
    """Within: names resolve to kdsweep's own entries and those of ``plugins`` only."""
    global _visible
    before, _visible = _visible, frozenset(plugins)
    try:
        yield
    finally:
        _visible = before


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, Entry] = {}

    def _seen(self) -> list[Entry]:
        return [e for e in self.entries.values()
                if e.plugin is None or _visible is None or e.plugin in _visible]

    def names(self) -> list[str]:
        return [e.name for e in self._seen()]

    def resolve(self, name: str) -> tuple[Entry, tuple[str, ...]]:
        """The entry for ``name`` and a parametric name's groups; UnknownName lists the known
        names. A parametric entry's own rules are checked here (torch-free)."""
        seen = self._seen()
        for e in seen:
            if e.name == name and e.pattern is None:
                return e, ()
        for e in seen:
            if m := e.matches(name):
                if e.check:
                    e.check(name)
                return e, m.groups()
        known = ", ".join(self.hint_names(seen))
        plural = "losses" if self.kind == "loss" else f"{self.kind}s"
        raise UnknownName(f"unknown {self.kind} {name!r}: known {plural} are {known}")

    def hint_names(self, seen: list[Entry]) -> list[str]:
        return [f"{e.name} {e.facts['hint']}" if e.facts.get("hint") else e.name for e in seen]

    def declare(self, name: str, target: str, **kw) -> None:
        """A kdsweep entry known by name before its module is imported."""
        self.entries[name] = Entry(self.kind, name, target=target, **kw)

    def add(self, name: str, fn: Callable, **kw) -> Callable:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"register_{self.kind}: name {name!r} must be letters, "
                             "digits, '-', '_' or '.'")
        old = self.entries.get(name)
        # kd_core's own modules register as kdsweep's, even when a plugin's import is what
        # first imports them (``from kd_core.models import Classifier``)
        own = (getattr(fn, "__module__", "") or "").split(".")[0] == "kd_core"
        plugin = None if own else _loading if _loading is not None else _module_plugin(fn)
        if old is not None and old.target is not None and old.plugin is None:
            if plugin is not None or fn.__module__ != old.target:
                raise ValueError(f"register_{self.kind}({name!r}): {name} is kdsweep's own "
                                 f"{self.kind}: choose another name")
            if kw.get("params", ()) != old.params:
                raise ValueError(f"register_{self.kind}({name!r}): params {kw.get('params')} "
                                 f"differ from its declaration {old.params}")
            old.fn = fn
            old.defaults = kw.get("defaults", {})
            return fn
        # another plugin's entry of that name (a spec loaded before in this process): the
        # latest load's, as a spec loads its plugins each time (two plugins of one spec that
        # share a name are refused: registered_by)
        self.entries[name] = entry = Entry(self.kind, name, fn=fn, plugin=plugin, **kw)
        if _loading_module is not None and plugin is not None:
            _by_module.setdefault(_loading_module, []).append(entry)
        return fn


def _module_plugin(fn: Callable) -> str | None:
    """Registered outside load_plugin (a notebook, a module of one's own): the module's name;
    kdsweep's own modules register as kdsweep's."""
    module = getattr(fn, "__module__", "") or ""
    return None if module.split(".")[0] == "kd_core" else module


LOSSES = Registry("loss")
MODELS = Registry("model")
DATASETS = Registry("dataset")


def register_loss(name: str, params: tuple[str, ...] | list[str] = ()):
    """``@register_loss("dkd", params=("tau", "alpha", "beta"))`` on
    ``fn(student_logits, teacher_logits, targets, **params) -> loss``: a batch's loss, a scalar.

    ``tau`` and ``alpha`` take the grid's values (``grid.tau``, ``grid.alpha``); any other param
    takes ``grid.params.NAME`` (a list) or the function's keyword default. Student logits come
    in fp32, teacher logits detached.
    """
    params = tuple(params)

    def deco(fn: Callable) -> Callable:
        for p in params:
            if not isinstance(p, str) or not _IDENT.match(p):
                raise ValueError(f"register_loss({name!r}): param {p!r} is not a Python name")
        sig = inspect.signature(fn)
        accepts = {p.name for p in sig.parameters.values()}
        varkw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        missing = [p for p in params if p not in accepts and not varkw]
        if missing:
            raise ValueError(f"register_loss({name!r}): {fn.__name__} takes no parameter "
                             f"{', '.join(missing)}")
        if len([p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY,
                p.POSITIONAL_OR_KEYWORD)]) < 3 and not any(
                p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
            raise ValueError(f"register_loss({name!r}): {fn.__name__} must take (student_logits, "
                             "teacher_logits, targets, **params)")
        defaults = {p: sig.parameters[p].default for p in params
                    if p in sig.parameters and sig.parameters[p].default is not inspect._empty}
        for p, v in defaults.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"register_loss({name!r}): the default of {p} must be a "
                                 f"number, got {v!r}")
        return LOSSES.add(name, fn, params=params, defaults=defaults)

    return deco


def register_model(name: str, pattern: str | None = None,
                   check: Callable[[str], None] | None = None):
    """``@register_model("my-net")`` on ``builder(num_classes, in_channels) -> nn.Module``
    (a ``kd_core.models.Classifier``: logits out, penultimate features on request). A
    parametric family gives ``pattern``, a regex whose groups (strings) follow the two
    arguments: ``@register_model("wrn-D-W", pattern=r"wrn-(\\d+)-(\\d+)")``."""

    def deco(fn: Callable) -> Callable:
        return MODELS.add(name, fn, pattern=re.compile(pattern) if pattern else None,
                          check=check)

    return deco


def register_dataset(name: str, **facts):
    """``@register_dataset("my-data")`` on ``loader(root=None, download=False)`` returning
    ``kd_core.data.ImageData`` or the arrays ``(train_images, train_labels, test_images,
    test_labels)``: images (N, C, H, W) uint8 (0-255), labels int class indices."""

    def deco(fn: Callable) -> Callable:
        return DATASETS.add(name, fn, facts=facts)

    return deco


def loss_entry(name: str) -> Entry:
    return LOSSES.resolve(name)[0]


def check_loss_values(loss: str, params: dict) -> None:
    """A loss's extra params (beyond tau and alpha): each declared, a finite number; ValueError
    names the first wrong one."""
    entry = loss_entry(loss)
    extras = [p for p in entry.params if p not in GRID_PARAMS]
    for name, value in params.items():
        if name not in extras:
            raise ValueError(f"loss {loss!r} takes no param {name!r} (its params: "
                             f"{', '.join(entry.params) or 'none'})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise ValueError(f"{loss} param {name}: a finite number, got {value!r}")


# --- plugins -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: ``name`` (a file's stem or a module's name) is what entries carry;
    ``digest`` hashes its code; ``module`` is what a worker imports (a file plugin: under the
    package its runtime environment ships, ``PACKAGE``)."""

    ref: str  # as the spec names it
    name: str
    digest: str
    module: str
    path: str | None = None  # a file plugin's file

    @property
    def is_file(self) -> bool:
        return self.path is not None


PACKAGE = "kdsweep_plugins"


class PluginError(ValueError):
    pass


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def module_digest(module_name: str) -> str:
    """An installed module's code: its distribution's name and version, and the bytes of every
    Python file of its package."""
    spec = importlib.util.find_spec(module_name)
    h = hashlib.sha256(module_name.encode())
    top = module_name.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            h.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
    origin = Path(spec.origin) if spec and spec.origin else None
    if origin is not None and origin.is_file():
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for f in files:
            h.update(str(f.relative_to(origin.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def file_module(name: str, digest: str) -> str:
    """The module a file plugin is imported as, here and on workers: its digest in its name,
    so an edited file is a new module (and never an older import in a reused process)."""
    return f"{PACKAGE}.{name}_{digest}"


def load_plugin(ref: str, base: Path | None = None) -> Plugin:
    """Import a plugin (a ``.py`` file, relative to ``base``, or an installed module's dotted
    name); its decorators register its entries. PluginError: one line naming ``ref``."""
    global _loading
    if ref.endswith(".py") or "/" in ref or "\\" in ref:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise PluginError(f"{ref}: no such file ({path})")
        name = path.stem
        if not _IDENT.match(name):
            raise PluginError(f"{ref}: the file's name must be a Python name (letters, digits, _)")
        digest = file_digest(path)
        plugin = Plugin(ref, name, digest, file_module(name, digest), str(path.resolve()))
        _drop(name)
        if plugin.module in sys.modules:  # this very code is imported already
            _restore(plugin.module)
            return plugin
        spec = importlib.util.spec_from_file_location(plugin.module, path)
        module = importlib.util.module_from_spec(spec)
        run = lambda: spec.loader.exec_module(module)  # noqa: E731
    else:
        if not all(_IDENT.match(p) for p in ref.split(".")):
            raise PluginError(f"{ref}: neither a .py file nor a module's dotted name")
        try:
            found = importlib.util.find_spec(ref)
        except (ImportError, ValueError) as e:
            raise PluginError(f"{ref}: cannot import: {type(e).__name__}: {e}") from None
        if found is None:
            raise PluginError(f"{ref}: no module named {ref!r} is installed")
        plugin = Plugin(ref, ref, module_digest(ref), ref)
        if ref in sys.modules:
            return plugin
        module = None
        run = lambda: importlib.import_module(ref)  # noqa: E731
    global _loading_module
    before, _loading, _loading_module = _loading, plugin.name, plugin.module
    try:
        if module is not None:
            sys.modules[plugin.module] = module
        run()
    except PluginError:
        raise
    except Exception as e:  # the plugin's own error: one line, where it happened
        sys.modules.pop(plugin.module, None)
        _drop(plugin.name)
        raise PluginError(f"{ref}: cannot import: {_where(e)}{type(e).__name__}: {e}") from None
    finally:
        _loading, _loading_module = before, None
    return plugin


def registered_by(plugin: Plugin) -> list[tuple[str, str]]:
    """(kind, name) of every entry ``plugin`` registered."""
    return [(e.kind, e.name) for e in _by_module.get(plugin.module, [])]


def _restore(module: str) -> None:
    for e in _by_module.get(module, []):
        {"loss": LOSSES, "model": MODELS, "dataset": DATASETS}[e.kind].entries[e.name] = e


def _drop(plugin: str) -> None:
    """Forget a plugin's entries (it is loaded again, edited)."""
    for reg in (LOSSES, MODELS, DATASETS):
        for name in [n for n, e in reg.entries.items() if e.plugin == plugin]:
            del reg.entries[name]


def _where(e: BaseException) -> str:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if isinstance(e, SyntaxError):
        return f"line {e.lineno}: "
    return f"line {tb.tb_lineno}: " if tb is not None else ""


def import_shipped(plugin: Plugin) -> None:
    """On a worker: import ``plugin`` as its runtime environment shipped it (a file plugin under
    PACKAGE, never from the driver's path) and check that its code is the driver's."""
    global _loading, _loading_module
    if plugin.module in sys.modules:
        if plugin.is_file:
            _drop(plugin.name)
            _restore(plugin.module)
        return
    before, _loading, _loading_module = _loading, plugin.name, plugin.module
    try:
        if plugin.is_file:
            _drop(plugin.name)
        module = importlib.import_module(plugin.module)
    except ModuleNotFoundError as e:
        raise PluginError(f"plugin {plugin.ref}: did not reach this worker ({e}): start the "
                          "sweep with `kdsweep run`, which ships it in Ray's runtime "
                          "environment") from None
    finally:
        _loading, _loading_module = before, None
    digest = (file_digest(Path(module.__file__)) if plugin.is_file
              else module_digest(plugin.module))
    if digest != plugin.digest:
        raise PluginError(f"plugin {plugin.ref}: this worker's code (digest {digest}) is not "
                          f"the driver's ({plugin.digest}): install the same version everywhere")


def used_plugins(*entries: Entry) -> list[str]:
    return sorted({e.plugin for e in entries if e.plugin})
