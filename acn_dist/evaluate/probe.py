"""Linear and k-NN probes of codes (the paper's Table 3 protocol), and the pixel/PCA baselines."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


class ProbeError(ValueError):
    """The probe cannot run on these labels."""


def check_labels(labels: np.ndarray, split: str) -> None:
    if labels.size == 0 or np.any(labels < 0):
        raise ProbeError(f"the {split} split has missing labels (cls absent in its shards): the probes need "
                         "labelled data; prepare the dataset with labels or skip the probe (eval.probe=false)")


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 max_iter: int = 1000, seed: int = 0) -> float:
    """Multinomial logistic regression on standardised features: test accuracy."""
    check_labels(train_y, "train")
    check_labels(test_y, "test")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    model.fit(train_x, train_y)
    return float(model.score(test_x, test_y))


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 5) -> float:
    check_labels(train_y, "train")
    check_labels(test_y, "test")
    return float(KNeighborsClassifier(n_neighbors=k).fit(train_x, train_y).score(test_x, test_y))


def pca_features(train_x: np.ndarray, test_x: np.ndarray, components: int = 16,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    pca = PCA(n_components=components, random_state=seed).fit(train_x)
    return pca.transform(train_x), pca.transform(test_x)


def table3(train_codes: np.ndarray, train_pixels: np.ndarray, train_y: np.ndarray, test_codes: np.ndarray,
           test_pixels: np.ndarray, test_y: np.ndarray, max_iter: int = 1000, knn_k: int = 5,
           seed: int = 0) -> dict[str, float]:
    """Every row on the same split: linear probe on codes, raw pixels and PCA-16 of pixels, and a
    k-NN classifier on codes."""
    train_p, test_p = train_pixels.reshape(len(train_pixels), -1), test_pixels.reshape(len(test_pixels), -1)
    pca_train, pca_test = pca_features(train_p, test_p, 16, seed)
    return {
        "probe_codes": linear_probe(train_codes, train_y, test_codes, test_y, max_iter, seed),
        "probe_pixels": linear_probe(train_p, train_y, test_p, test_y, max_iter, seed),
        "probe_pca16": linear_probe(pca_train, train_y, pca_test, test_y, max_iter, seed),
        "knn_codes": knn_probe(train_codes, train_y, test_codes, test_y, knn_k),
    }
