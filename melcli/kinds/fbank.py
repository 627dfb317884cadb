"""The ``fbank`` kind: Kaldi's log mel filterbank (``compute-fbank-feats``).

Kaldi frames a signal its own way, so this kind brings its own framing on top of
the shared FFT (`frame_bounds`, `pad_span`, `frame_stage`): frames of ``--frame-length`` ms
every ``--frame-shift`` ms, with snip edges (``1 + (N - W) // S`` frames) or
without (``(N + S // 2) // S`` frames, the signal reflected with its edge
sample repeated); per frame, in this order: the int16 input scale, DC removal,
pre-emphasis applied backwards within the frame (``x[0] -= c * x[0]``), the
**symmetric** window (povey: Hann to the power 0.85), zero padding to the next
power of two. Then the power spectrum, triangular bins **linear in mel**
(``1127 ln(1 + f / 700)``) over FFT bins 0 .. n_fft / 2 - 1 (Nyquist excluded),
no normalisation, ``ln(max(E, FLT_EPSILON))``. Option names and defaults are
Kaldi's, except ``--dither``, which is 0 (deterministic). A nonzero dither adds
Gaussian noise of that standard deviation (in the scaled input's units) to each
frame, as Kaldi does, drawn from a seed derived from the entry's key and the
frame's index (`gaussian_noise`), so reruns, parts of a long file and every
backend give the same values; it is Kaldi's noise in distribution, not in value.
VTLN is not offered. Checked against kaldi-native-fbank
(tests/test_fbank.py). Kaldi needs one sample rate: ``--sr`` is its
``--sample-frequency`` (16000), and files at other rates are resampled to it.
Long files are split or streamed as for the other kinds (`frame_bounds`, `pad_span`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from melcli.errors import DecodeError, ParameterError
from melcli.params import FeatureParams, setting

WINDOW_TYPES = ("povey", "hamming", "hanning", "rectangular", "blackman", "sine")
#: Kaldi's log floor (std::numeric_limits<float>::epsilon()).
FLT_EPSILON = 1.1920928955078125e-07
#: Kaldi's add-deltas window.
DELTA_WINDOW = 2


def use_energy_setting(default: bool) -> Any:
    """The ``use_energy`` parameter, declared once for fbank (off, as Kaldi's
    compute-fbank-feats) and Kaldi MFCCs (on, as compute-mfcc-feats)."""
    return setting(
        default, "Each frame's log energy, ln(max(sum of squares, FLT_EPSILON, "
        "--energy-floor)): row 0 of fbank, C0 of mfcc --frontend kaldi.",
        flag="--use-energy/--no-use-energy", default_text="off for fbank, on for mfcc",
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class FbankParams(FeatureParams):
    """Kaldi filterbanks: `FeatureParams` whose framing and scaling are derived from
    Kaldi's options (the derived values are recorded, not offered as options).

    Parameters
    ----------
    num_mel_bins : int >= 3
    frame_length, frame_shift : float > 0
        Milliseconds.
    preemphasis_coefficient : float in [0, 1]
    remove_dc_offset, snip_edges, round_to_power_of_two, use_log_fbank, use_power : bool
    window_type : {'povey', 'hamming', 'hanning', 'rectangular', 'blackman', 'sine'}
    low_freq : float >= 0
    high_freq : float
        > 0: Hz; <= 0: offset from the Nyquist frequency.
    input_scale : float > 0
        Samples are multiplied by this first (32768: Kaldi reads int16 values).
    use_energy : bool
        Prepend each frame's log energy as row 0 (Kaldi's energy column).
    energy_floor : float >= 0
        Floor of that energy (0: none but FLT_EPSILON).
    raw_energy : bool
        The energy of the frame before pre-emphasis and window (after dither and
        DC removal), else of the windowed frame.
    deltas : {0, 1, 2}
        Kaldi ``add-deltas`` (window 2, edge frames repeated) of order 1 .. N,
        stacked below the bins (and the energy).
    """

    NAME: ClassVar[str] = "fbank"
    TITLE: ClassVar[str] = "Fbank options"
    SUMMARY: ClassVar[str] = (
        "Compute Kaldi filterbanks (compute-fbank-feats --dither=0) of every input."
    )
    EXAMPLES: ClassVar[tuple[str, ...]] = (
        "melcli fbank data/ -o fbank.h5",
        "melcli fbank data/ -o fbank.h5 --num-mel-bins 80 --deltas 2",
    )
    LEGACY: ClassVar[dict[str, Any]] = {}
    #: Shared parameters this kind sets itself from Kaldi's options.
    DERIVED: ClassVar[frozenset[str]] = frozenset({
        "n_fft", "win_length", "hop_length", "window", "center", "pad_mode", "tail",
        "power", "scale", "top_db", "amin",
    })  # fmt: skip

    ROW_AXIS: ClassVar[str] = "mel"
    TITLE_PARAMS: ClassVar[tuple[str, ...]] = ("num_mel_bins", "frame_length", "frame_shift")

    kind: str = "fbank"
    sr: int | None = setting(
        16000, "Resample every file to this rate (Kaldi's --sample-frequency; soxr HQ).",
        stage="Input", check="positive_int",
    )  # fmt: skip
    num_mel_bins: int = setting(23, "Triangular mel bins.", check="positive_int")
    frame_length: float = setting(25.0, "Frame length in milliseconds.", check="positive")
    frame_shift: float = setting(10.0, "Frame shift in milliseconds.", check="positive")
    dither: float = setting(
        0.0, "Add Gaussian noise of this standard deviation to each frame (in input units "
        "after --input-scale; Kaldi's default is 1.0). Seeded by the entry's key: reruns "
        "give the same values.", check="non_negative",
    )  # fmt: skip
    preemphasis_coefficient: float = setting(
        0.97, "Pre-emphasis within each frame: x[i] -= c * x[i-1], x[0] -= c * x[0].",
        check="non_negative",
    )  # fmt: skip
    remove_dc_offset: bool = setting(
        True, "Subtract each frame's mean first.",
        flag="--remove-dc-offset/--no-remove-dc-offset",
    )  # fmt: skip
    window_type: str = setting(
        "povey", "Symmetric window: povey = hann^0.85, hamming, hanning, rectangular, "
        "blackman, sine.", choices=WINDOW_TYPES,
    )  # fmt: skip
    snip_edges: bool = setting(
        True, "Only frames that fit in the signal: 1 + (N - W) // S frames; else "
        "(N + S/2) // S frames, the signal reflected (edge sample repeated) at both ends.",
        flag="--snip-edges/--no-snip-edges",
    )  # fmt: skip
    round_to_power_of_two: bool = setting(
        True, "Zero-pad each frame to the next power of two for the FFT.",
        flag="--round-to-power-of-two/--no-round-to-power-of-two",
    )  # fmt: skip
    low_freq: float = setting(20.0, "Lowest frequency of the bins (Hz).", check="non_negative")
    high_freq: float = setting(
        0.0, "Highest frequency of the bins (Hz); 0 or negative: offset from Nyquist."
    )
    use_log_fbank: bool = setting(
        True, "Natural log of the bins' energies, floored at FLT_EPSILON.",
        flag="--use-log-fbank/--no-use-log-fbank",
    )  # fmt: skip
    use_power: bool = setting(
        True, "Power spectrum (else magnitude).", flag="--use-power/--no-use-power"
    )
    use_energy: bool = use_energy_setting(False)
    energy_floor: float = setting(
        0.0, "With --use-energy: floor of the energy (0: none).", check="non_negative"
    )
    raw_energy: bool = setting(
        True, "With --use-energy: the frame's energy before pre-emphasis and window "
        "(after dither and DC removal); --no-raw-energy: of the windowed frame.",
        flag="--raw-energy/--no-raw-energy",
    )  # fmt: skip
    input_scale: float = setting(
        32768.0, "Multiply samples by this first: 32768 = int16 values, as Kaldi reads "
        "audio (lhotse: 1).", check="positive",
    )  # fmt: skip
    deltas: int = setting(
        0, "Also store Kaldi add-deltas (window 2, edge frames repeated) of order 1..N, "
        "stacked below the bins. 0-2.",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.sr is None:
            raise ParameterError("is needed: Kaldi framing is in milliseconds at one rate",
                                 param="sr", value=None)  # fmt: skip
        for name in ("frame_length", "frame_shift"):
            if not (isinstance(getattr(self, name), int | float) and getattr(self, name) > 0):
                raise ParameterError("must be a positive number", param=name,
                                     value=getattr(self, name))  # fmt: skip
        win = int(self.sr * 0.001 * self.frame_length)
        hop = int(self.sr * 0.001 * self.frame_shift)
        if win < 2 or hop < 1:
            raise ParameterError(f"is too short at sr={self.sr}: {win} samples",
                                 param="frame_length", value=self.frame_length)  # fmt: skip
        n_fft = 1 << (win - 1).bit_length() if self.round_to_power_of_two else win
        derived = {
            "n_fft": n_fft, "win_length": win, "hop_length": hop, "window": "hann",
            "center": False, "pad_mode": "constant", "tail": "pad",
            "power": 2.0 if self.use_power else 1.0,
            "scale": "log" if self.use_log_fbank else "linear", "top_db": None,
            "amin": FLT_EPSILON,
        }  # fmt: skip
        for name, value in derived.items():
            self._fix(name, value)
        super().__post_init__()

    def validate(self) -> None:  # noqa: D102
        assert self.sr is not None
        nyquist = self.sr / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not (self.low_freq < nyquist and 0 < high <= nyquist and high > self.low_freq):
            raise ParameterError(
                f"gives bins over {self.low_freq:g}-{high:g} Hz, which must lie within "
                f"0-{nyquist:g} Hz (sr={self.sr}) with low-freq below high-freq",
                param="high_freq", value=self.high_freq,
            )  # fmt: skip
        if self.num_mel_bins < 3:
            raise ParameterError("must be at least 3", param="num_mel_bins",
                                 value=self.num_mel_bins)  # fmt: skip
        if self.preemphasis_coefficient > 1:
            raise ParameterError("must be at most 1", param="preemphasis_coefficient",
                                 value=self.preemphasis_coefficient)  # fmt: skip
        if self.deltas not in (0, 1, 2):
            raise ParameterError("must be 0, 1 or 2", param="deltas", value=self.deltas)

    @property
    def effective_high_freq(self) -> float:
        """``high_freq`` in Hz (a value <= 0 counts from the Nyquist frequency)."""
        assert self.sr is not None
        return self.high_freq if self.high_freq > 0 else self.sr / 2 + self.high_freq

    @property
    def n_bins(self) -> int:  # noqa: D102
        return self.stage_bins * (1 + self.deltas)

    @property
    def stage_bins(self) -> int:  # noqa: D102
        return self.num_mel_bins + self.use_energy

    @property
    def needs_whole_entry(self) -> bool:  # noqa: D102
        return super().needs_whole_entry or self.deltas > 0  # deltas span frames

    def n_frames(self, n_samples: int) -> int:
        """Kaldi's: ``1 + (N - W) // S`` with snip edges (0 if N < W), else ``(N + S//2) // S``."""
        win, hop = self.win_length, self.hop_length
        if self.snip_edges:
            return 0 if n_samples < win else 1 + (n_samples - win) // hop
        return (n_samples + hop // 2) // hop

    def check_file(self, sr: int, n_samples: int) -> None:  # noqa: D102
        if n_samples == 0:
            raise DecodeError("no audio samples")
        if self.n_frames(n_samples) == 0:
            raise DecodeError(
                f"too short: {n_samples} samples give no frame of {self.win_length} samples "
                "(--snip-edges; --no-snip-edges pads the ends)"
            )

    def row_frequencies(self, sr: int) -> Any:
        """Each bin's centre frequency in Hz (0 for the energy row; again for each delta
        order)."""
        import numpy as np

        lo, hi = _mel(self.low_freq), _mel(self.effective_high_freq)
        centre = lo + (np.arange(self.num_mel_bins) + 1) * (hi - lo) / (self.num_mel_bins + 1)
        rows = np.concatenate([np.zeros(int(self.use_energy)), 700.0 * np.expm1(centre / 1127.0)])
        return np.tile(rows, 1 + self.deltas)

    def frame_bounds(self, frame_start: int, frame_stop: int) -> tuple[int, int]:
        """Frame t spans ``[t*S + o, t*S + o + W)``: o = 0 with snip edges, else
        ``S//2 - W//2`` (Kaldi's frames centred on ``t*S + S/2``)."""
        hop, win = self.hop_length, self.win_length
        offset = 0 if self.snip_edges else hop // 2 - win // 2
        return frame_start * hop + offset, (frame_stop - 1) * hop + offset + win

    def pad_span(self, piece: Any, a: int, b: int, n_samples: int | None) -> Any:
        """Samples outside the signal reflected with the edge sample repeated (Kaldi's
        ExtractWindow); then zeros, so the last frame's n_fft-sample slice exists."""
        import numpy as np

        start = max(a, 0)
        # a stream goes on past b: only its start can need reflecting
        idx = _reflect_index(np.arange(a, b), b if n_samples is None else n_samples)
        span = piece[:, idx - start]
        return np.pad(span, [(0, 0), (0, self.n_fft - self.win_length)])

    def frame_stage(self, seed: int) -> Any:
        """Scale, dither, DC removal, (raw energy), pre-emphasis, symmetric window, zero
        padding to n_fft, (energy). With ``use_energy`` it also returns each frame's
        energy, as `FeatureParams.frame_stage` allows: max(E, energy_floor) to be
        logged with the bins (``ln(max(., FLT_EPSILON))``), or its log without
        ``use_log_fbank``."""
        import numpy as np

        win_len, n_fft = self.win_length, self.n_fft
        window = _window(self.window_type, win_len)
        scale, coef, dc = self.input_scale, self.preemphasis_coefficient, self.remove_dc_offset
        dither, energy, raw = self.dither, self.use_energy, self.raw_energy
        floor, logged = self.energy_floor, self.use_log_fbank

        def energy_of(x: Any) -> Any:
            e = np.maximum(np.einsum("ij,ij->i", x, x), floor)[:, None]
            return e if logged else np.log(np.maximum(e, FLT_EPSILON))

        def prepare(frames: Any, first: int, channel: int) -> Any:
            f = frames[:, :win_len].astype(np.float64) * scale
            if dither:
                f += dither * gaussian_noise(seed, channel, first, f.shape[0], win_len)
            if dc:
                f -= f.mean(axis=1, keepdims=True)
            e = energy_of(f) if energy and raw else None
            if coef:
                f[:, 1:] -= coef * f[:, :-1].copy()
                f[:, 0] -= coef * f[:, 0]
            out = np.zeros((f.shape[0], n_fft))
            out[:, :win_len] = f * window
            if energy:
                return out, e if raw else energy_of(out[:, :win_len])
            return out

        return prepare

    def block_stage(self, sr: int) -> Any:
        """Power (or magnitude) spectrum (frames, n_fft/2 + 1) -> bins (frames, num_mel_bins)."""
        from melcli.features import filterbank_stage

        return filterbank_stage(
            _banks(sr, self.n_fft, self.num_mel_bins, self.low_freq, self.effective_high_freq)
        )

    def entry_stage(self, features: Any) -> Any:
        """Kaldi add-deltas, stacked below the bins."""
        if not self.deltas:
            return features
        import numpy as np

        parts = [features]
        for _ in range(self.deltas):
            parts.append(kaldi_deltas(parts[-1]))
        return np.concatenate(parts, axis=-2)


def gaussian_noise(seed: int, channel: int, first: int, n_frames: int, width: int) -> Any:
    """Standard normal noise (n_frames, width) for frames ``first ..`` of one channel.

    Frame t's values depend only on (seed, channel, t): numpy's counter-based
    Philox generator is positioned at the frame, so any part of an entry draws the
    noise of the whole. The normal values come from its uniforms by Box-Muller
    (numpy's own ``normal`` draws a varying number of values and cannot be positioned).
    """
    import numpy as np

    pairs = (width + 1) // 2
    steps = -(-2 * pairs // 4)  # Philox counter steps (4 uint64 each) per frame
    bits = np.random.Philox(key=seed + (channel << 64), counter=first * steps)
    raw = bits.random_raw(n_frames * steps * 4).reshape(n_frames, steps * 4)[:, : 2 * pairs]
    u = (raw >> np.uint64(11)) * 2.0**-53  # uniform in [0, 1)
    radius = np.sqrt(-2.0 * np.log1p(-u[:, :pairs]))
    angle = 2.0 * np.pi * u[:, pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :width]


def kaldi_deltas(x: Any, window: int = DELTA_WINDOW) -> Any:
    """Kaldi ``add-deltas`` of order 1 along the last axis: ``sum_n n (x[t+n] - x[t-n]) /
    (2 sum n^2)``, frames beyond the ends repeating the edge frame
    (= ``torchaudio.functional.compute_deltas(win_length=2 * window + 1)``)."""
    import numpy as np

    padded = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 1) + [(window, window)],
                    mode="edge")  # fmt: skip
    t = x.shape[-1]
    out = np.zeros(x.shape, dtype=np.float64)
    for n in range(1, window + 1):
        out += n * (
            padded[..., window + n : window + n + t] - padded[..., window - n : window - n + t]
        )
    return (out / (2 * sum(n * n for n in range(1, window + 1)))).astype(x.dtype)


