"""Decode one audio file to float32 (and resample): no features here."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from melcli.errors import DecodeError
from melcli.features import check_samples


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
    # libsndfile says only "System error" for these: look at the path itself
    if isinstance(exc, FileNotFoundError) or not os.path.exists(path):
        return "broken symlink" if os.path.islink(path) else "file not found"
    if isinstance(exc, PermissionError) or not os.access(path, os.R_OK):
        return "permission denied"
    if isinstance(exc, IsADirectoryError) or os.path.isdir(path):
        return "is a directory"
    text = str(exc)
    # libsndfile: "Error opening 'x.wav': Format not recognised." -> the part after the path
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    text = " ".join(text.split()).rstrip(".")
    if os.path.isfile(path):
        if os.path.getsize(path) == 0:
            return "cannot decode: empty file (0 bytes)"
        if text.startswith("File does not exist"):
            # what libsndfile says when its MP3 decoder gives up on a file it probed
            return "cannot decode: not a recognised audio format (corrupt or not audio)"
    return f"cannot decode: {text or type(exc).__name__}"


#: Held while fd 2 is redirected (see `quiet_c_stderr`); whoever writes to
#: stderr while decoding may run in other threads takes it too (the CLI does).
STDERR_LOCK = threading.RLock()


@contextlib.contextmanager
def quiet_c_stderr(enabled: bool = True) -> Iterator[None]:
    """Silence file descriptor 2 while libsndfile opens or reads a file.

    Its MP3 decoder (libmpg123) prints lines such as ``Note: Illegal
    Audio-MPEG-Header ... Trying to resync...`` straight to fd 2 when it probes
    a corrupt or non-audio file; melcli reports the failure itself, in one line.
    fd 2 is process-wide, so this holds `STDERR_LOCK`: decoding threads take
    turns here, and messages printed under the lock are never swallowed.
    """
    if not enabled:
        yield
        return
    with STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to silence
            yield
            return
        try:
            sys.stderr.flush()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, 2)
            finally:
                os.close(null)
            try:
                yield
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)


def _fs(path: str) -> str | bytes:
    """The path as libsndfile can open it: bytes when the name is not valid UTF-8."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def probe(path: str) -> AudioInfo:
    """Read a file's header.

    Raises
    ------
    DecodeError
        When the file is missing, unreadable or not audio libsndfile can read.
    """
    try:
        with quiet_c_stderr():
            info = sf.info(_fs(path))
    except Exception as exc:  # libsndfile raises several unrelated types
        raise DecodeError(_reason(path, exc)) from None
    _check_header(info.extra_info)
    if info.samplerate <= 0 or info.channels <= 0:
        raise DecodeError(
            f"cannot decode: invalid header ({info.samplerate} Hz, {info.channels} ch)"
        )
    return AudioInfo(
        info.format, info.subtype, int(info.samplerate), int(info.channels), int(info.frames)
    )


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


def load(
    path: str, *, sr: int | None, mono: bool, quiet: bool = True
) -> tuple[np.ndarray, int, AudioInfo]:
    """Decode a file to float32 as ``librosa.load(path, sr=sr, mono=mono)`` does.

    Parameters
    ----------
    path : str
    sr : int or None
        Target rate; None keeps the native rate.
    mono : bool
        Average the channels (``librosa.to_mono``).
    quiet : bool
        Silence the C decoders' own messages on fd 2 (see `quiet_c_stderr`);
        only MP3's decoder prints, so callers that know the format pass False
        for other formats and decode without taking `STDERR_LOCK`.

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
        with quiet_c_stderr(quiet), sf.SoundFile(_fs(path)) as f:
            info = AudioInfo(f.format, f.subtype, int(f.samplerate), int(f.channels), int(f.frames))
            data = f.read(dtype="float32", always_2d=True)
            _check_complete(f, data.shape[0])
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(_reason(path, exc)) from None
    check_samples(data)
    y = downmix(data) if mono else np.ascontiguousarray(data.T)
    rate = info.sample_rate
    if sr is not None and sr != rate and y.shape[-1] > 0:
        y = resample(y, rate, sr)
        rate = sr
    elif sr is not None:
        rate = sr
    return y, rate, info


def load_segment(path: str, start: int, stop: int, *, mono: bool) -> np.ndarray:
    """Decode samples [start, stop) of a file at its native rate.

    Returns
    -------
    np.ndarray, shape (channels, stop - start), float32
        One channel (the mean) when ``mono``.

    Raises
    ------
    DecodeError
        Unreadable file, or fewer samples than its header promised.
    """
    try:
        with sf.SoundFile(_fs(path)) as f:
            f.seek(start)
            data = f.read(stop - start, dtype="float32", always_2d=True)
    except Exception as exc:
        raise DecodeError(_reason(path, exc)) from None
    if data.shape[0] != stop - start:
        raise DecodeError(
            f"cannot decode: {data.shape[0]} samples at {start}, expected {stop - start}"
        )
    check_samples(data)
    return downmix(data) if mono else np.ascontiguousarray(data.T)


#: Placeholder sizes streaming writers put in a WAV header before the length is known.
_UNKNOWN_SIZES = {"0", "4294967295", "2147483647", "4294967294"}


def _check_complete(f: sf.SoundFile, got: int) -> None:
    """Raise DecodeError when a file holds fewer samples than it declares.

    libsndfile quietly shortens a WAV whose data chunk runs past the end of the
    file (its log says ``data : 32000 (should be 15956)``), and returns fewer
    frames than ``frames`` when a compressed stream breaks off.
    """
    if got < f.frames:
        raise DecodeError(f"truncated: decoded {got} of {f.frames} samples")
    _check_header(f.extra_info)


def _check_header(extra_info: str) -> None:
    """Raise DecodeError when libsndfile's log says the data chunk is cut short."""
    for line in extra_info.splitlines():
        parts = line.split()
        # "data : 32000 (should be 15956)"
        if len(parts) == 6 and parts[0] == "data" and parts[3:5] == ["(should", "be"]:
            declared, actual = parts[2], parts[5].rstrip(")")
            if declared not in _UNKNOWN_SIZES and actual.isdigit() and int(actual) < int(declared):
                raise DecodeError(
                    f"truncated: header declares {declared} bytes of audio, file holds {actual}"
                )


def downmix(data: np.ndarray) -> np.ndarray:
    """Mean of the channels of interleaved ``data`` (n, channels): shape (1, n), float32.

    Bit for bit ``librosa.to_mono`` (``np.mean`` over the channel axis of the
    (channels, n) array: channels added in order, then divided by their count),
    without first copying the interleaved samples into channel rows.
    """
    channels = data.shape[1]
    if channels == 1:
        return data.reshape(1, -1).copy() if not data.flags.c_contiguous else data.reshape(1, -1)
    with np.errstate(over="ignore", invalid="ignore"):  # huge samples: caught earlier
        acc = data[:, 0] + data[:, 1]
        for c in range(2, channels):
            acc += data[:, c]
        acc /= np.float32(channels)
    return acc.reshape(1, -1)
