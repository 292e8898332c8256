"""Synthetic data sets small enough to train in a second."""

import numpy as np


def blobs(task, per_class, seed, classes_per_task=2, spread=0.5):
    """Two Gaussian blobs per task in 2-D: classes 2t and 2t+1, centres on a circle of radius 4.

    Returns x float32 [2 * per_class, 2] and y int64, shuffled.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(task * classes_per_task, (task + 1) * classes_per_task):
        angle = c * np.pi / 2
        centre = 4.0 * np.array([np.cos(angle), np.sin(angle)])
        xs.append(centre + spread * rng.standard_normal((per_class, 2)))
        ys.append(np.full(per_class, c))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    order = rng.permutation(len(y))
    return x[order], y[order]
