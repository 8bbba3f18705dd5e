"""Transferability scores: how well a pretrained model's outputs on the target images predict the target
labels, from one forward pass and no fine-tuning. numpy/scipy (scikit-learn for the linear probe); every
score is "higher is better".

  LogME    You et al., ICML 2021: the log marginal likelihood (evidence) of a Bayesian linear model from
           the features to each one-hot label column, maximised over its prior and noise precisions by the
           paper's fixed-point iteration, per image, averaged over classes.
  LEEP     Nguyen et al., ICML 2020: the log expected empirical prediction of the source classifier's soft
           labels θ(x) through the empirical conditional P(y | z) of target given source class.
  NCE      Tran et al., ICCV 2019: the negative conditional entropy −H(Y | Z) of the target labels given the
           source classifier's hard labels z = argmax θ(x).
  H-score  Bao et al., ICIP 2019: tr(cov(f)⁻¹ cov(E[f | y])). With more feature dimensions than images the
           sample covariance is singular and Bao's score saturates at (classes − 1) for every backbone, so
           the covariance is shrunk with the Ledoit–Wolf coefficient α as in Ibrahim et al. 2022 ("Newer is
           not always better"):
           tr(((1 − α)cov(f) + α·mean-variance·I)⁻¹ (1 − α) cov(E[f | y])); `shrink=False` is Bao's own.
           (The Ledoit–Wolf α is computed here from the Gram matrix: sklearn's estimator forms D × D
           products, 4.4 s against 0.1 s for hymenoptera's 245 × 1280 Lite0 features on the shared 2-core
           machine; tests/test_rank_scores.py checks that both agree.)
  probe    a supervised baseline: stratified k-fold accuracy of an L2 logistic regression on the standardised
           features (what strategy=freeze trains, without augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

__all__ = [
    "h_score",
    "ledoit_wolf_shrinkage",
    "leep",
    "linear_probe",
    "log_evidence",
    "log_me",
    "nce",
    "require_folds",
]


def _labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"labels must be one class index per row: {labels.shape} for {n} rows")
    if len(labels) and labels.min() < 0:
        raise ValueError("labels must be class indices 0 … C−1")
    return labels.astype(np.int64)


@dataclass(frozen=True)
class _Spectrum:
    """F = U diag(s) Vᵀ (thin SVD): every quantity of the evidence is a sum over the singular values."""

    u: np.ndarray  # (N, r)
    sigma: np.ndarray  # s², the non-zero eigenvalues of FᵀF
    n: int
    d: int


def _spectrum(features: np.ndarray) -> _Spectrum:
    f = np.asarray(features, dtype=np.float64)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(f.shape) * np.finfo(np.float64).eps
    return _Spectrum(u[:, keep], s[keep] ** 2, f.shape[0], f.shape[1])


def _evidence_terms(spec: _Spectrum, y: np.ndarray, lam: float) -> tuple[float, float, float, float]:
    """(γ, ‖m‖², ‖y − Fm‖² − outside, outside) at λ = α/β (prior over noise precision), m the posterior
    mean β A⁻¹ Fᵀy, A = αI + βFᵀF; in the eigenbasis of FᵀF, where A is diagonal, and through λ alone so
    that a near-exact fit (β → ∞) neither overflows nor divides by zero. `outside`: the part of ‖y‖² no
    feature direction reaches."""
    z = spec.u.T @ y  # y's coordinates along the left singular vectors
    denom = lam + spec.sigma
    gamma = float(np.sum(spec.sigma / denom))  # effective number of well-determined weights
    m_sq = float(np.sum(spec.sigma * z**2 / denom**2))
    fitted_residual = float(np.sum((lam * z / denom) ** 2))
    return gamma, m_sq, fitted_residual, max(float(y @ y - z @ z), 0.0)


def log_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, α, β) of Bayesian linear regression y = Fw + ε, w ~ N(0, α⁻¹I), ε ~ N(0, β⁻¹I)
    (LogME paper, eq. 2): n/2 log β + D/2 log α − n/2 log 2π − β/2 ‖Fm − y‖² − α/2 ‖m‖² − ½ log|A|."""
    spec = _spectrum(features)
    return _log_evidence(spec, np.asarray(y, dtype=np.float64), alpha, beta)


