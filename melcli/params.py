"""Feature parameters: one frozen, validated, serialisable object.

Nothing here does I/O or imports numerical libraries, so the CLI can build and
validate parameters (and ``--help`` can run) without paying for numpy/librosa.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from melcli.errors import ParameterError

Kind = Literal["stft", "mel"]

#: Window names accepted by ``--window`` -> scipy.signal.get_window name.
#: These are the eight windows of the lecture; aliases map to the canonical name.
WINDOWS: dict[str, str] = {
    "rectangular": "boxcar",
    "boxcar": "boxcar",
    "hann": "hann",
    "hamming": "hamming",
    "blackman": "blackman",
    "bartlett": "bartlett",
    "gaussian": "gaussian",
    "kaiser": "kaiser",
    "flattop": "flattop",
}
#: Windows that need a parameter after a colon (``gaussian:STD``, ``kaiser:BETA``).
WINDOW_PARAM: dict[str, str] = {"gaussian": "STD", "kaiser": "BETA"}
PAD_MODES = ("constant", "reflect", "edge")
SCALES = ("linear", "db", "log")
DTYPES = ("float32", "float16", "float64")
MEL_SCALES = ("slaney", "htk")
NORMS = ("slaney", "none")
#: HDF5 storage of the entries (``--compression``): h5py's filters, chunked along time.
COMPRESSIONS = ("none", "gzip", "lzf")

STFT_FIELDS = (
    "kind", "sr", "mono", "n_fft", "win_length", "hop_length", "window", "center",
    "pad_mode", "power", "complex", "scale", "top_db", "amin", "dtype",
)  # fmt: skip
MEL_FIELDS = ("n_mels", "fmin", "fmax", "mel_scale", "norm")


def parse_window(spec: str) -> tuple[str, float | None]:
    """Parse a ``--window`` value into a canonical (name, parameter) pair.

    Parameters
    ----------
    spec : str
        ``NAME`` or ``NAME:PARAM``, e.g. ``hann``, ``rectangular``, ``kaiser:14``.

    Returns
    -------
    name : str
        The scipy.signal window name (``rectangular`` becomes ``boxcar``).
    param : float or None
        The window's parameter (gaussian std in samples, kaiser beta), else None.

    Raises
    ------
    ParameterError
        For an unknown name, a missing, extra or non-numeric parameter.
    """
    raw_name, sep, raw_param = spec.strip().partition(":")
    name = WINDOWS.get(raw_name.strip().lower())
    if name is None:
        valid = ", ".join(f"{n}:{WINDOW_PARAM[n]}" if n in WINDOW_PARAM else n for n in WINDOWS)
        raise ParameterError(f"unknown window {spec!r}; valid windows: {valid}")
    if name in WINDOW_PARAM:
        if not sep or not raw_param.strip():
            raise ParameterError(
                f"window {name!r} needs a parameter: {name}:{WINDOW_PARAM[name]} "
                f"(e.g. {name}:{'14' if name == 'kaiser' else '400'})"
            )
        try:
            value = float(raw_param)
        except ValueError:
            raise ParameterError(
                f"window parameter {raw_param!r} in {spec!r} is not a number"
            ) from None
        if not math.isfinite(value) or (name == "gaussian" and value <= 0):
            raise ParameterError(f"window parameter in {spec!r} must be a positive number")
        return name, value
    if sep:
        raise ParameterError(f"window {name!r} takes no parameter (got {spec!r})")
    return name, None


def window_spec(window: str) -> str | tuple[str, float]:
    """Return the ``scipy.signal.get_window`` spec for a canonical window string."""
    name, param = parse_window(window)
    return name if param is None else (name, param)


def _canonical_window(spec: str) -> str:
    name, param = parse_window(spec)
    return name if param is None else f"{name}:{param!r}"


@dataclass(frozen=True, kw_only=True)
class FeatureParams:
    """Every parameter that determines the features, resolved and validated.

    Names and defaults follow librosa (``librosa.stft`` /
    ``librosa.feature.melspectrogram``) except ``sr``: ``None`` keeps each file's
    native rate instead of resampling to 22050 Hz.

    Parameters
    ----------
    kind : {'stft', 'mel'}
        Which feature to compute.
    sr : int > 0 or None
        Resample every file to this rate; None keeps the native rate.
    mono : bool
        Downmix to mono (mean of channels, as librosa.to_mono); else keep channels.
    n_fft : int > 0
        FFT length.
    win_length : int in [1, n_fft] or None
        Window length; None means n_fft.
    hop_length : int > 0 or None
        Hop between frames; None means win_length // 4.
    window : str
        ``NAME[:PARAM]``, see `WINDOWS`.
    center : bool
        Pad by n_fft // 2 on both sides so frame t is centred at t * hop_length.
    pad_mode : {'constant', 'reflect', 'edge'}
        Padding used when ``center``.
    power : float > 0
        Exponent of the magnitude (2 = power, 1 = magnitude).
    complex : bool
        ``stft`` only: store the complex STFT instead of a magnitude.
    scale : {'linear', 'db', 'log'}
        Scaling of the magnitudes after the filterbank.
    top_db : float >= 0 or None
        With ``scale='db'``: clip below ``max - top_db``; None means no clipping.
    amin : float > 0
        Floor before ``db`` / ``log`` scaling.
    dtype : {'float32', 'float16', 'float64'}
        Stored dtype (complex64/complex128 with ``complex``).
    n_mels, fmin, fmax, mel_scale, norm
        ``mel`` only: the filterbank, as ``librosa.filters.mel`` (``htk`` is
        ``mel_scale == 'htk'``; ``norm='none'`` is librosa's ``norm=None``).
        ``fmax=None`` means each file's Nyquist frequency.
    """

    kind: Kind
    sr: int | None = None
    mono: bool = True
    n_fft: int = 2048
    win_length: int = field(default=None)  # type: ignore[assignment]
    hop_length: int = field(default=None)  # type: ignore[assignment]
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    power: float = 2.0
    complex: bool = False
    scale: str = "linear"
    top_db: float | None = None
    amin: float = 1e-10
    dtype: str = "float32"
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    mel_scale: str = "slaney"
    norm: str = "slaney"

    def __post_init__(self) -> None:
        def fix(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.kind not in ("stft", "mel"):
            raise ParameterError(f"kind={self.kind!r} must be 'stft' or 'mel'")
        _positive_int("n_fft", self.n_fft)
        if self.win_length is None:
            fix("win_length", self.n_fft)
        _positive_int("win_length", self.win_length)
        if self.win_length > self.n_fft:
            raise ParameterError(f"win_length={self.win_length} must not exceed n_fft={self.n_fft}")
        if self.hop_length is None:
            fix("hop_length", max(1, self.win_length // 4))
        _positive_int("hop_length", self.hop_length)
        if self.sr is not None:
            _positive_int("sr", self.sr)
        fix("window", _canonical_window(self.window))
        _choice("pad_mode", self.pad_mode, PAD_MODES)
        _choice("scale", self.scale, SCALES)
        _choice("dtype", self.dtype, DTYPES)
        fix("power", float(self.power))
        if not (math.isfinite(self.power) and self.power > 0):
            raise ParameterError(f"power={self.power} must be a positive number")
        fix("amin", float(self.amin))
        if not (math.isfinite(self.amin) and self.amin > 0):
            raise ParameterError(f"amin={self.amin} must be a positive number")
        if self.top_db is not None:
            fix("top_db", float(self.top_db))
            if not (self.top_db >= 0 and math.isfinite(self.top_db)):
                raise ParameterError(f"top_db={self.top_db} must be a non-negative number")
            if self.scale != "db":
                raise ParameterError("top_db applies only to scale='db' (--scale db)")
        if self.complex:
            if self.kind != "stft":
                raise ParameterError("complex output exists only for stft")
            if self.scale != "linear" or self.power != 2.0:
                raise ParameterError(
                    "complex output stores the raw STFT: it cannot be combined with "
                    "--power or --scale"
                )
            if self.dtype == "float16":
                raise ParameterError("complex output needs dtype float32 or float64")
        if self.scale == "db" and self.power not in (1.0, 2.0):
            raise ParameterError(
                f"scale='db' needs power 1 (amplitude_to_db) or 2 (power_to_db), not {self.power}"
            )
        _positive_int("n_mels", self.n_mels)
        fix("fmin", float(self.fmin))
        if not (math.isfinite(self.fmin) and self.fmin >= 0):
            raise ParameterError(f"fmin={self.fmin} must be a non-negative number")
        if self.fmax is not None:
            fix("fmax", float(self.fmax))
            if not (math.isfinite(self.fmax) and self.fmax > 0):
                raise ParameterError(f"fmax={self.fmax} must be a positive number")
            if self.fmin >= self.fmax:
                raise ParameterError(f"fmin={self.fmin} must be below fmax={self.fmax}")
            if self.sr is not None and self.fmax > self.sr / 2:
                raise ParameterError(
                    f"fmax={self.fmax} is above the Nyquist frequency {self.sr / 2} of sr={self.sr}"
                )
        elif self.sr is not None and self.fmin >= self.sr / 2 and self.kind == "mel":
            raise ParameterError(
                f"fmin={self.fmin} must be below the Nyquist frequency {self.sr / 2}"
            )
        _choice("mel_scale", self.mel_scale, MEL_SCALES)
        _choice("norm", self.norm, NORMS)

    # -- derived values -------------------------------------------------------
    @property
    def n_bins(self) -> int:
        """Rows of one channel's feature matrix (frequency bins or mel bands)."""
        return self.n_mels if self.kind == "mel" else self.n_fft // 2 + 1

    @property
    def out_dtype(self) -> str:
        """The numpy dtype name of stored arrays."""
        if self.complex:
            return "complex64" if self.dtype == "float32" else "complex128"
        return self.dtype

    def n_frames(self, n_samples: int) -> int:
        """Frames for a signal of ``n_samples`` samples (0 if too short).

        ``1 + n // hop`` with ``center`` (``1 + (n - 1) // hop`` for odd n_fft,
        whose centre padding is one sample shorter), ``1 + (n - n_fft) // hop``
        without.
        """
        if self.center:
            padded = n_samples + 2 * (self.n_fft // 2)
            return 1 + (padded - self.n_fft) // self.hop_length
        if n_samples < self.n_fft:
            return 0
        return 1 + (n_samples - self.n_fft) // self.hop_length

    def effective_fmax(self, sr: int) -> float:
        """fmax for a file at rate ``sr`` (its Nyquist frequency if unset)."""
        return sr / 2 if self.fmax is None else self.fmax

    # -- serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every parameter relevant to ``kind``, JSON-serialisable, defaults included."""
        names = STFT_FIELDS + (MEL_FIELDS if self.kind == "mel" else ())
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureParams:
        """Rebuild parameters from `to_dict` output (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(f"unknown parameters: {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other: FeatureParams) -> list[str]:
        """Names of the parameters whose values differ from ``other``'s."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ParameterError(f"{name}={value!r} must be a positive integer")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParameterError(f"{name}={value!r} must be one of: {', '.join(choices)}")
