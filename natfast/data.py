"""CIFAR-10 loading, the seeded w/theta split and a deterministic, resumable batch loader.

Two sources: the embedded sample (`natfast/assets/cifar10_sample.npz`, real CIFAR-10 pixels, so
the package runs with no data folder) and the standard python folder `cifar-10-batches-py/`.
Images stay uint8 NHWC in memory; each batch is augmented and normalised in torch when it is
made, and its content is a pure function of (seed, epoch, batch index).
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

num_classes = 10
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

SAMPLE_PATH = Path(__file__).resolve().parent / "assets" / "cifar10_sample.npz"
FOLDER_NAME = "cifar-10-batches-py"
SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
HOW_TO_GET_DATA = (
    "get the standard folder (CIFAR-10's python version from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "or `natfast search --download`, which needs torchvision and internet; in natfast's workspace "
    "`python shared/data/cifar10/make_cifar10_folder.py DEST` writes it offline) and pass `--data DEST`, "
    "or pass no data folder to use the embedded sample"
)


class DataError(ValueError):
    """Bad input data: a missing folder or a malformed batch file. The message names the path."""


@dataclass
class ArrayDataset:
    x: np.ndarray  # (N, 32, 32, 3) uint8, RGB
    y: np.ndarray  # (N,) int64 in 0..9
    source: str  # short description: "embedded sample (2500 train)" or the folder path

    def __len__(self) -> int:
        return len(self.y)


# ---------------------------------------------------------------------------------------------
# Loading


def load_cifar10(root: str | None = None, split: str = "train", download: bool = False) -> ArrayDataset:
    """The embedded sample (root None) or the `cifar-10-batches-py` folder at / under `root`;
    `download=True` fetches the folder into `root` with torchvision when it is missing (online)."""
    if split not in SPLIT_FILES:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if root is None:
        return _load_sample(split)
    if download:
        _download(Path(root))
    folder = _find_folder(Path(root))
    # Train batches that exist are all read: a subset folder (e.g. data_batch_1 only) is valid.
    paths = [folder / name for name in SPLIT_FILES[split] if (folder / name).is_file()]
    if not paths:
        raise DataError(f"{folder}: no {split} batch file found (expected {', '.join(SPLIT_FILES[split])})")
    parts = [_read_batch(p) for p in paths]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ArrayDataset(x, y, f"{folder} ({len(y)} {split})")


def _download(root: Path) -> None:
    """torchvision writes the standard folder; it is the only optional dependency, used only here."""
    if any((root / FOLDER_NAME / name).is_file() for name in SPLIT_FILES["test"]):
        return
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as e:
        raise DataError(f"downloading CIFAR-10 into {root} needs torchvision (pip install torchvision); "
                        f"{HOW_TO_GET_DATA}") from e
    try:
        for train in (True, False):
            CIFAR10(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types; the message says which
        raise DataError(f"downloading CIFAR-10 into {root} failed ({type(e).__name__}: {e}); {HOW_TO_GET_DATA}") from None


def _load_sample(split: str) -> ArrayDataset:
    try:
        with np.load(SAMPLE_PATH, allow_pickle=False) as z:
            x, y = z[f"x_{split}"], z[f"y_{split}"].astype(np.int64)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{SAMPLE_PATH}: embedded sample unreadable ({e}); reinstall natfast") from e
    return ArrayDataset(x, y, f"embedded sample ({len(y)} {split})")


def _find_folder(root: Path) -> Path:
    """Accept both the parent of `cifar-10-batches-py` and the folder itself."""
    for candidate in (root / FOLDER_NAME, root):
        if any((candidate / name).is_file() for names in SPLIT_FILES.values() for name in names):
            return candidate
    raise DataError(
        f"no CIFAR-10 data at {root}: looked for data_batch_1..5 / test_batch in {root / FOLDER_NAME} "
        f"and in {root}; {HOW_TO_GET_DATA}"
    )


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled dict of numpy arrays needs, so a file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # numpy's pickle protocol 5 form
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how python 3 writes bytes at protocol <= 2; only re-encodes a string
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (x (N,32,32,3) uint8, y (N,) int64)."""
    try:
        with open(path, "rb") as f:
            # latin1 decodes the python-2 strings of the original files (numpy needs it for their data).
            d = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as e:  # any failure inside pickle means a malformed file
        raise DataError(f"{path}: not a readable CIFAR-10 batch file ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: missing key 'data' or 'labels' (keys: {sorted(map(str, d))})")
    data, labels = d["data"], np.asarray(d["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {desc}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}")
    # Rows are channel planes R, G, B of 32x32 each: CHW -> HWC.
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Splitting and batching


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64), so nearby (epoch, batch) never collide."""
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & mask)) + 0x9E3779B97F4A7C15) & mask
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        h ^= h >> 31
    return h >> 1


def split_indices(n: int, fraction: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed seeded split of range(n): the first `fraction` (for the weights w), the rest (for theta)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    k = int(round(fraction * n))
    return perm[:k], perm[k:]


_PERM_STREAM, _AUG_STREAM = 0, 1


class BatchLoader:
    """Batches of `(x float32 (B,3,32,32) normalised, y int64 (B,))` over a subset of a dataset.

    `augment` applies the standard CIFAR crop (4-pixel zero padding) and horizontal flip;
    `cutout` > 0 zeroes a random square of that side after normalisation (DARTS uses 16).
    `shard=(rank, world)`: each batch is this rank's contiguous 1/world of the global batch of
    `batch_size` (which world must divide), exactly those samples of the global batch, augmented
    the same way.
    """

    def __init__(self, dataset: ArrayDataset, indices: Sequence[int] | np.ndarray | None = None,
                 batch_size: int = 64, shuffle: bool = True, augment: bool = False, cutout: int = 0,
                 drop_last: bool = True, seed: int = 0, shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rank, world = shard
        if not 0 <= rank < world or batch_size % world or (world > 1 and not drop_last):
            raise ValueError(f"shard {shard}: needs 0 <= rank < world, world dividing batch_size {batch_size} "
                             f"and drop_last (every global batch full)")
        if cutout < 0:
            raise ValueError(f"cutout must be >= 0, got {cutout}")
        idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(dataset))):
            raise ValueError(f"indices must be a 1-d array within 0..{len(dataset) - 1}")
        self.dataset, self.indices = dataset, idx
        self.batch_size, self.shuffle, self.augment, self.cutout = batch_size, shuffle, augment, cutout
        self.drop_last, self.seed, self.shard = drop_last, seed, shard
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        # (x/255 - mean)/std as a single multiply-add.
        self._scale = 1.0 / (255.0 * std)
        self._shift = -torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1) / std

    def __len__(self) -> int:
        n, b = len(self.indices), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """That epoch's batches from `start_batch` on; skipped batches are never computed."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, _PERM_STREAM))
            order = order[torch.randperm(len(order), generator=g).numpy()]
        return self._batches(order, epoch, start_batch)

    def _batches(self, order: np.ndarray, epoch: int, start_batch: int):
        b = self.batch_size
        for i in range(start_batch, len(self)):
            idx = order[i * b:(i + 1) * b]
            rows = self._shard_rows(len(idx))
            y = torch.from_numpy(self.dataset.y[idx[rows]].astype(np.int64, copy=False))
            yield self._make_batch(idx, epoch, i), y

    def _shard_rows(self, n: int) -> slice:
        rank, world = self.shard
        return slice(rank * n // world, (rank + 1) * n // world)

    def _make_batch(self, idx: np.ndarray, epoch: int, batch: int) -> torch.Tensor:
        """This shard's rows of the global batch `idx`: the random draws are made for the whole
        global batch, so a shard's samples are augmented exactly as in the global batch."""
        rows = self._shard_rows(len(idx))
        x = torch.from_numpy(self.dataset.x[idx[rows]])  # (B, 32, 32, 3) uint8
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, batch, _AUG_STREAM))
        if self.augment:
            x = _crop_flip(x, g, draws=len(idx), keep=rows)
        # Permute while still uint8 (4x cheaper to copy), then one float multiply-add.
        x = x.permute(0, 3, 1, 2).contiguous().float().mul_(self._scale).add_(self._shift)
        if self.cutout:
            x.mul_(_cutout_mask(len(idx), self.cutout, g, keep=rows))
        return x


