"""melcli: batch STFT / mel spectrogram extraction with librosa-exact numbers.

The command line is ``melcli``; `open` reads an output back. The library is
split into `params` (parameters, each declared once), `kinds` (one module per
feature kind), `discover`, `audio`, `features` (pure array functions),
`pipeline` (per-file job and executors), `runner` (one run), `store` (the output
formats, written and read), `manifest` and `reader`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from melcli._version import __version__

if TYPE_CHECKING:
    from melcli.reader import Features

__all__ = ["__version__", "open"]


def open(path: str | os.PathLike[str]) -> Features:  # noqa: A001 (like io.open)
    """Open a melcli output for reading: ``melcli.open("feats.h5")["speech/a.wav"]``.

    See `melcli.reader.open`; numpy and h5py are imported on the first call, so
    ``import melcli`` stays light.
    """
    from melcli.reader import open as _open

    return _open(path)
