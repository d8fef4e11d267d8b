"""How sharply a class is split: entropy calibration and the diagnostics every split records.

Every method that splits a class c into S pseudo-subclasses turns scores z (B, C, S)
into a split ``softmax_s(z_{c,.} / beta_c)``. Its sharpness is measured by the mean
normalised entropy over the examples x of class c,

    E_c(beta) = mean_{x in c} H(softmax_s(z_{c,.}(x) / beta)) / log S   in [0, 1],

1 for a uniform split (LELP = KD with a C*S head), 0 for a hard one. E_c increases
with beta, so ``calibrate_betas`` solves E_c(beta_c) = target by bisection in
log beta (host, float64): the sharpness then means the same on every teacher and
for every kind of score (projections, k-means distances, ...).

``split_diagnostics`` summarises a split on labelled data: the mean normalised
entropy, the mean top-subclass share ``max_s t_{y,s} / p_y`` of the true class y,
and, with fine labels, the normalised mutual information (arithmetic mean, as
scikit-learn's default) between the hard pseudo-subclass ``(y, argmax_s t_{y,s})``
and the fine label. With S = 1 a split is trivially hard: entropy 0, top share 1.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from lelp_jax.core.validation import require_host

__all__ = ["normalized_entropy", "calibrate_betas", "split_diagnostics", "normalized_mutual_info"]

_BISECTION_STEPS = 60


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def normalized_entropy(split: np.ndarray) -> np.ndarray:
    """``H(p) / log S`` of each row of ``split (..., S)`` (probabilities over S); 0 when S = 1."""
    require_host("normalized_entropy", split)
    p = np.asarray(split, np.float64)
    s = p.shape[-1]
    if s == 1:
        return np.zeros(p.shape[:-1])
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return h / np.log(s)


def _mean_entropy(z: np.ndarray, log_beta: float) -> float:
    return float(np.mean(normalized_entropy(_softmax(z / np.exp(log_beta)))))


def calibrate_betas(scores: np.ndarray, labels: np.ndarray, *, target_entropy: float,
                    tolerance: float = 1e-4) -> np.ndarray:
    """Per-class beta_c with ``E_c(beta_c) = target_entropy`` (module docstring), shape (C,).

    Args:
      scores: ``(N, C, S)`` subclass scores of the fit set (already standardised if the
        method standardises them).
      labels: ``(N,)`` class of each row (the fit labels); row i calibrates class labels[i].
      target_entropy: the mean normalised entropy asked for, in (0, 1).
      tolerance: bisection stops when |E_c - target| <= tolerance (or after 60 halvings).
    Returns ``betas (C,)`` float64. With S = 1 every beta gives the same targets: ones.

    Raises ValueError for a target outside (0, 1), a class without rows, or a class whose
    scores cannot reach the target (all scores of a row tied, e.g. duplicate centroids).
    """
    require_host("calibrate_betas", scores, labels)
    z = np.asarray(scores, np.float64)
    y = np.asarray(labels).ravel()
    if z.ndim != 3 or y.shape != z.shape[:1]:
        raise ValueError(f"calibrate_betas: scores must be (N, C, S) and labels (N,), got {z.shape} and {y.shape}.")
    if not 0.0 < float(target_entropy) < 1.0:
        raise ValueError(f"calibrate_betas: target_entropy must lie in (0, 1) (a normalised entropy: 0 = hard, "
                         f"1 = uniform), got {target_entropy!r}.")
    if not np.all(np.isfinite(z)):
        raise ValueError("calibrate_betas: scores contain NaN or inf; check the teacher embeddings.")
    n, c, s = z.shape
    betas = np.ones(c)
    if s == 1:
        return betas
    target = float(target_entropy)
    for k in range(c):
        zc = z[y == k, k]
        if len(zc) == 0:
            raise ValueError(f"calibrate_betas: class {k} has no rows to calibrate on; check the fit labels.")
        zc = zc - zc.mean(axis=1, keepdims=True)
        spread = float(np.sqrt(np.mean(zc ** 2)))
        if spread == 0.0:
            raise ValueError(f"calibrate_betas: class {k}'s subclass scores are all equal, so no beta reaches "
                             f"entropy {target}; the fit found no spread (too few examples or duplicate centroids?).")
        lo, hi = np.log(spread) - np.log(1e6), np.log(spread) + np.log(1e6)
        if _mean_entropy(zc, lo) > target:
            raise ValueError(f"calibrate_betas: class {k} cannot be split as sharply as entropy {target} "
                             f"(its scores tie on many rows; lowest reachable {_mean_entropy(zc, lo):.3f}); "
                             "ask for a larger target_entropy.")
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            e = _mean_entropy(zc, mid)
            if abs(e - target) <= tolerance:
                lo = hi = mid
                break
            lo, hi = (mid, hi) if e < target else (lo, mid)
        betas[k] = np.exp(0.5 * (lo + hi))
    return betas


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """NMI of two labelings, ``I(a; b) / mean(H(a), H(b))`` (scikit-learn's default 'arithmetic');
    1.0 when both are constant, 0.0 when only one is."""
    require_host("normalized_mutual_info", a, b)
    a = np.unique(np.asarray(a).ravel(), return_inverse=True)[1]
    b = np.unique(np.asarray(b).ravel(), return_inverse=True)[1]
    if a.shape != b.shape:
        raise ValueError(f"normalized_mutual_info: labelings differ in length ({a.size} vs {b.size}).")
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    ha = -np.sum(pa * np.log(pa))
    hb = -np.sum(pb * np.log(pb))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    if ha == 0.0 or hb == 0.0:
        return 0.0
    nz = joint > 0
    mi = np.sum(joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz]))
    return float(max(mi, 0.0) / (0.5 * (ha + hb)))


def split_diagnostics(split: np.ndarray, labels: np.ndarray, fine_labels: Optional[np.ndarray] = None) -> dict:
    """What a split taught, on labelled data.

    Args:
      split: ``(N, C, S)`` split probabilities ``t_{c,s} / p_c`` (rows over s sum to 1).
      labels: ``(N,)`` true classes y.
      fine_labels: ``(N,)`` fine labels, or None.
    Returns ``{"split_entropy", "split_top_share", "split_nmi"}``: the means over rows of
    ``H(split_{y,.}) / log S`` and ``max_s split_{y,s}``, and the NMI between
    ``y * S + argmax_s split_{y,s}`` and the fine label (None without fine labels).
    """
    require_host("split_diagnostics", split, labels, fine_labels)
    q = np.asarray(split, np.float64)
    y = np.asarray(labels).ravel().astype(np.int64)
    if q.ndim != 3 or y.shape != q.shape[:1]:
        raise ValueError(f"split_diagnostics: split must be (N, C, S) and labels (N,), got {q.shape} and {y.shape}.")
    n, c, s = q.shape
    own = q[np.arange(n), y]  # (N, S)
    out = {"split_entropy": float(np.mean(normalized_entropy(own))),
           "split_top_share": float(np.mean(own.max(axis=-1))), "split_nmi": None}
    if fine_labels is not None:
        out["split_nmi"] = normalized_mutual_info(y * s + np.argmax(own, axis=-1), fine_labels)
    return out
