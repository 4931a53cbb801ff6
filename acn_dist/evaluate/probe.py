"""Linear and k-NN probes of codes (the paper's Table 3 protocol), and the pixel/PCA baselines.

Every row uses the same protocol: features standardised on the training split, a multinomial
logistic regression (L-BFGS, L2 penalty C = 1) fitted on the train split (or, with
`eval.probe_labels`, a class-stratified draw of so many of its data) and scored on the test split,
and whether it converged within `max_iter` iterations (a probe stopped early understates its
features, so this is reported, never hidden); a k-NN classifier (Euclidean, k neighbours,
majority vote) on the same features.

The baselines are probed on the model's own input: binarised with the evaluation's fixed seeded
binarisation when the model sees binarised images, greyscale when it sees greyscale. Greyscale
baselines are reported beside binarised ones, labelled, for reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from acn_dist.data.sources import stratified_split
from acn_dist.errors import ProbeError

__all__ = ["ProbeError", "ProbeResult", "baseline_rows", "knn_probe", "labelled_draw", "linear_probe", "pca_features"]


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    converged: bool
    iterations: int


def check_labels(labels: np.ndarray, split: str) -> None:
    if labels.size == 0 or np.any(labels < 0):
        raise ProbeError(f"the {split} split has missing labels (cls absent in its shards): the probes need "
                         "labelled data; prepare the dataset with labels or skip the probe (eval.probe=false)")


def labelled_draw(train_y: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Rows of the `count` training data the probes fit on (`eval.probe_labels`): a seeded draw
    stratified by class, sorted; every row when `count` is 0."""
    if count == 0:
        return np.arange(len(train_y))
    check_labels(train_y, "train")
    if count > len(train_y):
        raise ProbeError(f"eval.probe_labels={count}: the train split has only {len(train_y)} data; set it to at "
                         "most that (0 = all)")
    return stratified_split(train_y, count, seed)[1]


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 max_iter: int = 5000, seed: int = 0) -> ProbeResult:
    """Multinomial logistic regression on standardised features: test accuracy, and whether the
    solver converged."""
    check_labels(train_y, "train")
    check_labels(test_y, "test")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported in the result instead
        model.fit(train_x, train_y)
    iterations = int(np.max(model[-1].n_iter_))
    return ProbeResult(float(model.score(test_x, test_y)), iterations < max_iter, iterations)


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 5) -> float:
    check_labels(train_y, "train")
    check_labels(test_y, "test")
    return float(KNeighborsClassifier(n_neighbors=k).fit(train_x, train_y).score(test_x, test_y))


def pca_features(train_x: np.ndarray, test_x: np.ndarray, components: int = 16,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    pca = PCA(n_components=components, random_state=seed).fit(train_x)
    return pca.transform(train_x), pca.transform(test_x)


def probe_rows(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
               max_iter: int, knn_k: int, seed: int) -> dict[str, float | bool]:
    """`linear_<name>`, `linear_<name>_converged` and `knn_<name>` for one set of features."""
    linear = linear_probe(train_x, train_y, test_x, test_y, max_iter, seed)
    return {f"linear_{name}": linear.accuracy, f"linear_{name}_converged": linear.converged,
            f"knn_{name}": knn_probe(train_x, train_y, test_x, test_y, knn_k)}


def baseline_rows(kind: str, train_pixels: np.ndarray, train_y: np.ndarray, test_pixels: np.ndarray,
                  test_y: np.ndarray, max_iter: int, knn_k: int, seed: int) -> dict[str, float | bool]:
    """Pixels and PCA-16 of pixels of one input kind (`binarised` or `greyscale`), both probes."""
    train_p, test_p = train_pixels.reshape(len(train_pixels), -1), test_pixels.reshape(len(test_pixels), -1)
    pca_train, pca_test = pca_features(train_p, test_p, 16, seed)
    return {**probe_rows(f"pixels_{kind}", train_p, train_y, test_p, test_y, max_iter, knn_k, seed),
            **probe_rows(f"pca16_{kind}", pca_train, train_y, pca_test, test_y, max_iter, knn_k, seed)}
