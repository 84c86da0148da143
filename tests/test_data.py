"""natfast.data: embedded sample, folder reading, w/theta split, deterministic resumable loader."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from natfast.data import (CIFAR_MEAN, CIFAR_STD, ArrayDataset, BatchLoader, DataError, load_cifar10,
                          num_classes, split_indices)

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="module")
def train():
    return load_cifar10()


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    """Normalised (B,3,32,32) float -> (B,32,32,3) pixel values 0..255 (float)."""
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).permute(0, 2, 3, 1)


def write_batch(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def fake_batch(n: int = 4) -> dict:
    rng = np.random.default_rng(0)
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}


# ---------------------------------------------------------------------------------------------
# Embedded sample


@pytest.mark.parametrize("split,n", [("train", 2500), ("test", 500)])
def test_embedded_sample(split, n):
    d = load_cifar10(split=split)
    assert isinstance(d, ArrayDataset) and len(d) == n
    assert d.x.shape == (n, 32, 32, 3) and d.x.dtype == np.uint8
    assert d.y.shape == (n,) and d.y.dtype == np.int64
    assert np.array_equal(np.bincount(d.y, minlength=num_classes), np.full(num_classes, n // 10))
    assert "embedded" in d.source
    assert 50 < d.x.mean() < 200 and d.x.std() > 30  # real images, not blank


def test_bad_split():
    with pytest.raises(DataError, match="split"):
        load_cifar10(split="val")


# ---------------------------------------------------------------------------------------------
# Split


def test_split_indices():
    a, b = split_indices(2500, 0.4, seed=3)
    assert (len(a), len(b)) == (1000, 1500)
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(2500))  # disjoint and complete
    a2, b2 = split_indices(2500, 0.4, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    assert not np.array_equal(a, split_indices(2500, 0.4, seed=4)[0])
    with pytest.raises(ValueError):
        split_indices(10, 1.5)


# ---------------------------------------------------------------------------------------------
# Loader


def test_loader_shapes_labels_and_normalisation(train):
    idx = np.arange(100, 300)
    loader = BatchLoader(train, idx, batch_size=64, shuffle=False)
    assert len(loader) == 3
    batches = list(loader.epoch(0))
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (64,) and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(train.y[100:164]))
    # Exact: undoing the normalisation gives back the pixels.
    assert torch.allclose(unnormalise(x), torch.from_numpy(train.x[100:164]).float(), atol=1e-3)
    # Approximate: per-channel statistics of real CIFAR are near 0 mean, unit std.
    big = next(BatchLoader(train, batch_size=1000).epoch(0))[0]
    assert big.mean(dim=(0, 2, 3)).abs().max() < 0.1
    assert (big.std(dim=(0, 2, 3)) - 1).abs().max() < 0.1


def test_loader_drop_last_false(train):
    loader = BatchLoader(train, np.arange(130), batch_size=64, drop_last=False)
    sizes = [len(y) for _, y in loader.epoch(0)]
    assert len(loader) == 3 and sizes == [64, 64, 2]


def test_shuffle_covers_subset_and_differs_per_epoch(train):
    idx = np.arange(0, 2500, 5)
    loader = BatchLoader(train, idx, batch_size=50, seed=1)
    orders = [torch.cat([y for _, y in loader.epoch(e)]) for e in (0, 1)]
    assert not torch.equal(orders[0], orders[1])
    for o in orders:
        assert np.array_equal(np.sort(o.numpy()), np.sort(train.y[idx]))


def test_determinism_and_resume(train):
    def make():
        return BatchLoader(train, np.arange(640), batch_size=64, augment=True, cutout=16, seed=7)

    full = list(make().epoch(3))
    again = list(make().epoch(3))
    resumed = list(make().epoch(3, start_batch=4))
    assert len(resumed) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(full[4:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_seed = next(BatchLoader(train, np.arange(640), batch_size=64, augment=True, seed=8).epoch(3))
    assert not torch.equal(full[0][0], other_seed[0])


def test_start_batch_does_not_compute_skipped(train, monkeypatch):
    loader = BatchLoader(train, np.arange(640), batch_size=64, augment=True)
    made, real = [], loader._make_batch

    def counting(idx, epoch, batch):
        made.append(batch)
        return real(idx, epoch, batch)

    monkeypatch.setattr(loader, "_make_batch", counting)
    list(loader.epoch(0, start_batch=7))
    assert made == [7, 8, 9]


def test_augmentation_is_crop_and_flip_of_padded_image(train):
    n = 32
    plain_x, plain_y = next(BatchLoader(train, np.arange(n), batch_size=n, shuffle=False).epoch(0))
    aug_x, aug_y = next(BatchLoader(train, np.arange(n), batch_size=n, shuffle=False, augment=True).epoch(0))
    assert aug_x.shape == plain_x.shape and torch.equal(aug_y, plain_y)
    assert not torch.equal(aug_x, plain_x)
    pixels = unnormalise(aug_x).round()
    padded = np.pad(train.x[:n], ((0, 0), (4, 4), (4, 4), (0, 0))).astype(np.float32)
    for i in range(n):
        crops = [padded[i, oy:oy + 32, ox:ox + 32] for oy in range(9) for ox in range(9)]
        candidates = crops + [c[:, ::-1] for c in crops]
        assert any(np.array_equal(pixels[i].numpy(), c) for c in candidates), f"image {i} is no crop/flip"


def test_cutout_zeroes_a_square(train):
    x, _ = next(BatchLoader(train, np.arange(64), batch_size=64, shuffle=False, cutout=16).epoch(0))
    zero = (x == 0).all(dim=1)  # (B, 32, 32): pixels zeroed in all channels
    per_image = zero.sum(dim=(1, 2))
    assert (per_image >= 8 * 8).all() and (per_image <= 16 * 16).all()  # clipped at borders at most to 8x8


def test_loader_rejects_bad_arguments(train):
    with pytest.raises(ValueError):
        BatchLoader(train, [0, 5000])
    with pytest.raises(ValueError):
        BatchLoader(train, batch_size=0)
    with pytest.raises(ValueError):
        BatchLoader(train).epoch(0, start_batch=-1)


# ---------------------------------------------------------------------------------------------
# Standard folder


def test_folder_from_shared_script(tmp_path):
    script, source = SHARED_CIFAR / "make_cifar10_folder.py", SHARED_CIFAR / "cifar10_lossless_4k1k.npz"
    if not script.is_file() or not source.is_file():
        pytest.skip(f"shared CIFAR-10 data not found at {SHARED_CIFAR}")
    # The lossless subset needs only numpy and takes under a second (the full set needs Pillow, ~20 s).
    cmd = [sys.executable, str(script), str(tmp_path), "--lossless-subset"]
    subprocess.run(cmd, check=True, capture_output=True)
    with np.load(source) as z:
        for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
            for split, n in (("train", 4000), ("test", 1000)):
                d = load_cifar10(str(root), split)
                assert d.x.shape == (n, 32, 32, 3) and d.x.dtype == np.uint8 and d.y.dtype == np.int64
                assert np.array_equal(d.x, z[f"x_{split}"]) and np.array_equal(d.y, z[f"y_{split}"])
                assert "cifar-10-batches-py" in d.source


def test_folder_reads_all_train_batches_in_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = [fake_batch(3) for _ in range(5)]
    for i, b in enumerate(batches):
        b["data"] = b["data"] + np.uint8(i)
        write_batch(folder / f"data_batch_{i + 1}", b)
    d = load_cifar10(str(tmp_path))
    expect = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(d.x, expect) and len(d) == 15
    assert d.x[0, 0, 0, 1] == batches[0]["data"][0, 1024]  # CHW planes -> HWC: green plane starts at 1024


def test_folder_accepts_bytes_keys(tmp_path):
    b = fake_batch()
    write_batch(tmp_path / "test_batch", {b"data": b["data"], b"labels": b["labels"]})
    assert len(load_cifar10(str(tmp_path), "test")) == 4


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        load_cifar10(str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "make_cifar10_folder.py" in msg and "--data" in msg
    assert "kriz/cifar" in msg and "--download" in msg   # the ways open to users outside the workspace


def test_folder_without_the_split(tmp_path):
    write_batch(tmp_path / "test_batch", fake_batch())
    with pytest.raises(DataError, match="no train batch file"):
        load_cifar10(str(tmp_path), "train")


def test_corrupt_batch_file(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch file") as e:
        load_cifar10(str(tmp_path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("obj,problem", [
    ([1, 2, 3], "expected a pickled dict"),
    ({"pixels": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, "missing key 'data'"),
    ({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, r"shape \(N, 3072\)"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "'labels' must be 2 integers"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "labels outside"),
])
def test_malformed_batch(tmp_path, obj, problem):
    write_batch(tmp_path / "test_batch", obj)
    with pytest.raises(DataError, match=problem) as e:
        load_cifar10(str(tmp_path), "test")
    assert str(tmp_path / "test_batch") in str(e.value)


class _Exploit:
    """Unpickling this would create a directory: the loader must refuse before running it."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    write_batch(tmp_path / "test_batch", {"data": _Exploit(marker), "labels": []})
    with pytest.raises(DataError, match="refusing to load global"):
        load_cifar10(str(tmp_path), "test")
    assert not marker.exists()


def test_download_without_torchvision_is_a_clear_error(tmp_path):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed: the download would go to the network")
    except ImportError:
        pass
    with pytest.raises(DataError, match="needs torchvision"):
        load_cifar10(str(tmp_path), download=True)
