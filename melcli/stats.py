"""Dataset statistics for global normalisation (global CMVN): per feature row, the
count, sum and sum of squares over every frame of every entry, in float64.

Sufficient statistics add and subtract, so an incremental rerun updates the
totals from what it adds and what it drops, without rereading kept entries.
Pure numpy, no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RowStats:
    """Running per-row count / sum / sum of squares of feature matrices.

    An entry of shape (rows, frames) counts ``frames`` values per row; one of
    shape (channels, rows, frames) counts ``channels * frames``.
    """

    def __init__(self, rows: int) -> None:
        self.count = 0
        self.sum = np.zeros(rows, np.float64)
        self.sumsq = np.zeros(rows, np.float64)

    def add(self, data: np.ndarray, sign: int = 1) -> None:
        """Add (``sign=-1``: subtract) the frames of one entry or of a part of one."""
        x = np.asarray(data, dtype=np.float64)
        x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.ndim == 3 else x[None]
        self.count += sign * x.shape[0] * x.shape[-1]
        self.sum += sign * x.sum(axis=(0, 2))
        self.sumsq += sign * np.einsum("crt,crt->r", x, x)

    def merge(self, other: RowStats) -> None:
        """Add another accumulator's totals."""
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq

    def to_dict(self) -> dict[str, Any]:
        """As the manifest records it (JSON floats round-trip exactly)."""
        return {"count": self.count, "sum": self.sum.tolist(), "sumsq": self.sumsq.tolist()}

    @classmethod
    def from_dict(cls, data: Any, rows: int) -> RowStats | None:
        """The recorded totals, or None when absent or not of ``rows`` rows."""
        if not isinstance(data, dict):
            return None
        try:
            s, q, n = data["sum"], data["sumsq"], int(data["count"])
            out = cls(rows)
            out.sum[:] = np.asarray(s, np.float64)
            out.sumsq[:] = np.asarray(q, np.float64)
        except (KeyError, TypeError, ValueError):
            return None
        out.count = n
        return out

    def summary(self) -> dict[str, Any]:
        """``{"count", "mean", "std"}`` per row (population std; NaN when empty)."""
        n = max(self.count, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum / n if n else np.full_like(self.sum, np.nan)
            var = self.sumsq / n - mean**2 if n else np.full_like(self.sum, np.nan)
        return {"count": n, "mean": mean, "std": np.sqrt(np.maximum(var, 0.0))}
