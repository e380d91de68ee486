"""Validation on the user's own model and labelled images: loading, splitting, the API and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aselect_kernels.cli import main
from aselect_kernels.images import load_labelled, to_model_range
from aselect_kernels.validate import validate
from aselect_kernels.validation.grids import probe_grid
from aselect_kernels.validation.packed import grid_correct
from aselect_kernels.validation.splits import stratified_split

from tiny_models import tiny_dit

TINY = {"timesteps": [0, 500], "taps": "block_out:1", "n_select": 4, "progress": False}
CLI_TINY = ["--timesteps", "0,500", "--taps", "block_out:1", "--no-progress"]


def _data(n: int, seed: int, size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images of 3 classes (a bright bar at a class-dependent row), labels 3/7/9, pixel masks."""
    rng = np.random.default_rng(seed)
    labels = np.array([3, 7, 9])[np.arange(n) % 3]
    u8 = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    masks = np.zeros((n, size, size), dtype=np.int64)
    for i, lab in enumerate(labels):
        row = {3: 1, 7: 4, 9: 6}[int(lab)]
        u8[i, row: row + 2] = 230
        masks[i, row: row + 2] = 1 + [3, 7, 9].index(int(lab))
    return u8, labels, masks


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """A folder with the tiny model (``dit8``) and labelled .npz files."""
    folder = tmp_path_factory.mktemp("npz")
    tiny_dit(sample=8).save_pretrained(folder / "dit8")
    u8, labels, masks = _data(21, 0)
    np.savez(folder / "train.npz", images=u8, labels=labels, masks=masks)
    u8, labels, masks = _data(9, 1)
    np.savez(folder / "test.npz", images=u8, labels=labels, masks=masks)
    np.savez(folder / "nomask.npz", images=u8, labels=labels)
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("folder") / "shapes"
    u8, labels, _ = _data(12, 2)
    for i, (img, lab) in enumerate(zip(u8, labels, strict=True)):
        d = root / f"class_{lab}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}.png")
    return root, u8, labels


def test_stratified_split_holds_out_each_class():
    labels = torch.tensor([0] * 2 + [1] * 5 + [4] * 10 + [7] * 13)[torch.randperm(30, generator=torch.Generator()
                                                                                .manual_seed(0))]
    tr, te = stratified_split(labels, 0.3, seed=3)
    assert sorted(torch.cat([tr, te]).tolist()) == list(range(30))
    for k, count in ((0, 2), (1, 5), (4, 10), (7, 13)):
        want = min(max(round(0.3 * count), 1), count - 1)
        assert int((labels[te] == k).sum()) == want and int((labels[tr] == k).sum()) == count - want
    again = stratified_split(labels, 0.3, seed=3)
    assert torch.equal(again[1], te) and not torch.equal(stratified_split(labels, 0.3, seed=4)[1], te)
    with pytest.raises(ValueError, match="class 5 has 1 image"):
        stratified_split(torch.tensor([0, 0, 5]), 0.5)
    with pytest.raises(ValueError, match="test fraction"):
        stratified_split(labels, 1.0)


def test_load_labelled_npz_and_image_folder(npz, image_folder, tmp_path):
    data = load_labelled(npz / "train.npz")
    u8, labels, masks = _data(21, 0)
    assert torch.equal(data.images, to_model_range(u8)[:, None]) and data.labels.tolist() == labels.tolist()
    assert data.masks is not None and torch.equal(data.masks, torch.from_numpy(masks)) and data.classes is None
    root, u8, labels = image_folder
    data = load_labelled(root)
    assert data.classes == ["class_3", "class_7", "class_9"]
    order = sorted(range(12), key=lambda i: (f"class_{labels[i]}", i))  # folder by folder, files by name
    assert torch.equal(data.images, to_model_range(u8[order])[:, None])
    assert data.labels.tolist() == [["class_3", "class_7", "class_9"].index(f"class_{labels[i]}") for i in order]
    bad = {"nolabels.npz": {"images": u8}, "floatlab.npz": {"images": u8, "labels": labels * 0.5},
           "maskshape.npz": {"images": u8, "labels": labels, "masks": np.zeros((12, 4, 4), dtype=np.int64)}}
    for name, arrays in bad.items():
        np.savez(tmp_path / name, **arrays)
    for name, needle in (("nolabels.npz", "missing \\['labels'\\]"), ("floatlab.npz", "labels must be integers"),
                         ("maskshape.npz", "masks must be")):
        with pytest.raises(ValueError, match=needle):
            load_labelled(tmp_path / name)
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="one subfolder of images per class"):
        load_labelled(tmp_path / "flat")


def test_validate_api_matches_a_direct_probe_grid(npz):
    model = tiny_dit(sample=8)
    data = load_labelled(npz / "train.npz")
    report = validate(model, data.images, data.labels, masks=data.masks, test_fraction=0.25, seed=1, **TINY)
    assert report["n_train"] + report["n_test"] == 21 and report["classes"] == [3, 7, 9]
    assert "dense" in report and report["dense"]["grid"]["metric_name"] == "mIoU"
    tr, te = stratified_split(data.labels, 0.25, seed=1)
    y = torch.searchsorted(torch.tensor([3, 7, 9]), data.labels)
    grid = probe_grid(model, (data.images[tr], y[tr]), (data.images[te], y[te]), [0, 500], "block_out:1", 3,
                      seed=1, progress=False)
    np.testing.assert_array_equal(np.asarray(report["classification"]["grid"]["metric"]), grid.metric)
    correct, floor = grid_correct(json.loads(json.dumps(report))["classification"])  # as written to JSON
    np.testing.assert_array_equal(correct, grid.correct)
    np.testing.assert_array_equal(floor, grid.floor_correct)
    assert correct.shape == (2, 1, len(te)) and "correct" not in report["dense"]["grid"]
    no_mask = validate(model, data.images, data.labels, **TINY)
    assert "dense" not in no_mask and no_mask["dense_note"].startswith("dense probe skipped")
    test = load_labelled(npz / "test.npz")
    separate = validate(model, data.images, data.labels, test_images=test.images, test_labels=test.labels,
                        dense=False, n_test=5, **TINY)
    assert separate["n_train"] == 21 and separate["n_test"] == 5 and "dense_note" not in separate


