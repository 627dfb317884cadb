"""What to tell a user about their data and parameters, before and after a run.

Pure functions over parameters and per-input rates and lengths: no I/O. The
runner prints what they return (even with ``-q``: these are problems with the
output, not progress) and records it in the manifest's ``warnings``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from melcli.params import FeatureParams

#: Rates suggested for ``--sr`` when ``--fmax`` is above every input's Nyquist.
COMMON_RATES = (16000, 22050, 24000, 32000, 44100, 48000, 96000)


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
        One line each: mel bands with no FFT bin at some rate (and why), mixed
        sample rates, inputs shorter than ``n_fft``.
    """
    out: list[str] = []
    if not len(rates):
        return out
    empty = empty_filters(params, sorted(set(np.unique(rates).tolist())))
    if empty:
        out.append(empty)
    unique = np.unique(rates)
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


def empty_filters(params: FeatureParams, rates: Sequence[int]) -> str | None:
    """The empty-filterbank warning for these rates (None: every band has a bin).

    The cause named is the real one: the bands between fmin and fmax are
    narrower than the FFT bins there, whether because of ``--n-mels``,
    ``--n-fft`` or a narrow ``--fmin``/``--fmax`` range.
    """
    from melcli import features

    if params.kind != "mel":
        return None
    parts = []
    for sr in rates:
        fmax = params.effective_fmax(sr)
        if fmax > sr / 2 or params.fmin >= fmax or not features.has_empty_filters(params, sr):
            continue  # such inputs fail (or are fine) on their own
        basis = features.mel_basis(params, sr)
        n_empty = int(np.count_nonzero(basis.max(axis=1) == 0))
        parts.append(
            f"{n_empty} of {params.n_mels} bands are all zeros at {sr} Hz ({params.n_mels} "
            f"bands over {params.fmin:g}-{fmax:g} Hz, FFT bins {sr / params.n_fft:.3g} Hz apart)"
        )
    if not parts:
        return None
    return (
        f"empty filters: {'; '.join(parts)}: n_mels={params.n_mels} is too many bands for "
        f"n_fft={params.n_fft} over that range; use a larger --n-fft, fewer --n-mels"
        + (" or a wider --fmin/--fmax range" if params.fmin > 0 or params.fmax else "")
    )


def fails_everywhere(params: FeatureParams, rates: Sequence[int]) -> str | None:
    """The one-line reason when a parameter makes every one of these inputs fail
    the same way (None otherwise): said once, with the fix, before any work."""
    if params.kind != "mel" or not rates:
        return None
    top = max(rates)
    if params.fmax is not None and all(params.fmax > sr / 2 for sr in rates):
        need = next((r for r in COMMON_RATES if r / 2 >= params.fmax), int(2 * params.fmax))
        return (
            f"--fmax {params.fmax:g} is above the Nyquist frequency of all {len(rates)} "
            f"inputs (max {top / 2:g} Hz); use --sr {need} or a lower --fmax"
        )
    if all(params.fmin >= params.effective_fmax(sr) for sr in rates):
        return (
            f"--fmin {params.fmin:g} is not below fmax at the rate of any of the {len(rates)} "
            f"inputs (at most {params.effective_fmax(top):g} Hz); use a lower --fmin"
            + ("" if params.fmax is not None else " or a higher --sr")
        )
    return None
