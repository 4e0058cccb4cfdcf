"""The rules every monitoring figure shares, so each statistics module and report applies the same
ones: the bootstrap's interval level and resample count, the fewest labelled rows a realised
figure or a comparison's verdict is computed from, and how a figure is rounded for JSON.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
RESAMPLES = 200
MIN_LABELLED = 30


def bounds(samples: np.ndarray) -> tuple[float, float]:
    """The central LEVEL interval of bootstrap samples (percentiles)."""
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def rounded(value: float | None, digits: int = 4) -> float | None:
    """A figure as reports give it: rounded, and None when undefined (None, NaN, infinite)."""
    return None if value is None or not np.isfinite(value) else round(float(value), digits)
