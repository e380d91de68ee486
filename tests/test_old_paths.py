"""Old import paths of moved modules: they keep working for one release and warn; the public API stays."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import aselect_kernels
from aselect_kernels.old_paths import KEPT, MOVED

ROOT = Path(__file__).resolve().parents[1]

#: Names users held under each old path, and the module that now defines each (written out here, not read from
#: the alias table, so that a wrong table entry fails).
OLD_NAMES = {
    "aselect_kernels.model": {"load_embedded": "aselect_kernels.embedded.model",
                              "EMBEDDED_DIR": "aselect_kernels.embedded.model",
                              "load_model": "aselect_kernels.models", "hub_offline": "aselect_kernels.hub"},
    "aselect_kernels.data": {"load_embedded_images": "aselect_kernels.embedded.data",
                             "to_model_range": "aselect_kernels.images", "load_labelled": "aselect_kernels.images",
                             "load_mnist_subset": "aselect_kernels.validation.datasets"},
    "aselect_kernels.train": {"train": "aselect_kernels.embedded.train"},
    "aselect_kernels.probe": {"fit_logistic": "aselect_kernels.validation.probe"},
    "aselect_kernels.batched_logistic": {"fit_padded": "aselect_kernels.validation.logistic"},
    "aselect_kernels.nuisance": {"add_pixel_noise": "aselect_kernels.validation.datasets"},
    "aselect_kernels.validate": {"probe_grid": "aselect_kernels.validation.grids",
                                 "load_dataset": "aselect_kernels.validation.datasets",
                                 "compare": "aselect_kernels.validation.compare",
                                 "TRIVIAL_RULES": "aselect_kernels.validation.rules",
                                 "stratified_split": "aselect_kernels.validation.splits",
                                 "summary_lines": "aselect_kernels.validation.report",
                                 "run_validation": "aselect_kernels.validation.run"},
    "aselect_kernels.tapinfo": {"list_taps": "aselect_kernels.cli.tapinfo",
                                "taps_table": "aselect_kernels.cli.tapinfo"},
    "aselect_kernels.wording": {"compared": "aselect_kernels.validation.wording"},
}


def _fresh(name: str):
    """Import ``name`` anew (as a first import would), recording the warnings."""
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        __import__(name)  # an import statement's call: the warning should point here
    return sys.modules[name], [w for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_path_gives_the_moved_objects_and_warns(old):
    module, caught = _fresh(old)
    for name, home in OLD_NAMES[old].items():
        with warnings.catch_warnings(record=True) as late:
            warnings.simplefilter("always")
            value = getattr(module, name)
        assert value is getattr(importlib.import_module(home), name), (old, name)
        caught += [w for w in late if issubclass(w.category, DeprecationWarning)]
    assert caught, f"importing {old} and its names did not warn"
    assert all(old in str(w.message) and "next release" in str(w.message) for w in caught)
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]  # points at the importer


def test_the_public_validate_path_does_not_warn():
    module, caught = _fresh("aselect_kernels.validate")
    with warnings.catch_warnings(record=True) as late:
        warnings.simplefilter("always")
        from aselect_kernels.validate import validate, validation_parts
    from aselect_kernels.validation.run import validate as new
    from aselect_kernels.validation.run import validation_parts as new_parts

    assert validate is new and validation_parts is new_parts and module.validate is new
    assert not caught and not [w for w in late if issubclass(w.category, DeprecationWarning)]
    assert KEPT["aselect_kernels.validate"] == {"validate", "validation_parts"}


def test_every_old_path_is_tested_and_unknown_names_fail():
    assert set(MOVED) == set(OLD_NAMES)
    module, _ = _fresh("aselect_kernels.probe")
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018


def test_public_api_imports():
    for name in aselect_kernels.__all__:
        assert getattr(aselect_kernels, name) is not None, name
    with pytest.raises(AttributeError):
        aselect_kernels.no_such_name  # noqa: B018


def test_old_module_runs_with_dash_m():
    proc = subprocess.run([sys.executable, "-W", "always", "-m", "aselect_kernels.train", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "usage: aselect train" in proc.stdout and "--init-from" in proc.stdout
    assert "DeprecationWarning: aselect_kernels.train moved to aselect_kernels.embedded.train" in proc.stderr
