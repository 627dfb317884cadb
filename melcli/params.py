"""Feature parameters: each declared once, as a field of a frozen, validated class.

`FeatureParams` holds the settings every kind shares (input, framing, spectrum,
scaling) and the interface a feature kind implements; each kind's module in
`melcli.kinds` subclasses it with its own fields and stage. A field's `Setting`
(help, --help section, choices, check) is the one declaration of a parameter:
the command-line options, ``--like`` and inspect's preview are generated from it.
Nothing here does I/O or imports numerical libraries, so the CLI can build and
validate parameters (and ``--help`` can run) without paying for numpy/librosa.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from melcli.errors import DecodeError, ParameterError

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
SCALES = ("linear", "db", "log", "whisper")
TAILS = ("pad", "zeros")
DTYPES = ("float32", "float16", "float64")
NORMALIZE = ("none", "mean", "meanvar")
#: HDF5 storage of the entries (``--compression``): h5py's filters, chunked along time.
COMPRESSIONS = ("none", "gzip", "lzf")


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
        raise ParameterError(f"unknown window {spec!r}; valid windows: {valid}", param="window")
    if name in WINDOW_PARAM:
        if not sep or not raw_param.strip():
            raise ParameterError(
                f"window {name!r} needs a parameter: {name}:{WINDOW_PARAM[name]} "
                f"(e.g. {name}:{'14' if name == 'kaiser' else '400'})",
                param="window",
            )
        try:
            value = float(raw_param)
        except ValueError:
            raise ParameterError(
                f"window parameter {raw_param!r} in {spec!r} is not a number", param="window"
            ) from None
        if not math.isfinite(value) or (name == "gaussian" and value <= 0):
            raise ParameterError(
                f"window parameter in {spec!r} must be a positive number", param="window"
            )
        return name, value
    if sep:
        raise ParameterError(f"window {name!r} takes no parameter (got {spec!r})", param="window")
    return name, None


def window_spec(window: str) -> str | tuple[str, float]:
    """Return the ``scipy.signal.get_window`` spec for a canonical window string."""
    name, param = parse_window(window)
    return name if param is None else (name, param)


def _canonical_window(spec: str) -> str:
    name, param = parse_window(spec)
    return name if param is None else f"{name}:{param!r}"


#: --help sections of the feature parameters, in order (a kind's own come first,
#: under its `FeatureParams.TITLE`).
STAGES = ("Input", "Framing", "Spectrum", "Scaling")


@dataclass(frozen=True)
class Setting:
    """How one parameter is offered and checked: the one declaration of a parameter.

    It is the metadata of a `FeatureParams` field (see `setting`), whose name,
    annotation and default complete it. The command-line options, their
    ``--help`` sections, ``--like`` and inspect's preview are generated from it.

    Attributes
    ----------
    help : str
        The option's help text.
    stage : str or None
        Its --help section (one of `STAGES`); None for a kind's own parameters.
    choices : tuple of str
        Allowed values (matched in any case on the command line).
    check : {'positive_int', 'positive', 'non_negative', None}
        The value check applied when the parameter is set (None values pass
        when the field is optional).
    flag : str or None
        A boolean's Click declaration (``--center/--no-center``).
    default_text : str or None
        What ``[default: ...]`` says when the default is not a plain value.
    """

    help: str
    stage: str | None = None
    choices: tuple[str, ...] = ()
    check: str | None = None
    flag: str | None = None
    default_text: str | None = None


def setting(default: Any, help: str, **how: Any) -> Any:
    """A `FeatureParams` field with its `Setting` (keyword arguments as `Setting`'s)."""
    return field(default=default, metadata={"setting": Setting(help=help, **how)})


@dataclass(frozen=True)
class Declared:
    """One declared parameter of a kind: a field of its `FeatureParams` class."""

    name: str
    type: str  # 'int', 'float', 'bool' or 'str'
    optional: bool  # None is a value (e.g. sr=None: each file's own rate)
    default: Any
    setting: Setting

    @property
    def option(self) -> str:
        """The long option, ``--n-fft``."""
        return "--" + self.name.replace("_", "-")


#: How a kind's rows are placed on a picture's vertical axis (`Display.rows`).
ROW_AXES = ("linear", "mel", "index")


@dataclass(frozen=True)
class Display:
    """How a picture shows a kind's entries (`FeatureParams.display`): the rows' axis
    and the colour scale. Pictures (`melcli.plot`) follow it for every kind alike.

    Attributes
    ----------
    rows : {'linear', 'mel', 'index'}
        linear: rows evenly spaced in Hz (FFT bins); mel: evenly spaced on a mel scale,
        labelled in Hz (`FeatureParams.row_frequencies` places the labels); index: rows
        that are not frequencies (cepstral coefficients), labelled by number.
    row_label : str
        The vertical axis's label.
    db_factor : float or None
        Linear values are drawn as ``db_factor * log10(max(x, amin))`` (10 for power, 20
        for magnitude); None: drawn as stored.
    unit : str
        The colour bar's label.
    span : float or None
        The colour range below the entry's maximum, in the drawn unit (80 dB, as
        ``librosa.display`` figures are usually clipped); None: the entry's whole range.
    diverging : bool
        Values of both signs around 0 (cepstra, normalised features): a diverging colour
        map centred on 0.
    blocks : int
        Row blocks stacked in an entry (1 + delta orders); only the first is drawn.
    """

    rows: str
    row_label: str
    db_factor: float | None
    unit: str
    span: float | None
    diverging: bool = False
    blocks: int = 1


#: The colour range of a picture below its maximum, in dB.
DISPLAY_DB_RANGE = 80.0


@dataclass(frozen=True, kw_only=True)
class FeatureParams:
    """Every parameter that determines the features, resolved and validated.

    The base of each feature kind's parameters (`melcli.kinds`): the shared
    input, framing, spectrum and scaling settings; a kind adds its own fields
    and stages. ``FeatureParams(kind="mel", n_mels=64)`` builds the registered
    kind's class (`MelParams`), so callers need not know the classes.

    Names and defaults follow librosa (``librosa.stft`` /
    ``librosa.feature.melspectrogram``) except ``sr``: ``None`` keeps each file's
    native rate instead of resampling to 22050 Hz.

    Parameters
    ----------
    kind : str
        The feature kind (a name in `melcli.kinds.KINDS`).
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
    tail : {'pad', 'zeros'}
        The end of a centred signal: padded as its start (``pad``), or followed by
        zeros with the frame centred on the end dropped (``zeros``, Whisper).
    power : float > 0
        Exponent of the magnitude (2 = power, 1 = magnitude).
    scale : {'linear', 'db', 'log', 'whisper'}
        Scaling of the magnitudes after the kind's stage.
    top_db : float >= 0 or None
        With ``scale='db'``: clip below ``max - top_db``; None means no clipping.
    amin : float > 0
        Floor before ``db`` / ``log`` scaling.
    normalize : {'none', 'mean', 'meanvar'}
        Per-entry normalisation over frames, last (`melcli.features.normalize`).
    dtype : {'float32', 'float16', 'float64'}
        Stored dtype.
    """

    #: The kind's name (its command), set by each kind's class.
    NAME: ClassVar[str] = ""
    #: The kind's --help section title for its own options.
    TITLE: ClassVar[str] = ""
    #: Its command's one-line help, and example command lines.
    SUMMARY: ClassVar[str] = ""
    EXAMPLES: ClassVar[tuple[str, ...]] = ()
    #: Keys older melcli versions recorded for this kind, with the only value they
    #: had: `from_dict` accepts and drops them.
    LEGACY: ClassVar[dict[str, Any]] = {}
    #: Shared parameters the kind derives from its own (recorded, not offered as options).
    DERIVED: ClassVar[frozenset[str]] = frozenset()
    #: How a picture places the rows (`Display.rows`), and the parameters its title names.
    ROW_AXIS: ClassVar[str] = "linear"
    TITLE_PARAMS: ClassVar[tuple[str, ...]] = ("n_fft", "hop_length", "window")

    kind: str
    sr: int | None = setting(
        None, "Resample every file to this rate (soxr HQ, as librosa.load).",
        stage="Input", check="positive_int",
        default_text="keep each file's native rate (librosa.load would use 22050)",
    )  # fmt: skip
    mono: bool = setting(
        True, "Average channels (librosa.to_mono), or keep them: entries then have shape "
        "(channels, bins, frames).", stage="Input", flag="--mono/--keep-channels",
    )  # fmt: skip
    n_fft: int = setting(2048, "FFT length.", stage="Framing", check="positive_int")
    win_length: int = setting(
        None, "Window length, at most n_fft; zero-padded to n_fft.",
        stage="Framing", check="positive_int", default_text="n_fft",
    )  # fmt: skip
    hop_length: int = setting(
        None, "Samples between frames.", stage="Framing", check="positive_int",
        default_text="win_length // 4",
    )  # fmt: skip
    window: str = setting(
        "hann", "Window NAME[:PARAM]: "
        + ", ".join(f"{n}:{WINDOW_PARAM[n]}" if n in WINDOW_PARAM else n for n in WINDOWS)
        + ". gaussian's STD is in samples.", stage="Framing",
    )  # fmt: skip
    center: bool = setting(
        True, "Pad n_fft//2 on both sides so frame t is centred at t*hop. Frames: 1 + n//hop "
        "with --center, 1 + (n - n_fft)//hop without.", stage="Framing",
        flag="--center/--no-center",
    )  # fmt: skip
    pad_mode: str = setting(
        "constant", "Padding used by --center (as librosa >= 0.10).",
        stage="Framing", choices=PAD_MODES,
    )  # fmt: skip
    tail: str = setting(
        "pad", "How a centred signal ends: pad (like its start, with --pad-mode: 1 + n//hop "
        "frames, as librosa) or zeros (zeros follow it and the frame centred on its end is "
        "dropped: n//hop frames, a --top-db clip seeing every frame that touches the signal; "
        "as whisper.transcribe).", stage="Framing", choices=TAILS,
    )  # fmt: skip
    power: float = setting(
        2.0, "Exponent of the magnitude: 2 = power, 1 = magnitude.",
        stage="Spectrum", check="positive",
    )  # fmt: skip
    scale: str = setting(
        "linear", "db: librosa.power_to_db (power 2) / amplitude_to_db (power 1), ref=1.0; "
        "log: natural log of max(x, amin) (ASR log-mel); whisper: log10(max(x, amin)), "
        "clipped at max - TOP_DB, then (x + 4) / 4 (Whisper's log-mel).", stage="Scaling",
        choices=SCALES,
    )  # fmt: skip
    top_db: float | None = setting(
        None, "With --scale db: clip at max - TOP_DB. Off by default (librosa's own default "
        "is 80).", stage="Scaling", check="non_negative",
    )  # fmt: skip
    amin: float = setting(
        1e-10, "Floor applied before --scale db/log.", stage="Scaling", check="positive"
    )
    normalize: str = setting(
        "none", "Per entry, over its frames, each row (and channel) on its own, last: mean "
        "subtracts the mean, meanvar also divides by the standard deviation (per-utterance "
        "CMVN).", stage="Scaling", choices=NORMALIZE,
    )  # fmt: skip
    dtype: str = setting(
        "float32", "Stored dtype (complex64/complex128 with stft --complex).",
        stage="Scaling", choices=DTYPES,
    )  # fmt: skip

    def __new__(cls, *args: Any, **kwargs: Any) -> FeatureParams:  # noqa: D102
        if cls is FeatureParams:  # dispatch to the kind's class
            from melcli.kinds import kind_class

            cls = kind_class(kwargs.get("kind"), kwargs.get("frontend"))
            for name in kwargs:
                if name not in cls.field_names():
                    raise ParameterError(
                        f"does not apply to {cls.NAME} features", param=name, value=kwargs[name]
                    )
        return object.__new__(cls)

    def __post_init__(self) -> None:
        if self.kind != self.NAME:
            raise ParameterError(f"is not {self.NAME!r}", param="kind", value=self.kind)
        for d in declared(type(self)):
            self._check(d)
        if self.win_length is None:
            self._fix("win_length", self.n_fft)
        if self.win_length > self.n_fft:
            raise ParameterError(
                f"must not exceed n_fft={self.n_fft}", param="win_length", value=self.win_length
            )
        if self.hop_length is None:
            self._fix("hop_length", max(1, self.win_length // 4))
        self._fix("window", _canonical_window(self.window))
        if self.top_db is not None and self.scale not in ("db", "whisper"):
            raise ParameterError("applies only to --scale db or whisper", param="top_db",
                                 value=self.top_db)  # fmt: skip
        if self.tail == "zeros" and not self.center:
            raise ParameterError("ends a centred signal: it needs --center", param="tail",
                                 value=self.tail)  # fmt: skip
        if self.scale == "db" and self.power not in (1.0, 2.0):
            raise ParameterError(
                "with scale='db' must be 1 (amplitude_to_db) or 2 (power_to_db)",
                param="power",
                value=self.power,
            )
        self.validate()

    def _fix(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check(self, d: Declared) -> None:
        value = getattr(self, d.name)
        if value is None and (d.optional or d.default is None):
            return  # None: unset (each file's rate, no clip) or derived (win_length)
        how = d.setting
        if d.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError("must be a number", param=d.name, value=value)
            value = float(value)
            self._fix(d.name, value)
            if not math.isfinite(value):
                raise ParameterError("must be a finite number", param=d.name, value=value)
        if how.check == "positive_int" and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            raise ParameterError("must be a positive integer", param=d.name, value=value)
        if how.check == "positive" and not value > 0:
            raise ParameterError("must be a positive number", param=d.name, value=value)
        if how.check == "non_negative" and not value >= 0:
            raise ParameterError("must be a non-negative number", param=d.name, value=value)
        if how.choices and value not in how.choices:
            raise ParameterError(f"must be one of: {', '.join(how.choices)}", param=d.name,
                                 value=value)  # fmt: skip
        if d.type == "bool" and not isinstance(value, bool):
            raise ParameterError("must be true or false", param=d.name, value=value)

    def validate(self) -> None:
        """The kind's own checks of its combination of parameters (after the shared ones)."""

    # -- what the rest of the program asks of a kind ------------------------------
    @property
    def n_bins(self) -> int:
        """Rows of one channel's feature matrix (frequency bins, mel bands, ...)."""
        raise NotImplementedError

    @property
    def stage_bins(self) -> int:
        """Rows out of `block_stage` (before `entry_stage`; n_bins unless that changes them)."""
        return self.n_bins

    @property
    def db_multiplier(self) -> float:
        """``--scale db`` is ``db_multiplier * log10(max(amin, S))``: 10 for power, 20 for
        amplitude (``librosa.power_to_db`` / ``amplitude_to_db``)."""
        return 20.0 / self.power

    @property
    def stores_complex(self) -> bool:
        """True when entries are the complex STFT (no magnitude, scaling or statistics)."""
        return False

    @property
    def out_dtype(self) -> str:
        """The numpy dtype name of stored arrays."""
        if self.stores_complex:
            return "complex64" if self.dtype == "float32" else "complex128"
        return self.dtype

    @property
    def needs_whole_entry(self) -> bool:
        """True when the last stage needs every frame of an entry (``top_db``'s maximum),
        so a long file cannot be computed in independent parts."""
        return (
            (self.scale in ("db", "whisper") and self.top_db is not None)
            or self.normalize != "none"
            or self.tail == "zeros"
        )

    def n_frames(self, n_samples: int) -> int:
        """Frames for a signal of ``n_samples`` samples (0 if too short).

        ``1 + n // hop`` with ``center`` (``1 + (n - 1) // hop`` for odd n_fft,
        whose centre padding is one sample shorter), ``1 + (n - n_fft) // hop``
        without.
        """
        if self.center and self.tail == "zeros":
            return n_samples // self.hop_length
        if self.center:
            padded = n_samples + 2 * (self.n_fft // 2)
            return 1 + (padded - self.n_fft) // self.hop_length
        if n_samples < self.n_fft:
            return 0
        return 1 + (n_samples - self.n_fft) // self.hop_length

    def row_frequencies(self, sr: int) -> Any:
        """Frequency in Hz of each feature row at rate ``sr`` (np.ndarray, (n_bins,), float64)."""
        raise NotImplementedError

    def display(self) -> Display:
        """How pictures show this kind's entries: its rows' axis (`ROW_AXIS`) and the
        colour scale its scaling calls for (linear values in dB with the factor of their
        power; logarithmic ones as stored, with their unit)."""
        row_label = "Hz" if self.ROW_AXIS != "index" else "row"
        blocks = 1 + int(getattr(self, "deltas", 0))
        if self.stores_complex:
            return Display(self.ROW_AXIS, row_label, 20.0, "dB (|X|)", DISPLAY_DB_RANGE)
        if self.normalize != "none":
            return Display(self.ROW_AXIS, row_label, None,
                           f"{self.scale}, normalised ({self.normalize})", None,
                           diverging=True, blocks=blocks)  # fmt: skip
        decades = DISPLAY_DB_RANGE / self.db_multiplier  # of the stored values
        how = {
            "linear": (self.db_multiplier, "dB", DISPLAY_DB_RANGE),
            "db": (None, "dB", DISPLAY_DB_RANGE),
            "log": (None, "ln", decades * math.log(10)),
            "whisper": (None, "Whisper log-mel", None),
        }[self.scale]
        return Display(self.ROW_AXIS, row_label, *how, blocks=blocks)

    def title(self) -> str:
        """The kind and its main parameters (`TITLE_PARAMS`), as a picture's title says them."""
        names = list(self.TITLE_PARAMS)
        for name, plain in (("scale", "linear"), ("normalize", "none"), ("complex", False)):
            if getattr(self, name, plain) != plain and name not in self.DERIVED:
                names.append(name)
        return f"{self.kind}: " + " ".join(f"{name}={getattr(self, name)}" for name in names)

    def check_file(self, sr: int, n_samples: int) -> None:
        """Raise DecodeError when these parameters cannot apply to one file.

        Parameters
        ----------
        sr : int
            The file's (possibly resampled) rate.
        n_samples : int
            Samples per channel after resampling.
        """
        if n_samples == 0:
            raise DecodeError("no audio samples")
        if not self.center and n_samples < self.n_fft:
            raise DecodeError(
                f"too short: {n_samples} samples < n_fft={self.n_fft} "
                "(one frame without --center needs n_fft samples)"
            )
        if self.center and self.tail == "zeros" and n_samples < self.hop_length:
            raise DecodeError(
                f"too short: {n_samples} samples < hop_length={self.hop_length} "
                "(--tail zeros keeps n // hop frames: none)"
            )

    def frame_bounds(self, frame_start: int, frame_stop: int) -> tuple[int, int]:
        """Sample range [a, b) of the unpadded signal that frames [start, stop) need
        (``a`` may be negative and ``b`` may pass the end: padding; see `pad_span`)."""
        half = self.n_fft // 2 if self.center else 0
        a = frame_start * self.hop_length - half
        return a, (frame_stop - 1) * self.hop_length + self.n_fft - half

    def pad_span(self, piece: Any, a: int, b: int, n_samples: int | None) -> Any:
        """A kind's own padding: samples [a, b) of the signal (and whatever its frames
        need past ``b``) from ``piece = signal[:, max(a, 0):min(b, n)]``; ``n_samples``
        None while a stream goes on. None: the shared centre padding (``--pad-mode``)."""
        return None

    def frame_stage(self, seed: int) -> Callable[[Any, int, int], Any] | None:
        """The kind's own work on each frame before the FFT, or None (``frame * window``).

        The callable takes frames (k, n_fft) as sliced from the padded signal, the
        entry's index of the first of them and the channel, and returns what the FFT
        transforms (k, n_fft), float64; or that and values (k, e) computed from the
        frames themselves, which become the first e rows of the block's output
        (`block_stage` then gives the other ``stage_bins - e``). ``seed`` is the entry's
        (`melcli.features.entry_seed`): a random step must draw from it by frame
        index, so a part of a long file gets the same values as the whole.
        """
        return None

    def block_stage(self, sr: int) -> Callable[[Any], Any] | None:
        """The kind's stage on a block of magnitude frames, or None (the STFT itself).

        The callable takes float32 magnitudes of shape (frames, 1 + n_fft // 2)
        and returns (frames, n_bins); frames are independent of each other.
        """
        return None

    def entry_stage(self, features: Any) -> Any:
        """The kind's last stage, on a whole entry after scaling (np.ndarray,
        (channels, stage_bins, frames) -> (channels, n_bins, frames)).

        It runs on parts of a long file when `needs_whole_entry` is False (it must
        then treat frames independently). Raises DecodeError for an entry it
        cannot apply to.
        """
        return features

    def warnings(self, rates: Sequence[int]) -> list[str]:
        """Warnings about these parameters for inputs at these rates (said before any work)."""
        return []

    def fails_everywhere(self, rates: Sequence[int]) -> str | None:
        """The one-line reason when these parameters fail every input at these rates."""
        return None

    # -- serialisation ---------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The kind's parameter names, ``kind`` first."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Every parameter of the kind, JSON-serialisable, defaults included."""
        return {name: getattr(self, name) for name in self.field_names()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureParams:
        """Rebuild parameters from `to_dict` output (unknown keys are an error)."""
        from melcli.kinds import kind_class

        target = kind_class(data.get("kind"), data.get("frontend")) if cls is FeatureParams else cls
        known = set(target.field_names())
        fields = {k: v for k, v in data.items()
                  if not (k not in known and target.LEGACY.get(k, ...) == v)}  # fmt: skip
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ParameterError(
                f"unknown parameters for {target.NAME}: {', '.join(unknown)}", param=unknown[0]
            )
        return target(**fields)

    def differences(self, other: FeatureParams) -> list[str]:
        """Names of the parameters whose values differ from ``other``'s."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def declared(cls: type[FeatureParams]) -> list[Declared]:
    """The parameters a kind offers, in declaration order (``kind`` and the kind's
    `FeatureParams.DERIVED` excluded)."""
    out = []
    for f in dataclasses.fields(cls):
        how = f.metadata.get("setting")
        if how is None or f.name in cls.DERIVED:
            continue
        parts = [p.strip() for p in str(f.type).split("|")]
        out.append(Declared(f.name, parts[0], "None" in parts[1:], f.default, how))
    return out
