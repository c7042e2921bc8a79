"""Fashion-MNIST subsets written as IDX folders that ``--data-dir`` reads: a seeded choice of training images,
evaluated on the test set or on other, held-out training images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InvalidValueError
from ..fileio import atomic_directory
from .datasets import FASHION_MNIST_FILES, fashion_mnist, write_idx


def write_train_subset(dest: str | os.PathLike, count: int, source: str | os.PathLike | None = None,
                       seed: int = 0, holdout: int = 0) -> Path:
    """A Fashion-MNIST folder at ``dest`` with ``count`` training images (a seeded random choice) and, as its
    evaluation split, the full test set, or with ``holdout`` > 0 that many other training images (the test set
    stays unseen); kept when it already exists."""
    dest = Path(dest)
    if dest.is_dir():
        return dest
    train_set, test_set = fashion_mnist("train", source), fashion_mnist("val", source)
    if not 1 <= count <= len(train_set) - holdout:
        raise InvalidValueError(f"a training subset must hold 1 to {len(train_set) - holdout} images, got {count}")
    order = np.random.default_rng(seed).permutation(len(train_set))
    chosen, held_out = np.sort(order[holdout:holdout + count]), np.sort(order[:holdout])
    evaluation = ((train_set.images[held_out], train_set.labels[held_out]) if holdout
                  else (test_set.images, test_set.labels))
    with atomic_directory(dest) as staging:
        for split, (images, labels) in (("train", (train_set.images[chosen], train_set.labels[chosen])),
                                        ("val", evaluation)):
            image_file, label_file = FASHION_MNIST_FILES[split]
            write_idx(staging / image_file, images)
            write_idx(staging / label_file, labels)
    return dest
