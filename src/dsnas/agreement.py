"""How far one list of numbers (a prediction) agrees with another (a measurement): the order,
as Kendall's tau, and the size, as relative errors."""

from __future__ import annotations

import statistics


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b (ties counted in neither concordant nor discordant pairs)."""
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + ties_a) * (conc + disc + ties_b)) ** 0.5
    return (conc - disc) / denom if denom else float("nan")


def relative_errors(predicted: list[float], measured: list[float]) -> list[float]:
    """(predicted - measured) / measured, in %: negative where the prediction is too low."""
    return [100 * (p - m) / m for p, m in zip(predicted, measured)]


def agreement(predicted: list[float], measured: list[float]) -> dict:
    """Kendall tau, and the median and max |relative error| in %, of ``predicted`` against ``measured``."""
    errors = [abs(e) for e in relative_errors(predicted, measured)]
    return {"tau": kendall_tau(predicted, measured), "median_error_pct": statistics.median(errors),
            "max_error_pct": max(errors)}
