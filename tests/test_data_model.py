"""Tests for the embedded data (idx parsing, shipped subset, user images) and the embedded DiT."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aselect_kernels import images, models
from aselect_kernels.embedded import data, model
from aselect_kernels.embedded.train import _eval_batch, eval_loss, main_train, train


def _write_idx(path: Path, arr: np.ndarray, type_code: int = 0x08, compress: bool = True) -> None:
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _fake_fashion_root(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return root


TINY = {"num_layers": 1, "num_attention_heads": 1, "attention_head_dim": 32}


# ---------------------------------------------------------------- idx / Fashion-MNIST


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    _write_idx(tmp_path / "b", arr, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "b"), arr)
    ints = np.array([1, -2, 70000], dtype=">i4")
    _write_idx(tmp_path / "c", ints, type_code=0x0C, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "c"), [1, -2, 70000])


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4,), np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        data.read_idx(tmp_path / "short")


def test_load_fashion_mnist_from_idx(tmp_path: Path) -> None:
    root = _fake_fashion_root(tmp_path)
    x, y = data.load_fashion_mnist("train", root)
    assert x.shape == (40, 28, 28) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == [i % 10 for i in range(40)]
    x, y = data.load_fashion_mnist("test", root)
    assert x.shape == (20, 28, 28)
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("val", root)


def test_load_fashion_mnist_missing_names_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        data.load_fashion_mnist("train", tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_fashion_mnist_checks_magic(tmp_path: Path) -> None:
    root = _fake_fashion_root(tmp_path)
    # swap: label file written as rank-3 images -> magic 2051 where 2049 is expected
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros((40, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="magic"):
        data.load_fashion_mnist("train", root)


def test_embedded_subset_shapes_and_balance() -> None:
    for split, per_class in (("train", 400), ("test", 100)):
        x, y = data.load_embedded_images(split)
        assert x.dtype == np.uint8 and x.shape == (10 * per_class, 28, 28)
        assert y.dtype == np.int64 and np.bincount(y, minlength=10).tolist() == [per_class] * 10
        assert x.max() > 200 and x.min() == 0  # real images, not blank
    assert (data.SUBSET_PATH.parent / "FASHION_MNIST_LICENSE.txt").is_file()


def test_build_subset(tmp_path: Path) -> None:
    root = _fake_fashion_root(tmp_path / "root", n_train=60, n_test=30)
    out = data.build_subset(tmp_path / "s.npz", root=root, train_per_class=3, test_per_class=2)
    with np.load(out) as z:
        assert z["train_images"].shape == (30, 28, 28)
        assert np.bincount(z["test_labels"]).tolist() == [2] * 10
    with pytest.raises(ValueError, match="class"):
        data.build_subset(tmp_path / "t.npz", root=root, train_per_class=7)


def test_to_model_range() -> None:
    x = images.to_model_range(np.array([0, 255, 127], dtype=np.uint8))
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.tensor([-1.0, 1.0, 127 / 127.5 - 1]))


# ---------------------------------------------------------------- user images


def test_load_images_npz_and_npy(tmp_path: Path) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (5, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(5))
    x, y = images.load_images(tmp_path / "a.npz")
    assert x.shape == (5, 1, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert y is not None and y.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 3, 8, 8), np.float32), y=[1, 2])
    x, y = images.load_images(tmp_path / "b.npz")
    assert x.shape == (2, 3, 8, 8) and y is not None
    nhwc = np.random.default_rng(1).integers(0, 256, (4, 8, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", nhwc)  # NHWC -> NCHW, checked pixel by pixel
    x, y = images.load_images(tmp_path / "c.npy")
    assert x.shape == (4, 3, 8, 6) and y is None
    expected = torch.from_numpy(nhwc.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1).float()
    torch.testing.assert_close(x, expected)


def test_load_images_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "rank2.npy", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="rank"):
        images.load_images(tmp_path / "rank2.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        images.load_images(tmp_path / "empty.npy")
    np.savez(tmp_path / "nokey.npz", pixels=np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="'images' or 'x'"):
        images.load_images(tmp_path / "nokey.npz")
    np.savez(tmp_path / "badlab.npz", images=np.zeros((3, 8, 8), np.uint8), labels=[0, 1])
    with pytest.raises(ValueError, match="labels"):
        images.load_images(tmp_path / "badlab.npz")
    np.save(tmp_path / "range.npy", np.full((1, 8, 8), 7.0, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        images.load_images(tmp_path / "range.npy")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported"):
        images.load_images(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        images.load_images(tmp_path / "missing.npz")


def test_load_images_png_folder(tmp_path: Path) -> None:
    from PIL import Image

    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 10), 50 * i, np.uint8), mode="L").save(gray / f"{i}.png")
    x, y = images.load_images(gray)
    assert x.shape == (3, 1, 12, 10) and y is None
    torch.testing.assert_close(x[1].unique(), torch.tensor([50 / 127.5 - 1]))

    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), mode="RGB").save(rgb / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(rgb / "b.jpg")
    x, _ = images.load_images(rgb)
    assert x.shape == (2, 3, 8, 8)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="different sizes"):
        images.load_images(mixed)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no PNG"):
        images.load_images(empty)


# ---------------------------------------------------------------- model


def test_null_class_matches_diffusers_table() -> None:
    m = model.build_model(TINY)
    table = m.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
    assert table.num_embeddings == model.NUM_CLASSES + 1 == model.NULL_CLASS + 1


def test_build_model_forward_with_null_class() -> None:
    torch.manual_seed(0)
    m = model.build_model(TINY).eval()
    x = torch.randn(3, 1, 28, 28)
    labels = torch.tensor([0, 9, model.NULL_CLASS])
    with torch.no_grad():
        out = m(x, timestep=torch.tensor([1, 500, 999]), class_labels=labels).sample
    assert out.shape == (3, 1, 28, 28) and torch.isfinite(out).all()
    cfg = model.EMBEDDED_CONFIG
    assert cfg["num_layers"] >= 6 and cfg["patch_size"] == 2 and cfg["in_channels"] == cfg["out_channels"] == 1


def test_set_label_dropout() -> None:
    m = model.build_model(TINY).train()
    model.set_label_dropout(m, 0.0)
    emb = m.transformer_blocks[0].norm1.emb.class_embedder
    labels = torch.zeros(64, dtype=torch.long)
    torch.testing.assert_close(emb(labels), emb(labels))  # no random drop in train mode any more


def test_load_model_local_folder(tmp_path: Path) -> None:
    m = model.build_model(TINY)
    m.save_pretrained(str(tmp_path / "m"))
    loaded = models.load_model(str(tmp_path / "m"))
    assert type(loaded).__name__ == "DiTTransformer2DModel" and not loaded.training
    torch.testing.assert_close(loaded.proj_out_2.weight, m.proj_out_2.weight)
    m.save_pretrained(str(tmp_path / "pipe" / "transformer"))  # pipeline layout: transformer/ subfolder
    assert models.load_model(str(tmp_path / "pipe")).config.num_layers == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load_model(str(tmp_path / "empty"))


def test_train_smoke(tmp_path: Path) -> None:
    root = _fake_fashion_root(tmp_path / "fm")
    out = tmp_path / "run"
    log = train(out, minutes=None, max_steps=3, batch_size=8, num_layers=1, hidden=32, eval_size=16,
                log_every=1, warmup_steps=2, data_root=root)
    assert log["steps"] == 3 and len(log["loss_curve"]) == 3
    assert all(np.isfinite(r["loss"]) for r in log["loss_curve"])
    assert np.isfinite(log["eval"]["loss_untrained"]) and np.isfinite(log["eval"]["loss_trained"])
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "MODEL_CARD.md", "training_log.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "training_log.json").read_text())["batch_size"] == 8
    card = (out / "MODEL_CARD.md").read_text()
    assert "Zalando" in card and "eval loss" in card
    reloaded = models.load_model(str(out))
    assert reloaded.config.num_layers == 1
    with pytest.raises(ValueError):
        train(out, minutes=None, max_steps=None)


def test_train_resume_keeps_weights_and_history(tmp_path: Path) -> None:
    root = _fake_fashion_root(tmp_path / "fm")
    first = tmp_path / "first"
    train(first, minutes=None, max_steps=2, batch_size=4, num_layers=1, hidden=32, eval_size=8, data_root=root)
    before = {k: v.clone() for k, v in models.load_model(str(first)).state_dict().items()}
    same = tmp_path / "same"
    log = train(same, minutes=None, max_steps=0, eval_size=8, data_root=root, init_from=first)
    after = models.load_model(str(same)).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert log["history"][0]["steps"] == 2 and log["init_from"] == str(first)
    cont = tmp_path / "cont"
    log = train(cont, minutes=None, max_steps=2, batch_size=4, eval_size=8, data_root=root, init_from=same,
                checkpoint_minutes=1e-9, seed=1)
    assert [h["steps"] for h in log["history"]] == [2, 0] and log["steps"] == 2
    assert json.loads((cont / "checkpoint" / "checkpoint.json").read_text())["step"] == 2
    card = (cont / "MODEL_CARD.md").read_text()
    assert "Trained in stages" in card and "In all: 4 optimizer steps" in card
    assert any(not torch.equal(before[k], v) for k, v in models.load_model(str(cont)).state_dict().items())
    for k, v in models.load_model(str(first)).state_dict().items():  # the source folder is left as it was
        assert torch.equal(before[k], v)
    with pytest.raises(ValueError, match="both"):
        train(first, minutes=None, max_steps=1, data_root=root, init_from=first)
    with pytest.raises(ValueError, match="num_layers=1"):
        train(tmp_path / "x", minutes=None, max_steps=1, data_root=root, init_from=first, num_layers=2)
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        train(tmp_path / "y", minutes=None, max_steps=1, data_root=root, init_from=tmp_path / "missing")


def test_main_train_cli(tmp_path: Path) -> None:
    root = _fake_fashion_root(tmp_path / "fm")
    argv = [str(tmp_path / "cli"), "--minutes", "0", "--max-steps", "2", "--num-layers", "1", "--hidden", "32",
            "--batch-size", "4", "--no-ema", "--data-root", str(root)]
    log = main_train(argv)
    assert log["steps"] == 2 and log["saved_weights"] == "raw"
    assert log["command"].startswith("python -m aselect_kernels.embedded.train ") and "--max-steps 2" in log["command"]


# ---------------------------------------------------------------- shipped weights


@pytest.mark.skipif(
    not (model.EMBEDDED_DIR / "diffusion_pytorch_model.safetensors").is_file(), reason="embedded weights not built"
)
def test_embedded_model_beats_untrained() -> None:
    from diffusers import DDPMScheduler

    trained = model.load_embedded()
    assert not trained.training
    assert trained.config.num_layers == model.EMBEDDED_CONFIG["num_layers"]
    torch.manual_seed(0)
    untrained = model.build_model().eval()
    x_te, y_te = data.load_embedded_images("test")
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    batch = _eval_batch(x_te, y_te, 64, seed=1, num_train_timesteps=1000)
    loss_trained = eval_loss(trained, scheduler, batch)
    loss_untrained = eval_loss(untrained, scheduler, batch)
    assert loss_trained < 0.5 * loss_untrained
    assert loss_trained < 0.15
    assert (model.EMBEDDED_DIR / "MODEL_CARD.md").is_file()
    assert (models.load_model("embedded").proj_out_2.weight == trained.proj_out_2.weight).all()
