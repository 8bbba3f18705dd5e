"""The transferability scores (analysis/transferability.py): each against a reference value from its paper's
definition, computed another way (by hand, or the Gaussian marginal likelihood, or sklearn's estimator), and
each on synthetic features whose right ordering is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal
from sklearn.covariance import ledoit_wolf

from tlbench.analysis import transferability as t


def gaussian_evidence(features: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """log p(y) for y = Fw + ε, w ~ N(0, α⁻¹I), ε ~ N(0, β⁻¹I): y ~ N(0, α⁻¹FFᵀ + β⁻¹I) (LogME eq. 2)."""
    n = len(y)
    cov = np.exp(-log_alpha) * features @ features.T + np.exp(-log_beta) * np.eye(n)
    _, log_det = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + log_det + y @ np.linalg.solve(cov, y)))


def test_the_reference_evidence_is_scipys_gaussian_density():
    rng = np.random.default_rng(4)
    features, y = rng.normal(size=(8, 3)), rng.normal(size=8)
    cov = features @ features.T / 0.5 + np.eye(8) / 3.0
    expected = multivariate_normal(np.zeros(8), cov).logpdf(y)
    assert gaussian_evidence(features, y, np.log(0.5), np.log(3.0)) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("shape", [(12, 3), (6, 10)])  # more images than features, and fewer
def test_log_evidence_is_the_gaussian_marginal_likelihood(shape):
    rng = np.random.default_rng(1)
    features, y = rng.normal(size=shape), (rng.random(shape[0]) > 0.5).astype(float)
    for alpha, beta in [(1.0, 1.0), (0.3, 5.0), (20.0, 0.2)]:
        expected = gaussian_evidence(features, y, np.log(alpha), np.log(beta))
        assert t.log_evidence(features, y, alpha, beta) == pytest.approx(expected, abs=1e-9)


def test_log_me_is_the_maximum_evidence_per_image_averaged_over_classes():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(12, 3)), np.array([0, 1, 2] * 4)
    features[:, 0] += labels  # some signal, so the maximum is inside (α, β > 0)
    best = []
    for c in range(3):
        y = (labels == c).astype(float)
        found = minimize(
            lambda p, y=y: -gaussian_evidence(features, y, *p), [0.0, 0.0], method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20_000},
        )  # fmt: skip
        best.append(-found.fun / len(y))
    assert t.log_me(features, labels) == pytest.approx(np.mean(best), abs=1e-6)


def test_log_me_of_features_that_explain_nothing_is_the_evidence_of_pure_noise():
    """Random features, more dimensions than images: the fixed point drives α → ∞ (weights → 0), and the
    evidence to that of y ~ N(0, β⁻¹I) at its best β = n/‖y‖²: −n/2 (log 2π + log(‖y‖²/n) + 1)."""
    rng = np.random.default_rng(5)
    features, labels = rng.normal(size=(10, 30)), np.arange(10) % 2
    noise_only = [-(np.log(2 * np.pi) + np.log(np.mean((labels == c) ** 2)) + 1) / 2 for c in (0, 1)]
    assert t.log_me(features, labels) == pytest.approx(np.mean(noise_only), abs=1e-6)


@pytest.mark.parametrize("shape", [(20, 512), (40, 3)])
def test_log_me_is_finite_however_features_and_images_compare(shape):
    rng = np.random.default_rng(6)
    labels = np.arange(shape[0]) % 2
    for features in (rng.normal(size=shape), rng.normal(size=shape) + 3 * labels[:, None]):
        assert np.isfinite(t.log_me(features, labels))


def test_leep_of_a_hand_worked_example():
    # θ: source softmax of 4 images over 2 source classes; target labels y = 0, 0, 1, 1.
    theta = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    # P(y, z) = ¼ Σ θ: y=0: (0.35, 0.15); y=1: (0.10, 0.40). P(z) = (0.45, 0.55).
    # P(y | z): z0 → (7/9, 2/9), z1 → (3/11, 8/11).
    # EEP: 0.8·7/9 + 0.2·3/11 = 67/99; 0.6·7/9 + 0.4·3/11 = 19/33; 0.3·2/9 + 0.7·8/11 = 19/33;
    #      0.1·2/9 + 0.9·8/11 = 67/99.  LEEP = mean log EEP.
    expected = (np.log(67 / 99) + np.log(19 / 33)) / 2
    assert t.leep(theta, np.array([0, 0, 1, 1])) == pytest.approx(expected, abs=1e-12)


def test_nce_of_a_hand_worked_example():
    # Source hard labels z and target labels y of 6 images: counts (y,z): (0,0)=2, (0,1)=1, (1,1)=3.
    # P(y | z0) = (1, 0); P(y | z1) = (1/4, 3/4). NCE = Σ P(y,z) log P(y|z) = 2/6·0 + 1/6 log ¼ + 3/6 log ¾.
    expected = np.log(1 / 4) / 6 + 3 * np.log(3 / 4) / 6
    assert t.nce(np.array([0, 0, 1, 1, 1, 1]), np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(
        expected, abs=1e-12
    )


def test_h_score_of_a_hand_worked_example():
    # f = 0, 2, 4, 6 with y = 0, 0, 1, 1: var(f) = 20/n, class means 1, 1, 5, 5: var = 16/n; H = 16/20.
    assert t.h_score(
        np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1]), shrink=False
    ) == pytest.approx(0.8, abs=1e-12)


def class_means(centred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    g = np.zeros_like(centred)
    for c in np.unique(labels):
        g[labels == c] = centred[labels == c].mean(axis=0)
    return g


@pytest.mark.parametrize("shape", [(30, 5), (10, 40)])
def test_h_scores_match_the_covariance_formulas(shape):
    """Bao's tr(pinv(cov f) cov(E[f|y])) and the Ledoit–Wolf shrunk version, with D × D matrices and
    sklearn's estimator, against ours (which never forms a D × D matrix)."""
    rng = np.random.default_rng(2)
    features = rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1]))
    labels = np.arange(shape[0]) % 3
    centred = features - features.mean(axis=0)
    between = np.cov(class_means(centred, labels), rowvar=False)
    bao = np.trace(np.linalg.pinv(np.cov(features, rowvar=False)) @ between)
    assert t.h_score(features, labels, shrink=False) == pytest.approx(bao, rel=1e-6)
    shrunk, alpha = ledoit_wolf(centred, assume_centered=True)
    assert t.ledoit_wolf_shrinkage(centred) == pytest.approx(alpha, rel=1e-9)
    between_n = class_means(centred, labels).T @ class_means(centred, labels) / shape[0]
    expected = np.trace(np.linalg.solve(shrunk, (1 - alpha) * between_n))
    assert t.h_score(features, labels) == pytest.approx(expected, rel=1e-6)