def test_cli_validate_npz_with_masks_and_separate_test_set(npz, tmp_path, capsys):
    out = tmp_path / "v"
    rc = main(["validate", "--model", str(npz / "dit8"), "--images", str(npz / "train.npz"), "--test-images",
               str(npz / "test.npz"), "--n-select", "4", "--out", str(out), *CLI_TINY,
               "--taps", "transformer_blocks.0,transformer_blocks.1.ff"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "validation_train.json").read_text())
    assert report["classification"]["grid"]["taps"] == ["transformer_blocks.0", "transformer_blocks.1.ff"]
    assert report["dense"]["grid"]["taps"] == ["transformer_blocks.0"]  # the block output among the taps
    assert report["n_train"] == 21 and report["n_test"] == 9 and report["classes"] == [3, 7, 9]
    assert report["dense"]["n_train"] == 21 and (out / "validation_train_dense.png").is_file()
    assert report["classification"]["grid"]["fit"] == "batched"


def test_cli_validate_and_probe_image_folder(npz, image_folder, tmp_path, capsys):
    root, _, _ = image_folder
    out = tmp_path / "f"
    rc = main(["validate", "--model", str(npz / "dit8"), "--images", str(root), "--out", str(out), "--one-at-a-time",
               *CLI_TINY])
    text = capsys.readouterr().out
    assert rc == 0 and "dense probe skipped: no pixel masks given" in text
    report = json.loads((out / "validation_shapes.json").read_text())
    assert report["n_train"] + report["n_test"] == 12 and report["n_select"] == report["n_train"]
    assert report["classification"]["grid"]["fit"] == "one_at_a_time" and "dense" not in report
    rc = main(["probe", "--model", str(npz / "dit8"), "--images", str(root), "--out", str(out), *CLI_TINY])
    assert rc == 0 and "3 classes" in capsys.readouterr().out
    probe = json.loads((out / "probe.json").read_text())
    assert probe["n_train"] == report["n_train"] and probe["metric"] == report["classification"]["grid"]["metric"]


@pytest.mark.parametrize("extra,needle", [
    (["--dataset", "digits"], "either --dataset or --images"),
    (["--test-fraction", "1.5"], "--test-fraction must lie in (0, 1)"),
    (["--n-select", "0"], "--n-select: must be >= 1"),
    (["--n-select", "99"], "n_select must be in [2,"),
    (["--n-train", "30"], "n_train must be in [1,"),
    (["--timesteps", "0,abc"], "abc"),
    (["--taps", "no.such.module"], "no.such.module"),
    (["--test-images", "MISSING.npz"], "--test-images not found"),
    (["--test-images", "NOMASK"], "masks for both"),
])
def test_cli_argument_errors_come_before_any_computation(npz, tmp_path, capsys, monkeypatch, extra,
                                                         needle):
    from aselect_kernels.validation import grids, run

    def computed(*args, **kwargs):
        raise AssertionError("computation started before the arguments were checked")

    monkeypatch.setattr(run, "select_timestep", computed)
    monkeypatch.setattr(grids, "capture_features", computed)
    extra = [str(npz / "nomask.npz") if e == "NOMASK" else e for e in extra]
    rc = main(["validate", "--model", str(npz / "dit8"), "--images", str(npz / "train.npz"), "--out",
               str(tmp_path / "x"), *CLI_TINY, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_cli_rejects_images_that_do_not_fit_the_model(npz, tmp_path, capsys):
    u8, labels, _ = _data(9, 3, size=9)
    np.savez(tmp_path / "big.npz", images=u8, labels=labels)
    rc = main(["probe", "--model", str(npz / "dit8"), "--images", str(tmp_path / "big.npz"), *CLI_TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "are 9x9, but DiTTransformer2DModel (patch 2) cuts them into 2x2 patches" in err
    rc = main(["validate", "--model", str(npz / "dit8"), "--test-images", str(tmp_path / "big.npz"), *CLI_TINY])
    assert rc == 2 and "--test-images needs --images" in capsys.readouterr().err


def test_use_labels_conditions_on_the_labels_as_given(npz, monkeypatch):
    from aselect_kernels.validation import grids

    seen = []
    real = grids.capture_features

    def spy(model, images, *args, conditioning=None, **kwargs):
        seen.append((images.shape[0], conditioning.class_labels.cpu()))
        return real(model, images, *args, conditioning=conditioning, **kwargs)

    monkeypatch.setattr(grids, "capture_features", spy)
    data, test = load_labelled(npz / "train.npz"), load_labelled(npz / "test.npz")
    report = validate(tiny_dit(sample=8), data.images, data.labels, test_images=test.images,
                      test_labels=test.labels, dense=False, use_labels=True, **TINY)
    assert report["use_labels"] and len(seen) == 1 and seen[0][0] == 30
    assert seen[0][1].tolist() == data.labels.tolist() + test.labels.tolist()  # 3, 7, 9: not the class indices
