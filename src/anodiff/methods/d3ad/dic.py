"""Dynamic implicit conditioning g (Algorithm 2, Sec. 4.1) as pure functions.

Notation map (paper -> code): ``Y_Train`` = ``train_features`` (N, D), the flattened
``phi_j`` features of the training images; ``y_bar_0`` = :func:`mean_knn_distance`; the
|B| equidistant bins = :func:`bin_edges` (|B| + 1 edges); ``psi`` = :func:`find_bin`;
``T_hat = floor(b / |B| T_max)`` = :func:`timestep_for_bin`, with Sec. 5's minimum bin and
rounding to a multiple of 10.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from sklearn.neighbors import NearestNeighbors


def fit_knn(train_features: np.ndarray, k: int) -> NearestNeighbors:
    """The exact L1 nearest-neighbour index over ``Y_Train`` (Sec. 5: K = 20, L1)."""
    # imported here: the config imports timestep_for_bin and must import without scikit-learn
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k, metric="manhattan").fit(train_features)


def mean_knn_distance(knn: NearestNeighbors, features: np.ndarray) -> np.ndarray:
    """``y_bar_0`` of Algorithm 2 lines 5-6: mean L1 distance to the K nearest training features.

    features (M, D) -> (M,). A training image queried against ``Y_Train`` finds itself at
    distance 0 among its K neighbours, as in the paper ("a KNN-search is executed on the
    entire feature training set") and the official code.
    """
    distances, _ = knn.kneighbors(features)  # (M, K)
    return distances.mean(axis=1)


def bin_edges(train_distances: np.ndarray, num_bins: int) -> np.ndarray:
    """The |B| equidistant bins over the training distances (Sec. 4.1): |B| + 1 edges from
    their minimum to their maximum (``np.histogram`` bins, as the official code)."""
    return np.histogram_bin_edges(train_distances, bins=num_bins)


def find_bin(distances: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``psi`` of Algorithm 2 line 7, a binary search (``np.searchsorted``) over the bin edges.

    Bin ``b`` in 1..|B| holds ``edges[b-1] < d <= edges[b]``; distances at or below the
    smallest training distance get bin 0, above the largest bin |B| (the official
    ``np.digitize(d, edges, right=True)``, clipped to |B|).
    """
    return np.minimum(np.searchsorted(edges, distances, side="left"), len(edges) - 1)


def timestep_for_bin(
    bins: Sequence[int] | np.ndarray, t_max: int, num_bins: int, min_bin: int, round_to: int
) -> np.ndarray:
    """``T_hat = floor(max(b, min_bin) / |B| T_max)`` (Algorithm 2 line 8), rounded to the
    nearest multiple of ``round_to``, halves up (Sec. 5, official ``roundup``).

    With T_max = 80, |B| = 10, min bin 2: bins 0-10 give 20, 20, 20, 20, 30, 40, 50, 60, 60, 70, 80.
    """
    raw = np.maximum(np.asarray(bins), min_bin) * t_max // num_bins
    return (np.floor(raw / round_to + 0.5) * round_to).astype(np.int64)