def test_bao_h_score_saturates_when_features_outnumber_images():
    """Why the shrunk score is the one reported: with D ≥ n, Bao's is C − 1 for any features at all."""
    rng = np.random.default_rng(3)
    labels = np.arange(20) % 4
    noise = rng.normal(size=(20, 64))
    assert t.h_score(noise, labels, shrink=False) == pytest.approx(3.0, abs=1e-6)
    assert t.h_score(noise, labels) < 1.0


def synthetic_features(separation: float, n_per_class: int = 40, dim: int = 16, seed: int = 0):
    """Three Gaussian classes whose means lie `separation` noise-SDs apart along their own axes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    means = np.zeros((3, dim))
    means[np.arange(3), np.arange(3)] = separation
    return means[labels] + rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize(
    "score",
    [t.log_me, t.h_score, lambda f, y: t.linear_probe(f, y, folds=4)[0]],
    ids=["logme", "h_score", "probe"],
)
def test_feature_scores_order_features_by_class_separation(score):
    values = [score(*synthetic_features(d)) for d in (0.0, 1.0, 2.0, 4.0)]
    assert values == sorted(values) and len(set(values)) == 4, values


def source_probabilities(agreement: float, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 5-class source classifier whose top class follows the target label in `agreement` of images."""
    rng = np.random.default_rng(seed)
    follows = rng.random(len(labels)) < agreement
    top = np.where(follows, labels, rng.integers(0, 5, len(labels)))
    logits = rng.normal(scale=0.5, size=(len(labels), 5))
    logits[np.arange(len(labels)), top] += 3.0
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_leep_and_nce_order_source_classifiers_by_agreement_with_the_labels():
    labels = np.repeat(np.arange(3), 60)
    probs = [source_probabilities(a, labels) for a in (0.0, 0.4, 0.7, 1.0)]
    leep = [t.leep(p, labels) for p in probs]
    nce = [t.nce(p.argmax(axis=1), labels) for p in probs]
    assert leep == sorted(leep) and len(set(leep)) == 4, leep
    assert nce == sorted(nce) and len(set(nce)) == 4, nce
    assert nce[-1] == pytest.approx(0.0)  # the source class determines the label: no entropy left


def test_too_few_images_per_class_for_the_folds_is_one_line_naming_the_class():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ValueError, match=r"class 'bees' has 3 training image\(s\), fewer than rank.folds=5"):
        t.require_folds(labels, 5, ["ants", "bees"])
    t.require_folds(labels, 3, ["ants", "bees"])
