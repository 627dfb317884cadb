"""What to tell a user about their data and parameters, before and after a run.

Pure functions over parameters and per-input rates and lengths: no I/O. The
runner prints what they return (even with ``-q``: these are problems with the
output, not progress) and records it in the manifest's ``warnings``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from melcli.params import FeatureParams


def data_warnings(
    params: FeatureParams, rates: np.ndarray, samples: np.ndarray, keys: Sequence[str]
) -> list[str]:
    """Warnings about what these parameters make of these inputs.

    Parameters
    ----------
    params : FeatureParams
    rates, samples : np.ndarray of int
        Per input: the rate its features are computed at, and its samples per
        channel at that rate.
    keys : sequence of str
        Per input, to name an example.

    Returns
    -------
    list of str
        One line each: the kind's own (`FeatureParams.warnings`: mel bands with
        no FFT bin at some rate, and why), mixed
        sample rates, inputs shorter than ``n_fft``.
    """
    out: list[str] = []
    if not len(rates):
        return out
    unique = np.asarray(sorted(set(np.asarray(rates).tolist())))  # np.unique imports numpy.ma
    out.extend(params.warnings(unique.tolist()))
    if params.sr is None and len(unique) > 1:
        shown = ", ".join(f"{r:g}" for r in unique.tolist())
        out.append(
            f"{len(unique)} sample rates in the inputs ({shown} Hz): features are not "
            "comparable across rates (other frequency grids and frame rates); consider --sr"
        )
    short = np.flatnonzero(np.asarray(samples) < params.n_fft)
    if len(short):
        example = keys[int(short[0])]
        out.append(
            f"{len(short)} input{'s are' if len(short) > 1 else ' is'} shorter than "
            f"n_fft={params.n_fft} samples (e.g. {example}: {int(samples[short[0]])} samples): "
            "their frames are mostly padding; consider a smaller --n-fft"
        )
    return out
