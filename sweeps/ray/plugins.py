"""A sweep's plugins travel with its job: their files, in one package (kd_core.registry.PACKAGE)
that Ray's runtime environment (``py_modules``) uploads when the driver connects and unpacks on
every node; a worker imports them from there (never from the driver's path) and checks that the
code is the driver's (registry.import_shipped). An installed module plugin is imported by name
on the workers, where it must be installed too (the same check says when it is not the same)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from kd_core import registry

from ..domain.spec import SweepSpec


def runtime_env(spec: SweepSpec) -> dict | None:
    """The runtime environment shipping ``spec``'s file plugins; None when it has none."""
    files = [p for p in spec.loaded_plugins if p.is_file]
    if not files:
        return None
    root = Path(tempfile.mkdtemp(prefix="kdsweep-plugins-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    package = root / registry.PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text('"""A kdsweep sweep\'s plugins, as its driver shipped '
                                         'them."""\n')
    for p in files:
        shutil.copyfile(p.path, package / f"{p.module.rsplit('.', 1)[1]}.py")
    return {"py_modules": [str(package)]}


def import_plugins(spec: SweepSpec) -> None:
    """On a worker: every plugin of the spec, as its runtime environment shipped it."""
    for p in spec.loaded_plugins:
        registry.import_shipped(p)
