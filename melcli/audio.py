"""Decode one audio file to float32 (and resample): no features here."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from melcli.errors import DecodeError


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says.

    Attributes
    ----------
    format, subtype : str
        libsndfile container and encoding (e.g. ``WAV`` / ``PCM_16``).
    sample_rate : int
    channels : int
    frames : int
        Samples per channel (an estimate for some compressed formats).
    """

    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _reason(path: str, exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "broken symlink" if os.path.islink(path) else "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    text = str(exc)
    # libsndfile: "Error opening 'x.wav': Format not recognised." -> the part after the path
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    text = " ".join(text.split()).rstrip(".")
    return f"cannot decode: {text or type(exc).__name__}"


def probe(path: str) -> AudioInfo:
    """Read a file's header.

    Raises
    ------
    DecodeError
        When the file is missing, unreadable or not audio libsndfile can read.
    """
    try:
        info = sf.info(path)
    except Exception as exc:  # libsndfile raises several unrelated types
        raise DecodeError(_reason(path, exc)) from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise DecodeError(f"cannot decode: invalid header ({info.samplerate} Hz, {info.channels} ch)")
    return AudioInfo(info.format, info.subtype, int(info.samplerate), int(info.channels), int(info.frames))


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample like ``librosa.resample(res_type='soxr_hq')`` (the librosa.load default).

    Parameters
    ----------
    y : np.ndarray, shape (channels, n), float32
    orig_sr, target_sr : int

    Returns
    -------
    np.ndarray, shape (channels, ceil(n * target_sr / orig_sr)), float32
    """
    import soxr

    # exactly librosa.resample's length, float rounding included (44100 -> 48000 Hz
    # of 44100 samples gives 48001, not 48000)
    n_out = int(math.ceil(y.shape[-1] * (float(target_sr) / orig_sr)))
    out = np.zeros((y.shape[0], n_out), dtype=np.float32)
    for c in range(y.shape[0]):
        res = soxr.resample(y[c], orig_sr, target_sr, quality="soxr_hq")
        n = min(n_out, res.shape[-1])
        out[c, :n] = res[:n]
    return out


def load(path: str, *, sr: int | None, mono: bool) -> tuple[np.ndarray, int, AudioInfo]:
    """Decode a file to float32 as ``librosa.load(path, sr=sr, mono=mono)`` does.

    Parameters
    ----------
    path : str
    sr : int or None
        Target rate; None keeps the native rate.
    mono : bool
        Average the channels (``librosa.to_mono``).

    Returns
    -------
    y : np.ndarray, shape (channels, n_samples), float32
        ``channels`` is 1 when ``mono``.
    sr : int
        The rate of ``y``.
    info : AudioInfo
        The file's header (native rate and channels).

    Raises
    ------
    DecodeError
    """
    try:
        with sf.SoundFile(path) as f:
            info = AudioInfo(f.format, f.subtype, int(f.samplerate), int(f.channels), int(f.frames))
            data = f.read(dtype="float32", always_2d=True)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(_reason(path, exc)) from None
    y = np.ascontiguousarray(data.T)
    if mono and y.shape[0] > 1:
        y = np.mean(y, axis=0, keepdims=True)
    rate = info.sample_rate
    if sr is not None and sr != rate and y.shape[-1] > 0:
        y = resample(y, rate, sr)
        rate = sr
    elif sr is not None:
        rate = sr
    return y, rate, info
