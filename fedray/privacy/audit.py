"""Empirical privacy auditing: how much a trained model leaks about its training data.

* Loss-threshold membership inference (Yeom, Giacomelli, Fredrikson, Jha, CSF 2018):
  score an example by ``-loss``; members (training examples) tend to have lower loss.
  Reported: ROC AUC, the best advantage ``max(TPR - FPR)`` and TPR at low FPR (the
  metric of Carlini et al., LiRA, S&P 2022).
* An empirical lower bound on ε (Jagielski, Ullman, Oprea, NeurIPS 2020,
  arXiv:2006.07709): any (ε, δ)-DP mechanism gives every threshold test
  ``FPR + e^ε FNR >= 1 - δ`` (and symmetrically), so
  ``ε >= ln((1 - δ - FPR) / FNR)``; with one-sided Clopper–Pearson upper bounds on
  FPR and FNR, the bound holds with the stated confidence. The threshold is chosen
  on one half of the scores and measured on the other (no multiple-testing error).
  It is an *empirical, single-run, example-level* estimate: all scores come from one
  model, and members are fixed by the train/test split, not by coins before training.
* Canary clients for a client-level estimate (Andrew, Chien, Song, Thakkar, Xu,
  Zhang et al., "One-shot Empirical Privacy Estimation for Federated Learning",
  ICLR 2024, arXiv:2302.03098): :func:`canary_epsilon`.

Layer 1: numpy, scipy and dp-accounting (imported lazily).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def roc_curve(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) over every threshold; a score above the threshold means "member".

    >>> fpr, tpr = roc_curve(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0, 1.0])
    """
    thresholds = np.unique(np.concatenate([members, nonmembers]))[::-1]
    tp = np.searchsorted(np.sort(members), thresholds, side="left")
    fp = np.searchsorted(np.sort(nonmembers), thresholds, side="left")
    tpr = np.concatenate([[0.0], (len(members) - tp) / len(members)])
    fpr = np.concatenate([[0.0], (len(nonmembers) - fp) / len(nonmembers)])
    return fpr, tpr


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score) + ½ P(tie): the Mann–Whitney form of the AUC.

    >>> roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    1.0
    >>> roc_auc(np.array([1.0]), np.array([1.0]))
    0.5
    """
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([members, nonmembers]))
    n1, n0 = len(members), len(nonmembers)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, max_fpr: float) -> float:
    """The highest TPR of a threshold whose FPR is at most ``max_fpr``."""
    fpr, tpr = roc_curve(members, nonmembers)
    ok = fpr <= max_fpr
    return float(tpr[ok].max()) if ok.any() else 0.0


def clopper_pearson_upper(errors: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper–Pearson upper bound on a binomial rate.

    >>> round(clopper_pearson_upper(0, 100, 0.05), 4)
    0.0295
    """
    from scipy.stats import beta

    if errors >= trials:
        return 1.0
    return float(beta.ppf(1 - alpha, errors + 1, trials - errors))


