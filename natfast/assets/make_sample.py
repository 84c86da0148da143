#!/usr/bin/env python3
"""Build natfast/assets/cifar10_sample.npz, the embedded CIFAR-10 sample.

usage: python make_sample.py SOURCE_NPZ [--train N_PER_CLASS] [--test N_PER_CLASS] [--out PATH]

SOURCE_NPZ is cifar10_lossless_4k1k.npz (exact original pixels, keys x_train, y_train, x_test,
y_test; see shared/data/cifar10/README.md). The sample is class-balanced: for every class, the
first N images of that class in the source's order, kept in that order. Output keys: x_train,
y_train, x_test, y_test (uint8 NHWC / uint8 labels) plus idx_train, idx_test (positions in the
source) so the selection can be checked.
"""
import argparse
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def balanced_indices(y: np.ndarray, per_class: int) -> np.ndarray:
    """First `per_class` positions of every class, returned in ascending (source) order."""
    picks = []
    for c in range(10):
        where = np.flatnonzero(y == c)
        if len(where) < per_class:
            raise SystemExit(f"class {c} has only {len(where)} images, need {per_class}")
        picks.append(where[:per_class])
    return np.sort(np.concatenate(picks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="path to cifar10_lossless_4k1k.npz")
    ap.add_argument("--train", type=int, default=250, help="train images per class (default 250)")
    ap.add_argument("--test", type=int, default=50, help="test images per class (default 50)")
    ap.add_argument("--out", default=os.path.join(HERE, "cifar10_sample.npz"))
    args = ap.parse_args()

    src = np.load(args.source, allow_pickle=False)
    out = {}
    for split, per_class in (("train", args.train), ("test", args.test)):
        y = src[f"y_{split}"].astype(np.uint8)
        idx = balanced_indices(y, per_class)
        out[f"x_{split}"] = np.ascontiguousarray(src[f"x_{split}"][idx], dtype=np.uint8)
        out[f"y_{split}"] = y[idx]
        out[f"idx_{split}"] = idx.astype(np.int32)
    np.savez_compressed(args.out, **out)
    print(f"{args.out}: {len(out['y_train'])} train + {len(out['y_test'])} test, "
          f"{os.path.getsize(args.out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
