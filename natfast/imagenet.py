"""ImageNet for training from scratch: the standard class-folder layout, read image by image.

    DIR/train/<class>/<image>.JPEG    DIR/val/<class>/<image>.JPEG

Images are decoded with Pillow in DataLoader worker processes, a batch at a time (never the whole
set in memory), with DARTS' ImageNet augmentation written here (torchvision is not a dependency):
training images get a random resized crop (scale 0.08-1, aspect 3/4-4/3, bilinear), a horizontal
flip and colour jitter (brightness, contrast, saturation 0.4, hue 0.2, in random order), validation
images a resize of the shorter side to size / 0.875 and a centre crop; both are normalised with
ImageNet's mean and std.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch

from .data import DataError, mix_seed

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)   # DARTS' train_imagenet.py


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading ImageNet images needs Pillow (pip install pillow)") from exc
    return Image


# ----------------------------------------------------------------------------- the folder
def find_classes(root: Path) -> List[str]:
    train = root / "train"
    if not root.is_dir():
        raise DataError(f"no ImageNet folder at {root}: expected {root}/train/<class>/*.JPEG and "
                        f"{root}/val/<class>/*.JPEG")
    if not train.is_dir():
        raise DataError(f"{root}: no train/ folder (expected {train}/<class>/*.JPEG and {root / 'val'}/<class>/*.JPEG)")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{train}: no class folders (expected {train}/<class>/*.JPEG)")
    return classes


class ImageFolder(torch.utils.data.Dataset):
    """(path, class) pairs of DIR/<split>/<class>/<image>, classes numbered in the train/ folder's
    sorted order; items are (3, size, size) float tensors and class ids."""

    def __init__(self, root: str, split: str, classes: Sequence[str], size: int = 224, train: bool = True):
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"{Path(root)}: no {split}/ folder (expected {folder}/<class>/*.JPEG)")
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in index)
        if unknown:
            raise DataError(f"{folder}: class folder(s) {', '.join(unknown[:5])} are not in train/")
        self.samples = [(str(path), index[c]) for c in classes if (folder / c).is_dir()
                        for path in sorted((folder / c).iterdir()) if path.suffix.lower() in EXTENSIONS]
        if not self.samples:
            raise DataError(f"{folder}: no images (expected <class>/*.JPEG, or {', '.join(EXTENSIONS)})")
        self.size, self.train = size, train
        self.source = f"{folder} ({len(self.samples)} images, {len(classes)} classes)"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with _pil().open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from None
        x = train_transform(img, self.size) if self.train else eval_transform(img, self.size)
        return x, label


# ----------------------------------------------------------------------------- transforms
def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def random_resized_crop_box(width: int, height: int, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """(left, top, w, h): an area of scale x the image's and an aspect ratio drawn log-uniformly,
    ten tries, then the centre crop of the ratio clamped to the range."""
    area = width * height
    for _ in range(10):
        target = area * _uniform(*scale)
        aspect = math.exp(_uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, ()).item())
            left = int(torch.randint(0, width - w + 1, ()).item())
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _to_tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def train_transform(img, size: int) -> torch.Tensor:
    Image = _pil()
    left, top, w, h = random_resized_crop_box(*img.size)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if torch.rand(()).item() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _normalize(color_jitter(_to_tensor(img), **JITTER))


def eval_transform(img, size: int) -> torch.Tensor:
    """Shorter side to round(size / 0.875) (256 for 224), then the centre size x size crop."""
    Image = _pil()
    short = round(size / 0.875)
    width, height = img.size
    scale = short / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return _normalize(_to_tensor(img.crop((left, top, left + size, top + size))))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(1, H, W) luma of a (3, H, W) RGB image in [0, 1] (ITU-R 601)."""
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x
    maxc, minc = x.max(0).values, x.min(0).values
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc])


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # The six sectors of the hue circle: which of v, q, p, t each channel is.
    table = torch.stack([torch.stack(c) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))])
    return table.gather(1, i.expand(3, 1, *i.shape)).squeeze(1)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1 - a, 1 + a] and a hue shift in
    [-hue, hue] (of the colour circle), applied in a random order, as torchvision's ColorJitter."""
    factors = [_uniform(1 - brightness, 1 + brightness), _uniform(1 - contrast, 1 + contrast),
               _uniform(1 - saturation, 1 + saturation), _uniform(-hue, hue)]
    for k in torch.randperm(4).tolist():
        f = factors[k]
        if k == 0:
            x = (x * f).clamp(0, 1)
        elif k == 1:
            x = (f * x + (1 - f) * grayscale(x).mean()).clamp(0, 1)
        elif k == 2:
            x = (f * x + (1 - f) * grayscale(x)).clamp(0, 1)
        else:
            hsv = rgb_to_hsv(x)
            x = hsv_to_rgb(torch.stack([(hsv[0] + f) % 1.0, hsv[1], hsv[2]]))
    return x


# ----------------------------------------------------------------------------- loading
def _worker_message(exc: DataError) -> str:
    """A DataError raised in a worker comes back with the worker's traceback in its message: keep
    the original one-line message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else str(exc)
    prefix = f"{DataError.__module__}.{DataError.__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


class FolderLoader:
    """Batches of one split, shuffled (training) by a generator seeded by (seed, epoch), decoded
    and augmented in `workers` processes: the `epoch(epoch)` interface of natfast.data.BatchLoader.
    `shard=(rank, world)`: this process's contiguous 1/world of every global batch (torchrun)."""

    def __init__(self, dataset: ImageFolder, batch_size: int, shuffle: bool, workers: int, seed: int = 0,
                 shard: Tuple[int, int] = (0, 1)):
        rank, world = shard
        if not 0 <= rank < world or batch_size % world:
            raise ValueError(f"shard {shard}: needs 0 <= rank < world, world dividing batch_size {batch_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.workers, self.seed, self.shard = workers, seed, shard

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.shuffle else -(-n // self.batch_size)

    def _batch_indices(self, epoch: int) -> List[List[int]]:
        """This shard's rows of each global batch of the epoch (the same order on every process)."""
        n, b = len(self.dataset), self.batch_size
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
                 if self.shuffle else torch.arange(n))
        rank, world = self.shard
        per = b // world
        return [order[i * b:(i + 1) * b][rank * per:(rank + 1) * per].tolist() for i in range(len(self))]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle and len(self) == 0:
            raise DataError(f"{self.dataset.source}: fewer images than one batch of {self.batch_size}")
        # The workers' augmentation seeds come from this generator: per epoch and process.
        seeds = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.shard[0], 1))
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self._batch_indices(epoch)[start_batch:],
                                             num_workers=self.workers, generator=seeds)
        try:
            yield from loader
        except DataError as exc:
            raise DataError(_worker_message(exc)) from None


def imagenet_loaders(root: str, batch_size: int, image_size: int = 224, workers: int = 4, seed: int = 0,
                     shard: Tuple[int, int] = (0, 1)) -> Tuple[FolderLoader, FolderLoader, int]:
    """(train loader, val loader, number of classes) of the folder `root`; `shard`: this process's
    share of every training batch (the validation split is read whole, by rank 0)."""
    if root is None:
        raise DataError("ImageNet needs --data DIR (DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG)")
    root_path = Path(os.path.expanduser(root))
    classes = find_classes(root_path)
    train = ImageFolder(str(root_path), "train", classes, image_size, train=True)
    val = ImageFolder(str(root_path), "val", classes, image_size, train=False)
    return (FolderLoader(train, batch_size, True, workers, seed, shard),
            FolderLoader(val, batch_size, False, workers, seed), len(classes))
