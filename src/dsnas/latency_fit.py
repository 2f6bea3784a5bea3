"""A latency table fitted to children timed end to end.

Entries timed alone miss what a network adds around them: a cold cache, fusion, dispatch, the
layout changes between blocks. So a table's entries are fitted to random children timed whole,
as a linear model over the one-hot architecture: a child's latency is the fixed part plus one
entry per block. A bias per block or per stage adds nothing to that model (it shifts every
candidate of a block alike, which the entries already can), so the only extra term is the fixed
part, one number paid by every child.

With a few dozen children and about a hundred entries the least-squares problem is
underdetermined, so it is regularised toward the lookup entries (timed alone, times the table's
calibration scale): minimise ``|X w - t|^2 + ridge |w - prior|^2``. ``ridge`` counts in children:
an entry is in about n / candidates of n children, so with fewer than ``ridge`` of them it stays
near its lookup value and with many more it follows the timings. No entry may be negative (a
negative time is never what a child spends): entries that come out below zero are held at zero
and the others solved again, so that the rest of the fit makes up for them (clipping after one
solve would not: of two entries that cancel in the fit, one clipped, the sum is too high).

How strong the pull should be depends on the device's noise and on how far its context effects
go, so unless it is given, ``ridge`` is chosen from `RIDGES` by cross-validation on the fitted
children themselves (`choose_ridge`): on a quiet machine it follows the timings, on a noisy one it
stays with the lookup.
"""

from __future__ import annotations

import numpy as np


def one_hot(archs: list[list[int]], sizes: list[int]) -> np.ndarray:
    """One row per architecture: a 1 for the chosen candidate of every block (blocks of ``sizes``
    candidates, side by side), and a last column of ones for the fixed part."""
    offsets = np.cumsum([0, *sizes])
    x = np.zeros((len(archs), offsets[-1] + 1))
    for row, arch in zip(x, archs):
        row[[offsets[b] + c for b, c in enumerate(arch)]] = 1.0
        row[-1] = 1.0
    return x


def fit_entries(archs: list[list[int]], times: list[float], prior: list[list[float]], prior_fixed: float,
                ridge: float) -> tuple[list[list[float]], float]:
    """Entries (per block, per candidate, ms) and the fixed part fitted to ``times`` of ``archs``
    by least squares, pulled toward ``prior`` and ``prior_fixed`` with strength ``ridge`` (see the
    module's docstring). With no architectures it returns the prior."""
    sizes = [len(row) for row in prior]
    p = np.array([v for row in prior for v in row] + [prior_fixed])
    if not archs:
        return [list(row) for row in prior], prior_fixed
    w = _nonnegative_ridge(one_hot(archs, sizes), np.asarray(times, dtype=float), p, ridge)
    bounds = np.cumsum([0, *sizes])
    return [w[lo:hi].tolist() for lo, hi in zip(bounds[:-1], bounds[1:])], float(w[-1])


def _nonnegative_ridge(x: np.ndarray, t: np.ndarray, p: np.ndarray, ridge: float) -> np.ndarray:
    """argmin |x w - t|^2 + ridge |w - p|^2 over w >= 0, by holding at zero the entries that
    come out negative and solving again for the others until none does (at most one pass per
    entry; the prior is positive, so in practice one or two)."""
    free = np.ones(len(p), dtype=bool)
    for _ in range(len(p)):
        # Solved for the correction d = w - p of the free entries, the held ones at zero:
        # |X d - (t - X w0)|^2 + ridge |d|^2 as one stacked least-squares system. With ridge 0,
        # lstsq gives the least correction that fits.
        w = np.where(free, p, 0.0)
        a = np.vstack([x[:, free], np.sqrt(ridge) * np.eye(int(free.sum()))])
        b = np.concatenate([t - x @ w, np.zeros(int(free.sum()))])
        w[free] += np.linalg.lstsq(a, b, rcond=None)[0]
        if (w >= 0).all():
            return w
        free &= w > 0
    return np.maximum(w, 0.0)


RIDGES = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0)  # children's worth of evidence in the prior; 256: the lookup
FOLDS = 5
MIN_CHILDREN_TO_CHOOSE = 2 * FOLDS  # fewer children than this: each fold's check is too thin
DEFAULT_RIDGE = 4.0  # when too few children to choose: an entry follows its timings once in ~4 children


def choose_ridge(archs: list[list[int]], times: list[float], prior: list[list[float]], prior_fixed: float,
                 ridges: tuple[float, ...] = RIDGES) -> float:
    """The ridge of ``ridges`` whose fits predict the left-out fold best (sum of squared ms,
    what the fit itself minimises), over `FOLDS` folds of the children taken in turn."""
    if len(archs) < MIN_CHILDREN_TO_CHOOSE:
        return DEFAULT_RIDGE
    folds = [list(range(k, len(archs), FOLDS)) for k in range(FOLDS)]

    def held_out_error(ridge: float) -> float:
        total = 0.0
        for fold in folds:
            kept = [i for i in range(len(archs)) if i not in fold]
            rows, fixed = fit_entries([archs[i] for i in kept], [times[i] for i in kept], prior, prior_fixed, ridge)
            total += sum((predict(rows, fixed, archs[i]) - times[i]) ** 2 for i in fold)
        return total
    return min(ridges, key=held_out_error)


def predict(rows: list[list[float]], fixed: float, arch: list[int]) -> float:
    """The latency of ``arch`` (one candidate index per block): the fixed part plus its entries."""
    return fixed + sum(row[c] for row, c in zip(rows, arch))
