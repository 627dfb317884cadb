"""melcli: batch STFT / mel spectrogram extraction with librosa-exact numbers.

The command line is ``melcli``; the library is split into `params` (validated
parameters), `discover`, `audio`, `features` (pure array functions),
`pipeline` (per-file job and run loop), `writers` and `manifest`.
"""

from melcli._version import __version__

__all__ = ["__version__"]