def _mel(f: Any) -> Any:
    import numpy as np

    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def _reflect_index(idx: Any, n: int) -> Any:
    """Kaldi's reflection of sample indices into [0, n): ``s -> -s - 1`` below,
    ``s -> 2n - 1 - s`` above, repeated (a signal shorter than the padding)."""
    import numpy as np

    while True:
        low, high = idx < 0, idx >= n
        if not (low.any() or high.any()):
            return idx
        idx = np.where(low, -idx - 1, np.where(high, 2 * n - 1 - idx, idx))


@functools.lru_cache(maxsize=16)
def _window(kind: str, length: int) -> Any:
    import numpy as np

    a = 2 * math.pi / (length - 1)
    i = np.arange(length, dtype=np.float64)
    if kind == "povey":
        w = (0.5 - 0.5 * np.cos(a * i)) ** 0.85
    elif kind == "hanning":
        w = 0.5 - 0.5 * np.cos(a * i)
    elif kind == "hamming":
        w = 0.54 - 0.46 * np.cos(a * i)
    elif kind == "blackman":
        w = 0.42 - 0.5 * np.cos(a * i) + 0.08 * np.cos(2 * a * i)
    elif kind == "sine":
        w = np.sin(0.5 * a * i)
    else:
        w = np.ones(length)
    w.flags.writeable = False
    return w


@functools.lru_cache(maxsize=16)
def _banks(sr: int, n_fft: int, num_bins: int, low: float, high: float) -> Any:
    """Kaldi's MelBanks: (num_bins, n_fft // 2 + 1), float32, the Nyquist column zero."""
    import numpy as np

    lo, hi = _mel(low), _mel(high)
    delta = (hi - lo) / (num_bins + 1)
    mel = _mel(np.arange(n_fft // 2) * sr / n_fft)  # FFT bins 0 .. n_fft/2 - 1
    banks = np.zeros((num_bins, n_fft // 2 + 1))
    for b in range(num_bins):
        left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        up = (mel - left) / (centre - left)
        down = (right - mel) / (right - centre)
        inside = (mel > left) & (mel < right)
        banks[b, : n_fft // 2] = np.where(inside, np.where(mel <= centre, up, down), 0.0)
    out = banks.astype(np.float32)
    out.flags.writeable = False
    return out
