"""Empirical privacy auditing: how much a trained model leaks about its training data.

* Loss-threshold membership inference (Yeom, Giacomelli, Fredrikson, Jha, CSF 2018):
  score an example by ``-loss``; members (training examples) tend to have lower loss.
  Reported: ROC AUC, the best advantage ``max(TPR - FPR)`` and TPR at low FPR (the
  metric of Carlini et al., LiRA, S&P 2022).
* An empirical lower bound on ε (Jagielski, Ullman, Oprea, NeurIPS 2020,
  arXiv:2006.07709): any (ε, δ)-DP mechanism gives every threshold test
  ``FPR + e^ε FNR >= 1 - δ`` (and symmetrically), so
  ``ε >= ln((1 - δ - FPR) / FNR)``; with one-sided Clopper–Pearson upper bounds on
  FPR and FNR, the bound holds with the stated confidence.

Layer 1: numpy and scipy only.
"""

from __future__ import annotations

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
    members: np.ndarray, nonmembers: np.ndarray, delta: float, alpha: float = 0.05
) -> float:
    """The largest ε that the threshold attacks prove, with confidence ``1 - alpha``.

    For each threshold, FPR and FNR are replaced by their Clopper–Pearson upper bounds
    (``alpha`` split over the two), and both ``ln((1-δ-FPR)/FNR)`` and
    ``ln((1-δ-FNR)/FPR)`` are bounds on ε. Returns 0 when nothing is proven.
    """
    from scipy.stats import beta

    thresholds = np.unique(np.concatenate([members, nonmembers]))
    n1, n0 = len(members), len(nonmembers)
    fn = np.searchsorted(np.sort(members), thresholds, side="left")  # members below: missed
    fp = n0 - np.searchsorted(np.sort(nonmembers), thresholds, side="left")

    def upper(errors: np.ndarray, trials: int) -> np.ndarray:
        bound = beta.ppf(1 - alpha / 2, errors + 1, np.maximum(trials - errors, 1))
        return np.where(errors >= trials, 1.0, bound)

    fpr, fnr = upper(fp, n0), upper(fn, n1)
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        ok = (b > 0) & (1 - delta - a > 0)
        if ok.any():
            best = max(best, float(np.max(np.log((1 - delta - a[ok]) / b[ok]))))
    return best


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
