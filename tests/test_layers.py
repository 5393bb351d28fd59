"""The import contracts between the project's layers, read from the source (no import runs):
a layer is a folder of sweeps/, and it imports only the layers below it; the pure ones import
no framework.

    kd_core             pure PyTorch; knows nothing of sweeps
    sweeps/domain       the spec, the plan, records and trial states, the scheduler: no Ray,
                        MLflow, Arrow, pandas or torch
    sweeps/store        storage, the ledger, leases, checkpoints, snapshots, results: no Ray,
                        no MLflow
    sweeps/tracking     MLflow (the writer, the sweep's runs, the SQLite store): no Ray
    sweeps/ray          Tune's searcher and controller glue, the worker, packing, banks: no
                        MLflow
    sweeps/app          the driver (run_sweep, events, progress, preflight), `kdsweep train`
    sweeps/report       reads results and MLflow; never the driver, the worker or Ray
    sweeps/cli.py       the command line: every command, the report's among them
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what each layer may import of the others (itself always)
BELOW = {
    "domain": set(),
    "store": {"domain"},
    "tracking": {"domain", "store"},
    "ray": {"domain", "store"},
    "app": {"domain", "store", "tracking", "ray"},
    "report": {"domain", "store", "tracking"},
    "cli": {"domain", "store", "tracking", "ray", "app", "report"},
}
FRAMEWORKS = {
    "domain": {"ray", "mlflow", "pyarrow", "pandas", "torch"},
    "store": {"ray", "mlflow"},
    "tracking": {"ray"},
    "ray": {"mlflow"},
    "app": set(),
    "report": {"ray"},
    "cli": set(),
}


def layer_of(module: str) -> str | None:
    """The layer a module of sweeps lives in: its folder (the CLI is its own)."""
    first = module.removeprefix("sweeps.").split(".")[0]
    return first if first in BELOW else None


def imports(path: Path, module: str) -> set[str]:
    """The absolute names ``path`` imports (relative imports resolved), at any depth."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                out |= {f"{name}.{a.name}" if not node.module else name for a in node.names}
            else:
                out.add(node.module)
    return out


def modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_sweeps_module_lives_in_a_layer_folder():
    unplaced = [m for _, m in modules("sweeps") if m != "sweeps" and layer_of(m) is None]
    assert unplaced == []
    assert {p.name for p in (ROOT / "sweeps").iterdir() if p.suffix == ".py"} == {
        "__init__.py", "cli.py"}


@pytest.mark.parametrize("path, module", list(modules("sweeps")), ids=lambda x: str(x))
def test_a_layer_imports_only_the_layers_below_it_and_no_forbidden_framework(path, module):
    mine = layer_of(module)
    if mine is None:
        return  # the package's own __init__
    allowed = BELOW[mine] | {mine}
    for name in imports(path, module):
        if name.startswith("sweeps.") and (theirs := layer_of(name)) is not None:
            assert theirs in allowed, f"{module} ({mine}) imports {name} ({theirs})"
        assert name.split(".")[0] not in FRAMEWORKS[mine], f"{module} ({mine}) imports {name}"


def test_kd_core_knows_nothing_of_sweeps():
    for path, module in modules("kd_core"):
        assert not any(n.split(".")[0] == "sweeps" for n in imports(path, module)), module


def test_the_contract_sees_a_violation():
    """The reader resolves relative imports: a store module importing the driver is caught."""
    path = ROOT / "sweeps" / "store" / "ledger.py"
    names = imports(path, "sweeps.store.ledger")
    assert "sweeps.domain.record" in names and "sweeps.store.storage" in names
    assert layer_of("sweeps.app.sweep") == "app" and "app" not in BELOW["store"]


def test_examples_use_kd_cores_public_api_only():
    """A plugin in examples/ is what a researcher writes: kd_core's decorators, never sweeps."""
    for path in sorted((ROOT / "examples").rglob("*.py")):
        names = imports(path, path.stem)
        assert not any(n.split(".")[0] == "sweeps" for n in names), path
        assert all(n == "kd_core" for n in names if n.split(".")[0] == "kd_core"), path
