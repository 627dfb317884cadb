"""The ``mfcc`` kind, with two front ends (``--frontend``).

``librosa`` (`MfccParams`, the default): ``librosa.feature.mfcc``. On top of the
mel kind: the mel spectrogram in dB (``power_to_db``: 10 log10 whatever
``--power``, with ``top_db`` 80 over the whole entry, as librosa), the first
``n_mfcc`` rows of its orthonormal DCT-II along the mel axis, librosa's lifter,
and optionally the deltas of ``librosa.feature.delta`` stacked under the
coefficients (``--deltas 2``: rows [static; delta; delta-delta]).

``kaldi`` (`KaldiMfccParams`, ``--preset kaldi``): Kaldi's ``compute-mfcc-feats``.
On top of the fbank kind (Kaldi's framing and options, with ``--use-energy`` on):
the orthonormal DCT-II of the log bins, the first ``num_ceps`` kept, Kaldi's lifter
``1 + (L/2) sin(pi i / L)`` (i from 0), C0 replaced by the frame's log energy, and
Kaldi's add-deltas. Both share the one ``frontend`` declaration (`frontend_setting`);
`melcli.kinds.kind_class` picks the class from it.

The DCT and the deltas are numpy (`melcli.dsp`): importing scipy.fft costs 0.6 s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from melcli.errors import DecodeError, ParameterError
from melcli.kinds.fbank import FbankParams, kaldi_deltas, use_energy_setting
from melcli.kinds.mel import MelParams
from melcli.params import SCALES, Display, setting

#: The window of ``librosa.feature.delta`` (frames).
DELTA_WIDTH = 9
#: The mfcc kind's front ends.
FRONTENDS = ("librosa", "kaldi")


def frontend_setting(default: str) -> Any:
    """The ``frontend`` parameter of the mfcc kind, declared once for both classes."""
    return setting(
        default, "librosa: librosa.feature.mfcc over the mel options (the default); kaldi: "
        "Kaldi's compute-mfcc-feats over the fbank options (Kaldi's names: --num-ceps, "
        "--cepstral-lifter, --num-mel-bins, --frame-length, ...; --preset kaldi sets them).",
        choices=FRONTENDS,
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class MfccParams(MelParams):
    """MFCCs: `MelParams` plus the DCT, the lifter and the deltas.

    Parameters
    ----------
    n_mfcc : int in [1, n_mels]
        Coefficients kept.
    dct_type : {2, 3}
        Orthonormal DCT type (librosa's ``dct_type``; type 1 is not offered).
    lifter : float >= 0
        Liftering: coefficient k (from 0) times ``1 + (lifter / 2) sin(pi (k + 1) / lifter)``.
    deltas : {0, 1, 2}
        Also store the deltas of order 1 .. ``deltas`` (``librosa.feature.delta``,
        width 9, ``mode="interp"``) below the coefficients.
    """

    NAME: ClassVar[str] = "mfcc"
    TITLE: ClassVar[str] = "MFCC options"
    SUMMARY: ClassVar[str] = (
        "Compute MFCCs (librosa's, or Kaldi's: --frontend kaldi) of every input."
    )
    EXAMPLES: ClassVar[tuple[str, ...]] = (
        "melcli mfcc data/ -o mfcc.h5",
        "melcli mfcc data/ -o mfcc.h5 --sr 16000 --n-mfcc 13 --deltas 2",
        "melcli mfcc data/ -o mfcc.h5 --preset kaldi --deltas 2",
    )
    LEGACY: ClassVar[dict[str, Any]] = {}

    ROW_AXIS: ClassVar[str] = "index"
    TITLE_PARAMS: ClassVar[tuple[str, ...]] = ("n_mfcc", "n_mels", "n_fft", "hop_length")

    kind: str = "mfcc"
    frontend: str = frontend_setting("librosa")
    scale: str = setting(
        "db", "The mel spectrogram's scaling before the DCT: db (librosa.power_to_db, "
        "10*log10 whatever --power) or log (natural log of max(x, amin)).",
        stage="Scaling", choices=SCALES,
    )  # fmt: skip
    top_db: float | None = setting(
        None, "With --scale db: clip at max - TOP_DB over the whole entry, before the DCT.",
        stage="Scaling", check="non_negative",
        default_text="80 with --scale db, as librosa.feature.mfcc's power_to_db",
    )  # fmt: skip
    n_mfcc: int = setting(20, "Cepstral coefficients kept (at most --n-mels).",
                          check="positive_int")  # fmt: skip
    dct_type: int = setting(2, "Orthonormal DCT type: 2 (librosa's default) or 3.")
    lifter: float = setting(
        0.0, "Liftering: coefficient k times 1 + (L/2) sin(pi (k+1) / L); 0 = none.",
        check="non_negative",
    )  # fmt: skip
    deltas: int = setting(
        0, "Also store deltas of order 1..N (librosa.feature.delta, width 9; --frontend "
        "kaldi: Kaldi add-deltas, window 2), stacked below the coefficients: rows [static; "
        "delta; delta-delta]. 0-2.",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.top_db is None and self.scale == "db":
            self._fix("top_db", 80.0)  # librosa.feature.mfcc always clips
        super().__post_init__()

    def validate(self) -> None:  # noqa: D102
        super().validate()
        _check_frontend(self, "librosa")
        if self.scale == "linear":
            raise ParameterError("is not a cepstrum: mfcc needs --scale db or log",
                                 param="scale", value=self.scale)  # fmt: skip
        if self.n_mfcc > self.n_mels:
            raise ParameterError(f"must not exceed n_mels={self.n_mels}", param="n_mfcc",
                                 value=self.n_mfcc)  # fmt: skip
        if self.dct_type not in (2, 3):
            raise ParameterError("must be 2 or 3", param="dct_type", value=self.dct_type)
        if self.deltas not in (0, 1, 2):
            raise ParameterError("must be 0, 1 or 2", param="deltas", value=self.deltas)

    @property
    def n_bins(self) -> int:  # noqa: D102
        return self.n_mfcc * (1 + self.deltas)

    @property
    def stage_bins(self) -> int:  # noqa: D102
        return self.n_mels

    @property
    def db_multiplier(self) -> float:  # noqa: D102
        return 10.0  # librosa.feature.mfcc calls power_to_db whatever the power

    @property
    def needs_whole_entry(self) -> bool:  # noqa: D102
        return super().needs_whole_entry or self.deltas > 0

    def display(self) -> Display:
        """Cepstral coefficients by number, drawn as stored on a diverging colour map."""
        return cepstrum_display(self.deltas)

    def row_frequencies(self, sr: int) -> Any:
        """Not frequencies: each row's coefficient number (0 .. n_mfcc - 1, again for each
        delta order)."""
        import numpy as np

        return np.tile(np.arange(self.n_mfcc, dtype=np.float64), 1 + self.deltas)

    def entry_stage(self, features: Any) -> Any:
        """dB mel (channels, n_mels, frames) -> DCT, lifter, deltas: (channels, n_bins, frames)."""
        import numpy as np

        from melcli import dsp

        frames = features.shape[-1]
        if self.deltas and frames < DELTA_WIDTH:
            raise DecodeError(
                f"{frames} frames are too few for --deltas (librosa.feature.delta needs at "
                f"least {DELTA_WIDTH})"
            )
        mfcc = np.einsum("kr,crt->ckt", _dct(self.n_mels, self.n_mfcc, self.dct_type), features)
        if self.lifter > 0:
            k = np.arange(1, 1 + self.n_mfcc, dtype=np.float64)
            mfcc *= (1 + (self.lifter / 2) * np.sin(np.pi * k / self.lifter))[:, None]
        mfcc = mfcc.astype(np.float32)
        parts = [mfcc] + [dsp.savgol_deltas(mfcc, order, DELTA_WIDTH)
                          for order in range(1, self.deltas + 1)]  # fmt: skip
        return np.concatenate(parts, axis=-2) if len(parts) > 1 else mfcc


@dataclass(frozen=True, kw_only=True)
class KaldiMfccParams(FbankParams):
    """Kaldi's MFCCs: `FbankParams` (Kaldi's framing and options) plus the DCT.

    Parameters
    ----------
    num_ceps : int in [1, num_mel_bins]
    cepstral_lifter : float >= 0
        Coefficient i (from 0) times ``1 + (L/2) sin(pi i / L)``; 0 = none.
    use_energy : bool
        C0 is the frame's log energy (`FbankParams`' energy options).
    deltas : {0, 1, 2}
        Kaldi add-deltas of the coefficients, stacked below them.
    """

    NAME: ClassVar[str] = "mfcc"
    TITLE: ClassVar[str] = "Kaldi MFCC options (--frontend kaldi, --preset kaldi)"
    #: ``use_log_fbank`` is always on: Kaldi's MFCCs are the DCT of the log bins.
    DERIVED: ClassVar[frozenset[str]] = FbankParams.DERIVED | {"use_log_fbank"}

    ROW_AXIS: ClassVar[str] = "index"
    TITLE_PARAMS: ClassVar[tuple[str, ...]] = (
        "num_ceps", "num_mel_bins", "frame_length", "frame_shift"
    )  # fmt: skip

    kind: str = "mfcc"
    frontend: str = frontend_setting("kaldi")
    num_ceps: int = setting(13, "--frontend kaldi: cepstral coefficients kept (at most "
                            "--num-mel-bins).", check="positive_int")  # fmt: skip
    cepstral_lifter: float = setting(
        22.0, "--frontend kaldi: coefficient i (from 0) times 1 + (L/2) sin(pi i / L); 0 = "
        "none.", check="non_negative",
    )  # fmt: skip
    use_energy: bool = use_energy_setting(True)

    def __post_init__(self) -> None:
        self._fix("use_log_fbank", True)
        super().__post_init__()

    def validate(self) -> None:  # noqa: D102
        super().validate()
        _check_frontend(self, "kaldi")
        if self.num_ceps > self.num_mel_bins:
            raise ParameterError(f"must not exceed num_mel_bins={self.num_mel_bins}",
                                 param="num_ceps", value=self.num_ceps)  # fmt: skip

    @property
    def n_bins(self) -> int:  # noqa: D102
        return self.num_ceps * (1 + self.deltas)

    def display(self) -> Display:
        """As librosa's MFCCs: by coefficient number, on a diverging colour map."""
        return cepstrum_display(self.deltas)

    def row_frequencies(self, sr: int) -> Any:
        """Each row's coefficient number (0 .. num_ceps - 1, again for each delta order)."""
        import numpy as np

        return np.tile(np.arange(self.num_ceps, dtype=np.float64), 1 + self.deltas)

    def entry_stage(self, features: Any) -> Any:
        """Log bins (channels, [energy +] num_mel_bins, frames) -> DCT, lifter, C0 = the
        energy, add-deltas: (channels, n_bins, frames)."""
        import numpy as np

        energy = int(self.use_energy)
        dct = _dct(self.num_mel_bins, self.num_ceps, 2)
        ceps = np.einsum("kr,crt->ckt", dct, features[:, energy:].astype(np.float64))
        if self.cepstral_lifter > 0:
            i = np.arange(self.num_ceps, dtype=np.float64)
            q = self.cepstral_lifter
            ceps *= (1 + 0.5 * q * np.sin(np.pi * i / q))[:, None]
        if energy:
            ceps[:, 0] = features[:, 0]
        parts = [ceps.astype(np.float32)]
        for _ in range(self.deltas):
            parts.append(kaldi_deltas(parts[-1]))
        return np.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0]


def cepstrum_display(deltas: int) -> Display:
    """How pictures show MFCCs (either front end): rows by coefficient number, values as
    stored on a diverging colour map, one block per delta order."""
    return Display("index", "coefficient", None, "MFCC", None, diverging=True, blocks=1 + deltas)


def _check_frontend(params: Any, frontend: str) -> None:
    if params.frontend != frontend:  # FeatureParams(kind="mfcc", frontend=...) picks the class
        raise ParameterError(f"is not {frontend!r} for {type(params).__name__}",
                             param="frontend", value=params.frontend)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _dct(n_mels: int, n_mfcc: int, dct_type: int) -> Any:
    from melcli import dsp

    basis = dsp.dct_matrix(n_mels, n_mfcc, dct_type)
    basis.flags.writeable = False
    return basis
