"""Import paths of modules that moved, kept for one release: importing one warns (``DeprecationWarning``) and gives
a module whose names are looked up in the modules that now hold them.

``aselect_kernels.validate`` is documented public API: ``validate`` and ``validation_parts`` stay there without a
warning; its other names warn when they are first looked up.  ``python -m aselect_kernels.train`` still runs the
trainer's command line.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

_V = "aselect_kernels.validation"
#: Old module path -> the modules that now hold its names, searched in order.
MOVED: dict[str, tuple[str, ...]] = {
    "aselect_kernels.model": ("aselect_kernels.embedded.model", "aselect_kernels.models", "aselect_kernels.hub"),
    "aselect_kernels.data": ("aselect_kernels.embedded.data", "aselect_kernels.images", f"{_V}.datasets"),
    "aselect_kernels.train": ("aselect_kernels.embedded.train",),
    "aselect_kernels.probe": (f"{_V}.probe",),
    "aselect_kernels.batched_logistic": (f"{_V}.logistic",),
    "aselect_kernels.nuisance": (f"{_V}.datasets",),
    "aselect_kernels.validate": ("aselect_kernels.constants", *(f"{_V}.{m}" for m in (
        "rules", "datasets", "splits", "grids", "compare", "report", "run"))),
    "aselect_kernels.tapinfo": ("aselect_kernels.cli.tapinfo",),
    "aselect_kernels.wording": (f"{_V}.wording",),
}
#: Old paths that stay public API, with the names they keep without a warning.
KEPT: dict[str, frozenset[str]] = {"aselect_kernels.validate": frozenset({"validate", "validation_parts"})}


def moved_message(old: str, new: str) -> str:
    """The deprecation message for the module (or name) ``old``, now ``new``."""
    return f"{old} moved to {new}; the old path will be removed in the next release"


class MovedModule(types.ModuleType):
    """A moved module under its old name: attributes come from the new modules, imported on first use."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved: see {', '.join(targets)}.")
        self.__targets__ = tuple(targets)

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        found = {t: getattr(m, attr) for t in self.__targets__ if hasattr(m := importlib.import_module(t), attr)}
        if not found:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        # the module that defines the name (a constant: the first that has it), not one that imports it
        home = next((t for t, v in found.items() if getattr(v, "__module__", None) == t), next(iter(found)))
        kept = KEPT.get(self.__name__)
        if kept is not None and attr not in kept:  # a public old path: only its other names warn
            warnings.warn(moved_message(f"{self.__name__}.{attr}", f"{home}.{attr}"), DeprecationWarning, stacklevel=2)
        setattr(self, attr, found[home])
        return found[home]

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        for target in self.__targets__:
            names.update(n for n in dir(importlib.import_module(target)) if not n.startswith("_"))
        return sorted(names)


class MovedLoader(importlib.abc.Loader):
    """Creates the :class:`MovedModule` of an old path, and the code ``python -m <old path>`` runs."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return MovedModule(spec.name, MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ not in KEPT:
            warnings.warn(moved_message(module.__name__, " and ".join(MOVED[module.__name__])), DeprecationWarning,
                          stacklevel=2)

    def get_code(self, fullname: str) -> types.CodeType:
        target = MOVED[fullname][0]
        source = (f"import runpy, warnings\nwarnings.warn({moved_message(fullname, target)!r}, DeprecationWarning)\n"
                  f"runpy.run_module({target!r}, run_name='__main__', alter_sys=True)\n")
        return compile(source, f"<{fullname}>", "exec")


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, MovedLoader())


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