def _crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4, draws: int = 0,
               keep: slice = slice(None)) -> torch.Tensor:
    """Random 32x32 crop of the zero-padded NHWC batch plus random flip, as one gather. The
    random offsets are drawn for `draws` samples (default len(x)); x holds those `keep` selects."""
    n, h, w, c = x.shape
    padded = x.new_zeros((n, h + 2 * pad, w + 2 * pad, c))
    padded[:, pad:pad + h, pad:pad + w] = x
    draws = draws or n
    oy = torch.randint(0, 2 * pad + 1, (draws, 1), generator=g)[keep]
    ox = torch.randint(0, 2 * pad + 1, (draws, 1), generator=g)[keep]
    flip = (torch.rand(draws, 1, generator=g) < 0.5)[keep]
    rows = oy + torch.arange(h)
    cols = ox + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _cutout_mask(n: int, size: int, g: torch.Generator, hw: int = 32, keep: slice = slice(None)) -> torch.Tensor:
    """(n,1,hw,hw) float mask, 0 inside a size x size square centred anywhere (clipped at borders);
    drawn for n samples, returned for those `keep` selects."""
    cy = torch.randint(0, hw, (n, 1), generator=g)[keep]
    cx = torch.randint(0, hw, (n, 1), generator=g)[keep]
    r = torch.arange(hw)
    in_y = (r >= cy - size // 2) & (r < cy - size // 2 + size)  # (n, hw)
    in_x = (r >= cx - size // 2) & (r < cx - size // 2 + size)
    return (~(in_y[:, :, None] & in_x[:, None, :])).unsqueeze(1).float()
