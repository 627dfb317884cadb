"""The ``mel`` kind: ``librosa.feature.melspectrogram``, a mel filterbank on the STFT.

The filterbank (`melcli.dsp.mel_filterbank`, librosa's ``filters.mel``) is built
once per parameter set and rate and cached, instead of once per file as librosa
does; the stage is one float32 matrix product per block of frames, on one BLAS
thread (its sums, hence the output, would otherwise depend on the thread count).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from melcli.errors import DecodeError, ParameterError
from melcli.params import FeatureParams, setting

MEL_SCALES = ("slaney", "htk")
NORMS = ("slaney", "none")
#: Sample rates suggested for --sr when fmax needs a higher one.
COMMON_RATES = (16000, 22050, 24000, 32000, 44100, 48000, 96000)


@dataclass(frozen=True, kw_only=True)
class MelParams(FeatureParams):
    """Mel spectrograms: `FeatureParams` plus the filterbank of ``librosa.filters.mel``.

    Parameters
    ----------
    n_mels : int > 0
        Mel bands.
    fmin, fmax : float
        The filterbank's range in Hz; ``fmax=None`` means each file's Nyquist
        frequency.
    mel_scale : {'slaney', 'htk'}
        Hz <-> mel formula (librosa's ``htk=False`` / ``htk=True``).
    norm : {'slaney', 'none'}
        Filter normalisation (``'none'`` is librosa's ``norm=None``).
    """

    NAME: ClassVar[str] = "mel"
    TITLE: ClassVar[str] = "Mel options"
    SUMMARY: ClassVar[str] = (
        "Compute mel spectrograms (librosa.feature.melspectrogram) of every input."
    )
    EXAMPLES: ClassVar[tuple[str, ...]] = (
        "melcli mel data/ -o feats.h5",
        "find data -name '*.flac' | melcli mel - -o feats.h5 --sr 16000 --n-mels 80",
        "melcli mel data/ -o feats/ --sr 16000 --n-mels 80 --scale log --n-fft 400 "
        "--hop-length 160",
    )
    #: melcli < 0.3 recorded the stft-only ``complex`` in mel manifests too.
    LEGACY: ClassVar[dict[str, Any]] = {"complex": False}

    ROW_AXIS: ClassVar[str] = "mel"
    TITLE_PARAMS: ClassVar[tuple[str, ...]] = ("n_fft", "hop_length", "n_mels", "window")

    kind: str = "mel"
    n_mels: int = setting(128, "Mel bands.", check="positive_int")
    fmin: float = setting(0.0, "Lowest frequency (Hz).", check="non_negative")
    fmax: float | None = setting(
        None, "Highest frequency (Hz). A file whose Nyquist frequency (sr/2) is below it fails "
        "with that reason (exit 3); when every input would, the run stops before any work "
        "(exit 2). Use --sr to resample.", check="positive", default_text="sr/2 of each file",
    )  # fmt: skip
    mel_scale: str = setting(
        "slaney", "Hz <-> mel formula (htk: 2595*log10(1+f/700)).", choices=MEL_SCALES
    )
    norm: str = setting(
        "slaney", "Filter normalisation: slaney = equal area, none = peak 1.", choices=NORMS
    )

    def validate(self) -> None:  # noqa: D102
        nyquist = None if self.sr is None else self.sr / 2
        if self.fmax is not None:
            if self.fmin >= self.fmax:
                raise ParameterError(f"must be below fmax={self.fmax}", param="fmin",
                                     value=self.fmin)  # fmt: skip
            if nyquist is not None and self.fmax > nyquist:
                raise ParameterError(
                    f"is above the Nyquist frequency {nyquist} of sr={self.sr}",
                    param="fmax", value=self.fmax,
                )  # fmt: skip
        elif nyquist is not None and self.fmin >= nyquist:
            raise ParameterError(f"must be below the Nyquist frequency {nyquist}",
                                 param="fmin", value=self.fmin)  # fmt: skip

    @property
    def n_bins(self) -> int:  # noqa: D102
        return self.n_mels

    def effective_fmax(self, sr: int) -> float:
        """fmax for a file at rate ``sr`` (its Nyquist frequency if unset)."""
        return sr / 2 if self.fmax is None else self.fmax

    def row_frequencies(self, sr: int) -> Any:
        """Mel band centres, ``librosa.mel_frequencies(n_mels + 2, fmin, fmax)[1:-1]``."""
        from melcli import dsp

        return dsp.mel_frequencies(
            self.n_mels + 2, fmin=self.fmin, fmax=self.effective_fmax(sr),
            htk=self.mel_scale == "htk",
        )[1:-1]  # fmt: skip

    def check_file(self, sr: int, n_samples: int) -> None:  # noqa: D102
        super().check_file(sr, n_samples)
        nyquist = sr / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise DecodeError(
                f"fmax={self.fmax:g} Hz is above this file's Nyquist frequency "
                f"{nyquist:g} Hz (sample rate {sr})"
            )
        if self.fmin >= self.effective_fmax(sr):
            raise DecodeError(
                f"fmin={self.fmin:g} Hz is not below fmax={self.effective_fmax(sr):g} Hz "
                f"at sample rate {sr}"
            )

    def _basis_args(self, sr: int) -> tuple[int, int, int, float, float, bool, str | None]:
        norm = None if self.norm == "none" else self.norm
        fmax = self.effective_fmax(sr)
        return (sr, self.n_fft, self.n_mels, self.fmin, fmax, self.mel_scale == "htk", norm)

    def mel_basis(self, sr: int) -> Any:
        """The filterbank ``librosa.filters.mel`` builds (np.ndarray, (n_mels, 1 + n_fft // 2),
        float32, read-only; see `melcli.dsp.mel_filterbank`)."""
        return _basis(*self._basis_args(sr))[0]

    def has_empty_filters(self, sr: int) -> bool:
        """True when the filterbank at rate ``sr`` has filters with no FFT bin."""
        return bool(_basis(*self._basis_args(sr))[1])

    def block_stage(self, sr: int) -> Callable[[Any], Any]:
        """Magnitude frames (frames, bins) -> mel bands (frames, n_mels), float32."""
        from melcli.features import filterbank_stage

        return filterbank_stage(self.mel_basis(sr))

    def warnings(self, rates: Sequence[int]) -> list[str]:
        """The empty-filterbank warning, if the bands are narrower than the FFT bins.

        The cause named is the real one: the bands between fmin and fmax are
        narrower than the FFT bins there, whether because of ``--n-mels``,
        ``--n-fft`` or a narrow ``--fmin``/``--fmax`` range.
        """
        import numpy as np

        parts = []
        for sr in rates:
            fmax = self.effective_fmax(sr)
            if fmax > sr / 2 or self.fmin >= fmax or not self.has_empty_filters(sr):
                continue  # such inputs fail (or are fine) on their own
            n_empty = int(np.count_nonzero(self.mel_basis(sr).max(axis=1) == 0))
            parts.append(
                f"{n_empty} of {self.n_mels} bands are all zeros at {sr} Hz ({self.n_mels} "
                f"bands over {self.fmin:g}-{fmax:g} Hz, FFT bins {sr / self.n_fft:.3g} Hz apart)"
            )
        if not parts:
            return []
        return [
            f"empty filters: {'; '.join(parts)}: n_mels={self.n_mels} is too many bands for "
            f"n_fft={self.n_fft} over that range; use a larger --n-fft, fewer --n-mels"
            + (" or a wider --fmin/--fmax range" if self.fmin > 0 or self.fmax else "")
        ]

    def fails_everywhere(self, rates: Sequence[int]) -> str | None:
        """fmax above every input's Nyquist frequency, or fmin above every fmax."""
        if not rates:
            return None
        top = max(rates)
        if self.fmax is not None and all(self.fmax > sr / 2 for sr in rates):
            need = next((r for r in COMMON_RATES if r / 2 >= self.fmax), int(2 * self.fmax))
            return (
                f"--fmax {self.fmax:g} is above the Nyquist frequency of all {len(rates)} "
                f"inputs (max {top / 2:g} Hz); use --sr {need} or a lower --fmax"
            )
        if all(self.fmin >= self.effective_fmax(sr) for sr in rates):
            return (
                f"--fmin {self.fmin:g} is not below fmax at the rate of any of the {len(rates)} "
                f"inputs (at most {self.effective_fmax(top):g} Hz); use a lower --fmin"
                + ("" if self.fmax is not None else " or a higher --sr")
            )
        return None


@functools.lru_cache(maxsize=32)
def _basis(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str | None
) -> tuple[Any, bool]:
    from melcli import dsp

    basis, empty = dsp.mel_filterbank(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm
    )
    basis.flags.writeable = False
    return basis, empty
