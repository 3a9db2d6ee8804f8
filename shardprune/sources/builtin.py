"""Built-in datasets that need no network: scikit-learn's ``digits`` and generated MNIST-1D.

Both are split deterministically into train and test so that a demo can build the two
from the same data. MNIST-1D is generated with ``mnist1d.data.make_dataset`` (never its
``get_dataset``, which downloads).
"""

from __future__ import annotations

import random

import numpy as np

from shardprune.errors import ConfigError
from shardprune.sources.base import ArraySource

BUILTINS = ("digits", "mnist1d")
SPLITS = ("train", "test")
#: digits: every ``DIGITS_TEST_EVERY``-th sample (ids 4, 9, 14, ...) is test, the rest train.
DIGITS_TEST_EVERY = 5
#: mnist1d's own default seed, so our data matches the published MNIST-1D.
MNIST1D_SEED = 42


def _take(x: np.ndarray, y: np.ndarray, num_samples: int | None, available: str) -> tuple[np.ndarray, np.ndarray]:
    if num_samples is None:
        return x, y
    if not 1 <= num_samples <= len(x):
        raise ConfigError(f"num_samples={num_samples} is outside 1..{len(x)} ({available})")
    return x[:num_samples], y[:num_samples]


def digits_source(split: str = "train", num_samples: int | None = None, tar_encoding: str = "npy") -> ArraySource:
    """scikit-learn's 8x8 digits as uint8 (values 0..16); 1438 train and 359 test samples.

    Args:
        split: ``"train"`` or ``"test"``.
        num_samples: Keep the first ``num_samples`` of the split (default all).
        tar_encoding: ``"npy"`` (default) or ``"png"``.
    """
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {SPLITS}")
    bunch = load_digits()
    images = np.asarray(bunch.images).astype(np.uint8)
    target = np.asarray(bunch.target).astype(np.int64)
    is_test = np.arange(len(target)) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    keep = is_test if split == "test" else ~is_test
    x, y = _take(images[keep], target[keep], num_samples, f"the digits {split} split")
    desc = {"kind": "digits", "split": split, "num_samples": len(x), "test_every": DIGITS_TEST_EVERY}
    return ArraySource(x, y, num_classes=10, tar_encoding=tar_encoding, kind="digits", description=desc)


def mnist1d_source(
    split: str = "train", num_samples: int = 5000, seed: int = MNIST1D_SEED, tar_encoding: str = "npy"
) -> ArraySource:
    """MNIST-1D generated locally: float32 sequences of length 40, 10 classes.

    Args:
        split: ``"train"`` (the first 80% generated) or ``"test"`` (the last 20%).
        num_samples: Samples generated for both splits together, rounded down to a
            multiple of 10 (default 5000, mnist1d's own; at least 10).
        seed: Generator seed (default 42, mnist1d's own).
        tar_encoding: ``"npy"`` only is meaningful for float data.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {SPLITS}")
    if num_samples < 10:
        raise ConfigError(f"num_samples={num_samples} is below 10; mnist1d makes num_samples // 10 per class")
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    # make_dataset seeds the global generators of numpy and random; give the caller's back.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    suffix = "" if split == "train" else "_test"
    x = np.asarray(data["x" + suffix], dtype=np.float32)
    y = np.asarray(data["y" + suffix]).astype(np.int64)
    desc = {"kind": "mnist1d", "split": split, "num_samples_generated": int(num_samples), "seed": int(seed)}
    return ArraySource(x, y, num_classes=10, tar_encoding=tar_encoding, kind="mnist1d", description=desc)
