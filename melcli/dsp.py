"""Analysis windows, the mel filterbank, the DCT and Savitzky-Golay deltas, in numpy only.

These are the formulas of ``scipy.signal.get_window(..., fftbins=True)``,
``librosa.filters.mel`` / ``librosa.mel_frequencies``, ``scipy.fft.dct(norm="ortho")``
and ``scipy.signal.savgol_filter(mode="interp")`` (``librosa.feature.delta``),
written here because importing ``scipy.signal``, ``scipy.fft`` and
``librosa.filters`` costs 0.6-1.6 s per process (scipy.signal parses docstrings
at import; librosa.filters pulls in numba), more than computing the features of
a thousand one-second clips. The tests check them against scipy and librosa
themselves (tests/test_dsp.py, tests/test_mfcc.py).
"""

from __future__ import annotations

import math

import numpy as np

#: Cosine-sum coefficients of scipy.signal.windows (general_cosine).
_COSINE_SUMS: dict[str, tuple[float, ...]] = {
    "hann": (0.5, 0.5),
    "hamming": (0.54, 0.46),
    "blackman": (0.42, 0.50, 0.08),
    "flattop": (0.21557895, 0.41663158, 0.277263158, 0.083578947, 0.006947368),
}


def _symmetric(name: str, m: int, param: float | None) -> np.ndarray:
    if name == "boxcar":
        return np.ones(m)
    if name in _COSINE_SUMS:
        fac = np.linspace(-np.pi, np.pi, m)
        w = np.zeros(m)
        for k, a in enumerate(_COSINE_SUMS[name]):
            w += a * np.cos(k * fac)
        return w
    n = np.arange(0, m)
    if name == "bartlett":
        return np.where(n <= (m - 1) / 2.0, 2.0 * n / (m - 1), 2.0 - 2.0 * n / (m - 1))
    if name == "gaussian":
        assert param is not None
        x = n - (m - 1.0) / 2.0
        return np.exp(-(x**2) / (2 * param * param))
    if name == "kaiser":
        assert param is not None
        alpha = (m - 1) / 2.0
        return np.i0(param * np.sqrt(1 - ((n - alpha) / alpha) ** 2.0)) / np.i0(param)
    raise ValueError(f"unknown window {name!r}")


def periodic_window(name: str, length: int, param: float | None = None) -> np.ndarray:
    """A periodic ("DFT-even") window, as ``scipy.signal.get_window(.., fftbins=True)``.

    Parameters
    ----------
    name : {'boxcar', 'hann', 'hamming', 'blackman', 'bartlett', 'gaussian', 'kaiser', 'flattop'}
    length : int > 0
    param : float, optional
        gaussian: standard deviation in samples; kaiser: beta.

    Returns
    -------
    np.ndarray, shape (length,), float64
    """
    if length == 1:
        return np.ones(1)
    return _symmetric(name, length + 1, param)[:-1]


def hz_to_mel(hz: np.ndarray | float, *, htk: bool) -> np.ndarray:
    """Hz to mel: HTK ``2595 log10(1 + f/700)`` or Slaney (linear below 1 kHz, log above)."""
    f = np.asanyarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = f >= 1000.0
    return np.where(log_t, min_log_mel + np.log(np.maximum(f, 1e-300) / 1000.0) / logstep, mels)


def mel_to_hz(mels: np.ndarray | float, *, htk: bool) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    m = np.asanyarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, 1000.0 * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_frequencies(n: int, *, fmin: float, fmax: float, htk: bool) -> np.ndarray:
    """``n`` frequencies (Hz) equally spaced on the mel scale from fmin to fmax."""
    lo, hi = hz_to_mel(np.float64(fmin), htk=htk), hz_to_mel(np.float64(fmax), htk=htk)
    return mel_to_hz(np.linspace(lo, hi, n), htk=htk)


def mel_filterbank(
    *, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str | None
) -> tuple[np.ndarray, bool]:
    """Triangular mel filters, as ``librosa.filters.mel(..., dtype=np.float32)``.

    Parameters
    ----------
    sr : int
    n_fft : int
    n_mels : int
    fmin, fmax : float
        Band edges in Hz.
    htk : bool
        HTK mel formula instead of Slaney's.
    norm : {'slaney', None}
        'slaney' divides each triangle by its width in Hz (equal area).

    Returns
    -------
    weights : np.ndarray, shape (n_mels, 1 + n_fft // 2), float32
    empty : bool
        Some filter covers no FFT bin (librosa warns "Empty filters detected").
    """
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, htk=htk)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    if norm == "slaney":
        enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
        weights *= enorm[:, np.newaxis]
    empty = not np.all((mel_f[:-2] == 0) | (weights.max(axis=1) > 0))
    return weights, bool(empty)


def dct_matrix(n_in: int, n_out: int, dct_type: int) -> np.ndarray:
    """The first ``n_out`` rows of the orthonormal DCT of type 2 or 3 of length ``n_in``.

    ``dct_matrix(n, k, t) @ x == scipy.fft.dct(x, type=t, norm="ortho")[:k]`` for
    x of length n: type 2 is ``sqrt(2/n) cos(pi k (2 i + 1) / (2 n))`` with row 0
    scaled by ``1/sqrt(2)``; type 3 (orthonormal) is its transpose, the inverse.

    Returns
    -------
    np.ndarray, shape (n_out, n_in), float64
    """
    k = np.arange(n_in)[:, None]
    i = np.arange(n_in)[None, :]
    d2 = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * i + 1) / (2 * n_in))
    d2[0] /= np.sqrt(2.0)
    full = d2 if dct_type == 2 else d2.T
    return np.ascontiguousarray(full[:n_out])


def savgol_deltas(x: np.ndarray, order: int, width: int = 9) -> np.ndarray:
    """``librosa.feature.delta(x, width=width, order=order, axis=-1)``.

    That is ``scipy.signal.savgol_filter(x, width, polyorder=order, deriv=order,
    mode="interp")``: inside, a least-squares polynomial of degree ``order`` over
    ``width`` frames centred on each frame, differentiated ``order`` times; the
    first and last ``width // 2`` frames take the derivative of the polynomial
    fitted to the first (last) ``width`` frames, at their own position.

    Parameters
    ----------
    x : np.ndarray, (..., frames) with frames >= width
    order : int >= 1
    width : int, odd, > order

    Returns
    -------
    np.ndarray
        Same shape and dtype as ``x``.
    """
    half = width // 2
    pos = np.arange(width, dtype=np.float64)
    # rows: the derivative of order `order` at each position of a window, as
    # weights on the window's values (pinv of the Vandermonde matrix)
    vander = pos[:, None] ** np.arange(order + 1)[None, :]
    fit = np.linalg.pinv(vander)  # (order + 1, width): coefficients from values
    powers = np.arange(order + 1)
    fact = np.array([math.perm(int(j), order) for j in powers], dtype=np.float64)
    expo = np.clip(powers - order, 0, None)
    at = fact[None, :] * pos[:, None] ** expo[None, :]  # d^order/dx^order of x^j at pos
    weights = at @ fit  # (width, width): derivative at position p from the window's values
    data = np.asarray(x, dtype=np.float64)
    out = np.empty(data.shape, dtype=np.float64)
    frames = data.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(data, width, axis=-1)
    out[..., half : frames - half] = windows @ weights[half]
    out[..., :half] = data[..., :width] @ weights[:half].T
    out[..., frames - half :] = data[..., frames - width :] @ weights[half + 1 :].T
    return out.astype(x.dtype, copy=False)