def _log_evidence(spec: _Spectrum, y: np.ndarray, alpha: float, beta: float) -> float:
    lam = alpha / beta
    _, m_sq, fitted_residual, outside = _evidence_terms(spec, y, lam)
    r = len(spec.sigma)
    # log|A| = Σ log β(λ + σᵢ) over the r feature directions + (D − r) log α; the log β and log α terms of
    # the evidence are collected with it, and β·‖y − Fm‖² = α·λ·Σ(zᵢ/(λ+σᵢ))² + β·outside.
    return float(
        (spec.n - r) / 2 * np.log(beta) + r / 2 * np.log(alpha) - np.sum(np.log(lam + spec.sigma)) / 2
        - spec.n / 2 * np.log(2 * np.pi) - alpha / 2 * fitted_residual / lam - beta / 2 * outside
        - alpha / 2 * m_sq
    )  # fmt: skip


# The fixed point can head for a boundary: λ = α/β → ∞ (the labels look like noise to every feature: the
# evidence tends to that of y ~ N(0, β⁻¹I)) or λ → 0 (the features fit the labels exactly). Past these
# multiples of the largest eigenvalue the evidence has settled to ~1e-12; iterating on would overflow.
_LAMBDA_RANGE = 1e-12


def _max_evidence(spec: _Spectrum, y: np.ndarray, max_iter: int, tol: float) -> float:
    """The paper's Algorithm 1: α ← γ/‖m‖², β ← (n − γ)/‖Fm − y‖² until both stop moving; the evidence
    is then taken at the final (α, β) with m recomputed there (a stationary point of the evidence)."""
    alpha, beta = 1.0, 1.0
    scale = float(spec.sigma.max(initial=1.0))
    for _ in range(max_iter):
        gamma, m_sq, fitted_residual, outside = _evidence_terms(spec, y, alpha / beta)
        residual = fitted_residual + outside
        if m_sq <= 0 or residual <= 0:
            break
        new_alpha, new_beta = gamma / m_sq, (spec.n - gamma) / residual
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done or not _LAMBDA_RANGE * scale < alpha / beta < scale / _LAMBDA_RANGE:
            break
    return _log_evidence(spec, y, alpha, beta)


def log_me(features: np.ndarray, labels: np.ndarray, max_iter: int = 1000, tol: float = 1e-10) -> float:
    """LogME: the maximum log evidence per image, averaged over the one-hot columns of the labels.

    The paper (and TLlib) stop after ~10 iterations at 1% relative change of α/β; iterating to `tol` costs
    nothing (each step is O(rank) after one SVD) and makes the score the maximum itself."""
    features = np.asarray(features, dtype=np.float64)
    labels = _labels(labels, len(features))
    spec = _spectrum(features)
    columns = [(labels == c).astype(np.float64) for c in range(int(labels.max()) + 1)]
    return float(np.mean([_max_evidence(spec, y, max_iter, tol) / spec.n for y in columns]))


