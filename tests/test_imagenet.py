"""ImageNet: the evaluation network, the class-folder reader, its augmentation, `natfast train
--dataset imagenet` on a tiny generated folder."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natfast import imagenet
from natfast.cli import main
from natfast.data import DataError
from natfast.flops import count
from natfast.genotype import get_named
from natfast.network import Network

# Pillow is the optional `imagenet` extra (requirements.txt installs it for the tests).
Image = pytest.importorskip("PIL.Image", reason="Pillow (the imagenet extra) is not installed")

CLASSES = ("cat", "dog", "eel")


def make_folder(root: Path, per_class=(4, 2), sizes=((48, 40), (37, 60), (64, 64), (50, 33))) -> Path:
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[(i + c) % len(sizes)]
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.JPEG", format="JPEG")
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "imagenet")


# ----------------------------------------------------------------------------- the network
def test_imagenet_network_with_auxiliary_head_trains_a_step():
    genotype, family = get_named("NAT_DARTS")
    torch.manual_seed(0)
    net = Network(genotype, family, channels=8, layers=3, num_classes=5, auxiliary=True, stem="imagenet").train()
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([1, 4])
    logits, aux = net.forward_with_aux(x)
    assert logits.shape == aux.shape == (2, 5)
    (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="ImageNet auxiliary head needs a feature map of at least 7x7"):
        net.forward_with_aux(torch.randn(2, 3, 96, 96))
    with pytest.raises(ValueError, match="stem must be one of cifar, imagenet"):
        Network(genotype, family, stem="svhn")


def test_imagenet_cost_of_darts_equals_the_authors_count():
    """test_zoo.py holds the whole table; DARTS here without the slow marker."""
    darts, family = get_named("DARTS")
    cost = count(darts, family, madds="authors", dataset="imagenet")
    assert (cost.params, cost.madds) == (4718752, 529143552)
    executed = count(darts, family, dataset="imagenet")
    assert executed.madds == cost.madds + 768 * 1000            # plus the classifier


# ----------------------------------------------------------------------------- transforms
def test_hsv_round_trip_and_hue_rotation():
    x = torch.rand(3, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(imagenet.hsv_to_rgb(imagenet.rgb_to_hsv(x)), x)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    hsv = imagenet.rgb_to_hsv(red)
    shifted = imagenet.hsv_to_rgb(torch.stack([(hsv[0] + 1 / 3) % 1, hsv[1], hsv[2]]))
    torch.testing.assert_close(shifted, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1))
    gray = torch.full((3, 2, 2), 0.5)
    torch.testing.assert_close(imagenet.rgb_to_hsv(gray)[:2], torch.zeros(2, 2, 2))


def test_color_jitter_strength_zero_is_the_identity_and_factors_stay_in_range():
    x = torch.rand(3, 8, 8)
    torch.testing.assert_close(imagenet.color_jitter(x, 0, 0, 0, 0), x)
    torch.manual_seed(0)
    for _ in range(20):
        y = imagenet.color_jitter(x, **imagenet.JITTER)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    # Brightness alone scales the image by a factor in [0.6, 1.4].
    dark = x * 0.5
    ratio = imagenet.color_jitter(dark, 0.4, 0, 0, 0) / dark
    assert 0.6 - 1e-6 <= ratio.min() and ratio.max() <= 1.4 + 1e-6 and ratio.std() < 1e-5


def test_random_resized_crop_box():
    torch.manual_seed(0)
    for _ in range(200):
        left, top, w, h = imagenet.random_resized_crop_box(120, 80)
        assert 0 <= left and left + w <= 120 and 0 <= top and top + h <= 80
        assert 0.08 * 120 * 80 * 0.9 <= w * h <= 120 * 80
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # A very tall image never fits a sampled box: the centre crop of the nearest allowed ratio.
    assert imagenet.random_resized_crop_box(10, 1000) == (0, 493, 10, 13)


def test_eval_transform_resizes_the_short_side_and_crops_the_centre():
    img = Image.fromarray(np.full((60, 90, 3), (255, 128, 0), dtype=np.uint8))
    x = imagenet.eval_transform(img, 32)
    assert x.shape == (3, 32, 32)
    expected = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(imagenet.MEAN)) / torch.tensor(imagenet.STD)
    torch.testing.assert_close(x[:, 16, 16], expected.float(), rtol=1e-5, atol=1e-5)
    y = imagenet.train_transform(img, 32)
    assert y.shape == (3, 32, 32) and torch.isfinite(y).all()


# ----------------------------------------------------------------------------- the folder
def test_folder_reader_streams_batches_with_workers(folder):
    train, val, num_classes = imagenet.imagenet_loaders(str(folder), batch_size=4, image_size=32, workers=2, seed=1)
    assert num_classes == 3 and len(train.dataset) == 12 and len(val.dataset) == 6
    assert all(isinstance(p, str) for p, _ in train.dataset.samples)      # paths only: decoded per batch
    assert len(train) == 3 and len(val) == 2                               # train drops the last partial batch
    batches = list(train.epoch(0))
    assert [x.shape for x, _ in batches] == [(4, 3, 32, 32)] * 3
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    again = list(train.epoch(0))                                          # an epoch is reproducible
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    assert not torch.equal(torch.cat([y for _, y in train.epoch(1)]), labels)
    val_labels = torch.cat([y for _, y in val.epoch(0)])
    assert val_labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_shards_split_every_global_batch(folder):
    """Under torchrun each process reads its contiguous half (third, ...) of every global batch."""
    whole, _, _ = imagenet.imagenet_loaders(str(folder), 4, 16, workers=0, seed=2)
    halves = [imagenet.imagenet_loaders(str(folder), 4, 16, workers=0, seed=2, shard=(r, 2))[0] for r in (0, 1)]
    assert whole._batch_indices(3) == [a + b for a, b in zip(halves[0]._batch_indices(3), halves[1]._batch_indices(3))]
    labels = [torch.cat([y0, y1]) for (_, y0), (_, y1) in zip(halves[0].epoch(3), halves[1].epoch(3))]
    assert torch.equal(torch.cat(labels), torch.cat([y for _, y in whole.epoch(3)]))
    with pytest.raises(ValueError, match="world dividing batch_size 4"):
        imagenet.imagenet_loaders(str(folder), 4, shard=(0, 3))


@pytest.mark.parametrize("damage, message", [
    (lambda root: None, "no ImageNet folder at"),
    (lambda root: make_folder(root, per_class=(1, 0)) and None, "val: no images"),
    (lambda root: (root / "train").mkdir(parents=True), "no class folders"),
    (lambda root: (make_folder(root), (root / "val" / "fox").mkdir()), "class folder\\(s\\) fox are not in train/"),
])
def test_bad_folders_are_clear_errors(tmp_path, damage, message):
    root = tmp_path / "imagenet"
    damage(root)
    with pytest.raises(DataError, match=message):
        imagenet.imagenet_loaders(str(root), 2)


def test_a_corrupt_image_is_named_also_from_a_worker(folder):
    bad = folder / "train" / "dog" / "dog_1.JPEG"
    bad.write_bytes(b"not a jpeg at all")
    train, _, _ = imagenet.imagenet_loaders(str(folder), batch_size=12, image_size=16, workers=1)
    with pytest.raises(DataError) as exc:
        list(train.epoch(0))
    assert str(exc.value).startswith(f"{bad}: not a readable image") and "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- natfast train
def test_train_cli_on_a_tiny_imagenet_folder(folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "imagenet", "--data", str(folder), "--arch", "NATv2_DARTS", "--epochs", "2",
            "--layers", "3", "--channels", "8", "--image-size", "64", "--auxiliary-weight", "0", "--batch-size", "4",
            "--workers", "1", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "label_smoothing=0.1" in printed and "lr_schedule='exponential'" in printed   # the imagenet preset
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(0 <= r["test_acc"] <= 1 for r in rows)
    assert rows[1]["lr"] == pytest.approx(0.1 * 0.97) and math.isfinite(rows[1]["train_loss"])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["model"]["classifier.weight"].shape[0] == 3 and "stem.stem0.0.weight" in state["model"]
    resumed = [a if a != "2" else "3" for a in argv] + ["--resume"]          # --epochs 3
    assert main(resumed) == 0
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_train_cli_without_the_folder_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--dataset", "imagenet", "--data", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no ImageNet folder at" in err and err.count("\n") == 1


def test_draw_costs_the_imagenet_network_the_authors_way(tmp_path, monkeypatch):
    import natfast.draw
    drawn = []
    monkeypatch.setattr(natfast.draw, "draw", lambda archs, path, costs: drawn.append(costs) or path)
    assert main(["draw", "--arch", "DARTS", "--madds", "authors", "--dataset", "imagenet",
                 "--out", str(tmp_path / "d.png")]) == 0
    assert drawn == [["params 4.719M, MAdds 529.1M"]]
