"""The ``stft`` kind: |STFT|**power (or the complex STFT), as ``librosa.stft``.

The shared framing and FFT (`melcli.features`) are the whole computation; this
module adds only the complex option and the bins' frequencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from melcli.errors import ParameterError
from melcli.params import FeatureParams, setting


@dataclass(frozen=True, kw_only=True)
class StftParams(FeatureParams):
    """STFT magnitudes: `FeatureParams` plus ``complex``.

    Parameters
    ----------
    complex : bool
        Store the complex STFT instead of a magnitude (dtype complex64 or
        complex128; no power, scaling or statistics).
    """

    NAME: ClassVar[str] = "stft"
    TITLE: ClassVar[str] = "STFT options"
    SUMMARY: ClassVar[str] = "Compute STFT magnitudes |librosa.stft|**power of every input."
    EXAMPLES: ClassVar[tuple[str, ...]] = (
        "melcli stft data/ -o feats/ --n-fft 512 --hop-length 128 --window hamming",
        "melcli stft data/ -o spec.h5 --complex",
    )

    kind: str = "stft"
    complex: bool = setting(
        False, "Store the complex STFT (magnitude and phase) instead of |X|**power.",
        flag="--complex",
    )  # fmt: skip

    def validate(self) -> None:  # noqa: D102
        if not self.complex:
            return
        if self.scale != "linear" or self.power != 2.0 or self.normalize != "none":
            raise ParameterError(
                "stores the raw STFT: it cannot be combined with --power, --scale or "
                "--normalize",
                param="complex", value=True,
            )  # fmt: skip
        if self.dtype == "float16":
            raise ParameterError("needs dtype float32 or float64", param="complex", value=True)

    @property
    def n_bins(self) -> int:  # noqa: D102
        return self.n_fft // 2 + 1

    @property
    def stores_complex(self) -> bool:  # noqa: D102
        return self.complex

    def row_frequencies(self, sr: int) -> Any:
        """FFT bin centres ``linspace(0, sr/2, 1 + n_fft//2)`` (as ``librosa.fft_frequencies``)."""
        import numpy as np

        return np.linspace(0.0, sr / 2, 1 + self.n_fft // 2)
