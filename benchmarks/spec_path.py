"""How far a reader travels following the spec: from ``run_sweep``, every function that is
handed the spec (``spec``, or a keyword ``spec=``), in source order, depth first, each once.

A stop is such a function; a climb back is a stop in a file the path has already left (the
reader returns to a file). Static (the AST of sweeps/ and kd_core/), so the worker side
(``tune.with_parameters(run_job, spec=spec)``) counts as much as the driver's. Calls resolve
through each module's imports and ``self.`` methods; a callable passed beside the spec (as to
``tune.with_parameters``) counts as called with it.

    .venv/bin/python benchmarks/spec_path.py [--verbose]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sweeps", "kd_core")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


class Index:
    """Every function and method of the packages, and each module's imported names."""

    def __init__(self):
        self.defs: dict[tuple[str, str], tuple[ast.AST, str]] = {}  # (module, qualname)
        self.imports: dict[str, dict[str, tuple[str, str]]] = {}  # module -> name -> target
        for pkg in PACKAGES:
            for path in sorted((ROOT / pkg).rglob("*.py")):
                self._read(path)

    def _read(self, path: Path) -> None:
        mod = module_name(path)
        tree = ast.parse(path.read_text())
        names = self.imports.setdefault(mod, {})
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                self.defs[(mod, node.name)] = (node, str(path.relative_to(ROOT)))
            elif isinstance(node, ast.ClassDef):
                self.defs[(mod, node.name)] = (node, str(path.relative_to(ROOT)))
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        self.defs[(mod, f"{node.name}.{item.name}")] = (
                            item, str(path.relative_to(ROOT)))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module is not None or (
                    isinstance(node, ast.ImportFrom) and node.level):
                base = self._resolve(mod, node.module, node.level, path.name == "__init__.py")
                for alias in node.names:
                    names[alias.asname or alias.name] = (base, alias.name)

    @staticmethod
    def _resolve(mod: str, target: str | None, level: int, is_package: bool) -> str:
        if not level:
            return target or ""
        parts = mod.split(".")
        keep = len(parts) - level + (1 if is_package else 0)
        base = ".".join(parts[:keep])
        return f"{base}.{target}" if target else base

    def lookup(self, mod: str, cls: str | None, call: ast.expr) -> tuple[str, str] | None:
        """The (module, qualname) a call's function refers to, if it is in the packages."""
        if isinstance(call, ast.Name):
            if (mod, call.id) in self.defs:
                return self._callable(mod, call.id)
            if call.id in self.imports.get(mod, {}):
                m, name = self.imports[mod][call.id]
                if (m, name) in self.defs:
                    return self._callable(m, name)
        if isinstance(call, ast.Attribute) and isinstance(call.value, ast.Name):
            if call.value.id == "self" and cls and (mod, f"{cls}.{call.attr}") in self.defs:
                return mod, f"{cls}.{call.attr}"
            if call.value.id in self.imports.get(mod, {}):  # module.function
                m, name = self.imports[mod][call.value.id]
                sub = f"{m}.{name}"
                if (sub, call.attr) in self.defs:
                    return self._callable(sub, call.attr)
        return None

    def _callable(self, mod: str, name: str) -> tuple[str, str]:
        node, _ = self.defs[(mod, name)]
        if isinstance(node, ast.ClassDef):  # a constructor: its __init__, if it has one
            return (mod, f"{name}.__init__") if (mod, f"{name}.__init__") in self.defs else (
                mod, name)
        return mod, name


def passes_spec(call: ast.Call) -> bool:
    args = [*call.args, *(k.value for k in call.keywords)]
    return any(isinstance(a, ast.Name) and a.id == "spec" for a in args)


def walk(index: Index, start: tuple[str, str]) -> list[tuple[str, str]]:
    """Depth first from ``start`` through calls that hand on the spec; (file, qualname) each."""
    seen, path = set(), []

    def visit(key):
        if key in seen or key not in index.defs:
            return
        seen.add(key)
        node, file = index.defs[key]
        path.append((file, key[1]))
        mod, qual = key
        cls = qual.split(".")[0] if "." in qual else None
        calls = sorted((n for n in ast.walk(node) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset))
        for call in calls:
            if not passes_spec(call):
                continue
            targets = [call.func] + [a for a in call.args if isinstance(a, ast.Name)]
            for t in targets:
                if (found := index.lookup(mod, cls, t)) is not None:
                    visit(found)

    visit(start)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    path = walk(Index(), ("sweeps.app.sweep", "run_sweep"))
    left, climbs = set(), []
    for (prev, _), (file, name) in zip(path, path[1:], strict=False):
        if file != prev:
            left.add(prev)
            if file in left:
                climbs.append((file, name))
    if args.verbose:
        for file, name in path:
            print(f"  {file}: {name}")
    files = {f for f, _ in path}
    print(f"{len(path)} stops in {len(files)} files, {len(climbs)} climbs back")


if __name__ == "__main__":
    main()
