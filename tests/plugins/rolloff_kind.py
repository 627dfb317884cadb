"""A feature kind defined outside melcli, to prove that a kind is one module and one
registration line (tests/test_kinds.py): librosa.feature.spectral_rolloff.

Run as a script it is ``melcli`` with the kind registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import melcli.kinds
from melcli.errors import ParameterError
from melcli.params import FeatureParams, setting


@dataclass(frozen=True, kw_only=True)
class RolloffParams(FeatureParams):
    """The frequency below which ``roll_percent`` of each frame's magnitude lies."""

    NAME: ClassVar[str] = "rolloff"
    TITLE: ClassVar[str] = "Rolloff options"
    SUMMARY: ClassVar[str] = "Spectral rolloff (librosa.feature.spectral_rolloff) of every input."

    kind: str = "rolloff"
    roll_percent: float = setting(0.85, "Fraction of the magnitude below the rolloff.",
                                  check="positive")  # fmt: skip

    def validate(self) -> None:  # noqa: D102
        if self.roll_percent >= 1:
            raise ParameterError("must be below 1", param="roll_percent", value=self.roll_percent)

    @property
    def n_bins(self) -> int:  # noqa: D102
        return 1

    def row_frequencies(self, sr: int) -> Any:  # noqa: D102
        import numpy as np

        return np.zeros(1)  # a value per frame, not a frequency band

    def block_stage(self, sr: int) -> Any:  # noqa: D102
        import numpy as np

        freqs = np.linspace(0, sr / 2, self.n_fft // 2 + 1).astype(np.float32)

        def rolloff(mag: Any) -> Any:
            total = np.cumsum(mag, axis=1)
            reached = total >= np.float32(self.roll_percent) * total[:, -1:]
            return freqs[np.argmax(reached, axis=1)][:, None]

        return rolloff


melcli.kinds.KINDS["rolloff"] = RolloffParams  # the one registration line

if __name__ == "__main__":
    from melcli.cli import main

    main()