def _joint(source: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P̂(y, z) = 1/n Σ_{i: yᵢ = y} θ(xᵢ)_z: rows target classes, columns source classes."""
    n_classes = int(labels.max()) + 1
    joint = np.zeros((n_classes, source.shape[1]))
    np.add.at(joint, labels, source)
    return joint / len(labels)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP = 1/n Σᵢ log Σ_z P̂(yᵢ | z) θ(xᵢ)_z, θ the source classifier's softmax on each image."""
    theta = np.asarray(source_probs, dtype=np.float64)
    labels = _labels(labels, len(theta))
    joint = _joint(theta, labels)
    # P̂(y | z) = P̂(y, z) / P̂(z); a source class no image puts weight on never enters the sum below.
    conditional = np.divide(
        joint, joint.sum(axis=0, keepdims=True), out=np.zeros_like(joint), where=joint > 0
    )
    eep = np.einsum("iz,iz->i", theta, conditional[labels])
    return float(np.mean(np.log(eep)))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE = −H(Y | Z) = Σ_{y,z} P̂(y, z) log P̂(y | z), z the source classifier's hard label (argmax θ)."""
    z = np.asarray(source_labels).astype(np.int64)
    labels = _labels(labels, len(z))
    joint = np.zeros((int(labels.max()) + 1, int(z.max()) + 1))
    np.add.at(joint, (labels, z), 1.0 / len(z))
    conditional = np.divide(
        joint, joint.sum(axis=0, keepdims=True), out=np.zeros_like(joint), where=joint > 0
    )
    return float(np.sum(xlogy(joint, conditional)))  # 0 · log 0 = 0


def ledoit_wolf_shrinkage(centered: np.ndarray) -> float:
    """The Ledoit–Wolf coefficient α of centred features (what sklearn.covariance.ledoit_wolf returns),
    from the n × n Gram matrix: O(n²D) where sklearn's D × D products cost O(nD²) (1280-wide features)."""
    n, d = centered.shape
    gram = centered @ centered.T
    mu = np.trace(gram) / (n * d)  # mean variance: the scale of the identity it shrinks towards
    cov_sq = np.sum(gram**2) / n**2  # ‖S‖²_F, S = XᵀX/n
    delta = (cov_sq - d * mu**2) / d  # ‖S − μI‖²_F / D
    beta = (np.sum(np.diag(gram) ** 2) / n - cov_sq) / (d * n)  # spread of the xᵢxᵢᵀ around S
    return 0.0 if delta <= 0 else float(min(beta, delta) / delta)


def h_score(features: np.ndarray, labels: np.ndarray, shrink: bool = True) -> float:
    """tr(cov(f)⁻¹ cov(E[f | y])) (Bao et al.; pseudo-inverse where cov(f) is singular); shrink: the
    Ledoit–Wolf covariance (see the module docstring).

    Computed along the eigenvectors uᵢ of the Gram matrix f fᵀ (eigenvalues sᵢ²) of the centred features:
    cov(E[f | y]) lies in their span, and with P the class-mean projector the trace is
    Σᵢ wᵢ ‖P uᵢ‖², wᵢ = 1 (Bao; hence C − 1 once the features span every image) or
    (1 − α)sᵢ²/n / ((1 − α)sᵢ²/n + αμ) (shrunk). No D × D matrix is formed."""
    f = np.asarray(features, dtype=np.float64)
    labels = _labels(labels, len(f))
    f = f - f.mean(axis=0)
    n = len(f)
    eigenvalues, vectors = np.linalg.eigh(f @ f.T)
    keep = eigenvalues > eigenvalues.max(initial=0.0) * n * np.finfo(np.float64).eps
    s_sq, u = eigenvalues[keep], vectors[:, keep]
    projected = np.zeros_like(u)  # P u: each entry replaced by its class mean
    for c in np.unique(labels):
        projected[labels == c] = u[labels == c].mean(axis=0)
    between = np.sum(projected * u, axis=0)  # uᵢᵀ P uᵢ = ‖P uᵢ‖² (P is an orthogonal projector)
    if not shrink:
        return float(between.sum())
    alpha = ledoit_wolf_shrinkage(f)
    mu = np.sum(f**2) / (n * f.shape[1])
    spread = (1 - alpha) * s_sq / n
    return float(np.sum(spread / (spread + alpha * mu) * between))


def require_folds(labels: np.ndarray, folds: int, class_names: list[str] | None = None) -> None:
    """Stratified k-fold needs every class in every fold: one line naming the smallest class otherwise."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    smallest = int(np.argmin(counts))
    if folds < 2:
        raise ValueError(f"rank.folds={folds}: cross-validation needs at least 2 folds")
    if counts[smallest] < folds:
        name = class_names[smallest] if class_names else str(smallest)
        raise ValueError(
            f"class {name!r} has {counts[smallest]} training image(s), fewer than rank.folds={folds} "
            f"for the cross-validated probe; lower rank.folds (≥ 2) or add images of that class"
        )


def linear_probe(
    features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
) -> tuple[float, float]:
    """(mean, std over folds) of the stratified k-fold accuracy of a logistic regression on the
    standardised features: a cheap stand-in for strategy=freeze (no augmentation, no early stopping)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    labels = _labels(labels, len(features))
    require_folds(labels, folds)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One BLAS thread: the matrices are small, and OpenBLAS threads on a busy 2-core machine made the 5 fits
    # 10× slower (10 s vs 1 s in tests/test_rank_scores.py under load 12).
    with threadpool_limits(limits=1, user_api="blas"):
        scores = cross_val_score(probe, np.asarray(features, dtype=np.float64), labels, cv=split)
    return float(scores.mean()), float(scores.std(ddof=1)) if folds > 1 else 0.0