def epsilon_lower_bound(
    members: np.ndarray,
    nonmembers: np.ndarray,
    delta: float,
    alpha: float = 0.05,
    *,
    seed: int = 0,
) -> float:
    """An empirical ε lower bound, valid with confidence ``1 - alpha`` (0 when none).

    Choosing the best of many thresholds on the same scores that then measure it
    overstates the bound (a multiple-testing error). So the scores are split in two
    at random (``seed``): the threshold and direction are chosen on the first half,
    and only that one test is measured on the second, with one-sided Clopper–Pearson
    upper bounds on its FPR and FNR (``alpha`` split over the two). Both
    ``ln((1-δ-FPR)/FNR)`` and ``ln((1-δ-FNR)/FPR)`` bound ε for any (ε, δ)-DP
    mechanism (Jagielski et al. 2020), so under the null (no leakage) the result is
    positive with probability at most ``alpha``.
    """
    from scipy.stats import beta

    rng = np.random.default_rng(seed)
    m, n = rng.permutation(np.asarray(members)), rng.permutation(np.asarray(nonmembers))
    m_pick, m_test = m[: len(m) // 2], m[len(m) // 2 :]
    n_pick, n_test = n[: len(n) // 2], n[len(n) // 2 :]
    if min(len(m_pick), len(m_test), len(n_pick), len(n_test)) == 0:
        return 0.0

    def rates(mem: np.ndarray, non: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, ...]:
        fn = np.searchsorted(np.sort(mem), t, side="left")  # members below: missed
        fp = len(non) - np.searchsorted(np.sort(non), t, side="left")
        return fp, fn

    # Pick: the threshold and direction whose point estimate of ε is largest.
    thresholds = np.unique(np.concatenate([m_pick, n_pick]))
    fp, fn = rates(m_pick, n_pick, thresholds)
    fpr, fnr = (fp + 0.5) / (len(n_pick) + 1), (fn + 0.5) / (len(m_pick) + 1)
    scores = [
        np.log(np.maximum(1 - delta - fpr, 1e-300) / fnr),
        np.log(np.maximum(1 - delta - fnr, 1e-300) / fpr),
    ]
    direction = int(np.argmax([s.max() for s in scores]))
    threshold = thresholds[int(np.argmax(scores[direction]))]

    # Measure that one test on the held-out half.
    fp_t, fn_t = rates(m_test, n_test, np.array([threshold]))

    def upper(errors: int, trials: int) -> float:
        if errors >= trials:
            return 1.0
        return float(beta.ppf(1 - alpha / 2, errors + 1, trials - errors))

    fpr_u, fnr_u = upper(int(fp_t[0]), len(n_test)), upper(int(fn_t[0]), len(m_test))
    a, b = (fpr_u, fnr_u) if direction == 0 else (fnr_u, fpr_u)
    if b <= 0 or 1 - delta - a <= 0:
        return 0.0
    return max(0.0, float(np.log((1 - delta - a) / b)))


def canary_epsilon(inserted: np.ndarray, held_out: np.ndarray, delta: float) -> dict[str, float]:
    """One-shot client-level ε estimate from canary cosines (Andrew et al., ICLR 2024).

    ``inserted`` are cos(θ_T - θ_0, c_i) of the canary directions that took part in
    training, ``held_out`` those of directions never inserted (≈ N(0, 1/d)). A
    Gaussian N(μ, σ²) is fitted to the inserted cosines, with μ measured against the
    held-out mean, and the estimate is the ε at δ of telling N(0, σ²) from N(μ, σ²):
    a Gaussian mechanism with multiplier σ / μ. An empirical estimate, not a bound.

    >>> r = canary_epsilon(np.array([0.9, 1.1, 1.0]), np.array([0.0, 0.1, -0.1]), 1e-5)
    >>> round(r["mu"], 3), round(r["sigma"], 3), r["epsilon"] > 10
    (1.0, 0.1, True)
    """
    import dp_accounting as dpa

    ins, out = np.asarray(inserted, np.float64), np.asarray(held_out, np.float64)
    base = float(out.mean()) if out.size else 0.0
    mu = float(ins.mean()) - base
    sigma = float(
        max(ins.std(ddof=1) if ins.size > 1 else 0.0, out.std(ddof=1) if out.size > 1 else 0.0)
    )
    if mu <= 0:
        eps = 0.0
    elif sigma <= 0:
        eps = math.inf
    else:
        eps = float(dpa.get_epsilon_gaussian(sigma / mu, delta))
    return {
        "mu": mu,
        "sigma": sigma,
        "epsilon": eps,
        "inserted": float(ins.size),
        "held_out": float(out.size),
    }


@dataclass(frozen=True)
class MembershipReport:
    """The leakage figures of one membership-inference attack."""

    auc: float
    advantage: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    epsilon_lower_bound: float
    members: int
    nonmembers: int


def membership_report(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, delta: float
) -> MembershipReport:
    """Run the loss-threshold attack (score = -loss) and summarise it."""
    members, nonmembers = -np.asarray(member_losses), -np.asarray(nonmember_losses)
    fpr, tpr = roc_curve(members, nonmembers)
    return MembershipReport(
        auc=roc_auc(members, nonmembers),
        advantage=float(np.max(tpr - fpr)),
        tpr_at_1pct_fpr=tpr_at_fpr(members, nonmembers, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(members, nonmembers, 0.001),
        epsilon_lower_bound=epsilon_lower_bound(members, nonmembers, delta),
        members=len(members),
        nonmembers=len(nonmembers),
    )
