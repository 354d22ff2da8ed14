"""Scoring predictive uncertainty: coverage of ±kσ intervals, NLL and recalibration.

For a well calibrated Gaussian predictor, a fraction erf(k/√2) of test errors
lies inside ±kσ: 68.27% for k = 1 and 95.45% for k = 2. Fractions above those
mean σ is too large (under-confident), below mean over-confident.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["calibration", "expected_coverage", "fit_sigma_scale", "roc_auc", "fit_platt", "apply_platt"]


def expected_coverage(k: float) -> float:
    """Fraction of a Gaussian within ±k standard deviations."""
    return math.erf(k / math.sqrt(2.0))


def calibration(y, mean, std, ks=(1.0, 2.0)) -> dict:
    """MAE, RMSE, coverage of ±kσ, mean σ and Gaussian NLL over finite labels (1-D arrays)."""
    y, mean, std = (np.asarray(a, np.float64).ravel() for a in (y, mean, std))
    ok = np.isfinite(y) & np.isfinite(mean) & np.isfinite(std)
    y, mean, std = y[ok], mean[ok], np.maximum(std[ok], 1e-12)
    err = mean - y
    out = {"n": int(ok.sum()), "mae": float(np.abs(err).mean()) if len(y) else float("nan"),
           "rmse": float(np.sqrt((err**2).mean())) if len(y) else float("nan"),
           "mean_sigma": float(std.mean()) if len(y) else float("nan"),
           "nll": float(np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * (err / std) ** 2)) if len(y) else float("nan")}
    for k in ks:
        out[f"within_{k:g}sigma"] = float(np.mean(np.abs(err) <= k * std)) if len(y) else float("nan")
        out[f"expected_{k:g}sigma"] = expected_coverage(k)
    return out


def fit_sigma_scale(y, mean, std) -> float:
    """The factor s minimizing the Gaussian NLL of σ' = s σ on held-out data:
    s = sqrt(mean((y - mu)^2 / σ^2)) (Levi et al. 2022, "std scaling")."""
    y, mean, std = (np.asarray(a, np.float64).ravel() for a in (y, mean, std))
    ok = np.isfinite(y) & np.isfinite(mean) & (std > 0)
    if not ok.any():
        return 1.0
    return float(np.sqrt(np.mean(((y[ok] - mean[ok]) / std[ok]) ** 2)))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels``: the probability
    that a random positive scores above a random negative (ties count half), from
    the Mann-Whitney rank sum. NaN when either class is empty."""
    from scipy.stats import rankdata

    labels, scores = np.asarray(labels, bool).ravel(), np.asarray(scores, np.float64).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def apply_platt(p, a: float, b: float):
    """Recalibrated probabilities sigmoid(a logit(p) + b)."""
    return 1.0 / (1.0 + np.exp(-(a * _logit(p) + b)))


def fit_platt(labels, p) -> tuple[float, float]:
    """Platt scaling of predicted probabilities on held-out data: (a, b) minimizing the
    cross-entropy of sigmoid(a logit(p) + b), with Platt's smoothed targets
    (N+ + 1)/(N+ + 2) and 1/(N- + 2), which keep a small validation set with few
    positives from driving the probabilities to 0 or 1 (Platt 1999). (1, 0) = unchanged;
    also when either class is missing."""
    from scipy.optimize import minimize

    labels, z = np.asarray(labels, bool).ravel(), _logit(p).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0, 0.0
    t = np.where(labels, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss(ab):
        u = ab[0] * z + ab[1]
        # cross-entropy with soft targets, log(1 + e^u) written stably
        return float(np.mean(np.logaddexp(0.0, u) - t * u))

    res = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])
