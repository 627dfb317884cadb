"""Decode one audio file to float32 (and resample): no features here."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from melcli.discover import open_regular, os_reason
from melcli.errors import DecodeError
from melcli.features import check_samples, samples_error


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


#: What soundfile / libsndfile raise for a file they cannot read. Anything else
#: (a bug, a closed stderr) says nothing about the file's content: it is
#: reported as an internal error, which `melcli.plan` never treats as permanent.
_DECODER_ERRORS = (RuntimeError, OSError, ValueError, TypeError, EOFError)


def _permanent(reason: str) -> bool:
    """A decoder's complaint about the content, not a failing disk or a bug."""
    return reason.startswith("cannot decode") and "System error" not in reason


def _reason(exc: Exception) -> str:
    """One line for what libsndfile (or reading through it) raised."""
    if not isinstance(exc, _DECODER_ERRORS):
        return f"internal error: {type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    text = str(exc)
    # libsndfile: "Error opening 5: Format not recognised." -> the part after the name
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    text = " ".join(text.split()).rstrip(".")
    if text.startswith("File does not exist"):
        # what libsndfile says when its MP3 decoder gives up on a file it probed
        return "cannot decode: not a recognised audio format (corrupt or not audio)"
    return f"cannot decode: {text or type(exc).__name__}"


@contextlib.contextmanager
def open_audio(path: str, quiet: bool = True) -> Iterator[sf.SoundFile]:
    """Open an input with libsndfile, through a descriptor melcli opened itself.

    The file is opened with `melcli.discover.open_regular` (never a FIFO, socket
    or device, never blocking) and handed to libsndfile as a descriptor, which
    also opens paths longer than libsndfile's own limit (1023 bytes).

    Parameters
    ----------
    path : str
    quiet : bool
        Silence the C decoders' own messages on fd 2 (see `quiet_c_stderr`).

    Raises
    ------
    DecodeError
        The file is missing, unreadable, not a regular file, empty, or not audio
        libsndfile can read (also raised for errors while reading it).
    """
    try:
        fd, st = open_regular(path)
    except OSError as exc:
        reason = os_reason(path, exc)
        raise DecodeError(reason, permanent=reason.startswith("not a regular file")) from None
    try:
        if st.st_size == 0:  # also /proc and /sys files, whose reads may block
            raise DecodeError("cannot decode: empty file (0 bytes)")
        try:
            with quiet_c_stderr(quiet), sf.SoundFile(fd, closefd=False) as f:
                yield f
        except (DecodeError, MemoryError):
            raise
        except Exception as exc:  # libsndfile raises several unrelated types
            reason = _reason(exc)
            raise DecodeError(reason, permanent=_permanent(reason)) from None
    finally:
        os.close(fd)


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
    # In the main thread a stop signal's handler raises: held back until fd 2 is
    # restored, or the one error line it leads to would go to /dev/null.
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    main = threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stops) if main else None
    try:
        with STDERR_LOCK:
            try:
                saved = os.dup(2)
            except OSError:  # no stderr at all: nothing to silence
                yield
                return
            try:
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    sys.stderr.flush()  # None with fd 2 closed; a broken pipe: nothing to keep
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
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def probe(path: str) -> AudioInfo:
    """Read a file's header.

    Raises
    ------
    DecodeError
        When the file is missing, unreadable or not audio libsndfile can read.
    """
    with open_audio(path) as f:
        info = AudioInfo(f.format, f.subtype, int(f.samplerate), int(f.channels), int(f.frames))
        extra = f.extra_info
    _check_header(extra)
    if info.sample_rate <= 0 or info.channels <= 0:
        raise DecodeError(
            f"cannot decode: invalid header ({info.sample_rate} Hz, {info.channels} ch)"
        )
    return info


#: Largest factor between a file's rate and ``--sr``, either way. Real audio rates
#: run from 8 kHz (telephony) to 768 kHz (DXD), at most 96 apart; a header that
#: claims a rate far outside them (1 Hz) is broken, and converting it would make
#: up to ``ratio`` output samples per stored one (a 40 KB WAV "at 1 Hz" to 16 kHz:
#: 2.9 GB of samples).
MAX_RATIO = 256


def check_ratio(orig_sr: int, target_sr: int) -> None:
    """Raise DecodeError when ``orig_sr`` and ``target_sr`` are more than `MAX_RATIO` apart."""
    if max(orig_sr, target_sr) > MAX_RATIO * min(orig_sr, target_sr):
        raise DecodeError(
            f"cannot resample {orig_sr} Hz to {target_sr} Hz: ratio above {MAX_RATIO}"
        )


def resampled_length(n: int, orig_sr: int, target_sr: int) -> int:
    """Samples after resampling ``n``: ``librosa.resample``'s length, float rounding included.

    (44100 -> 48000 Hz of 44100 samples gives 48001, not 48000.)
    """
    return int(math.ceil(n * (float(target_sr) / orig_sr)))


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

    n_out = resampled_length(y.shape[-1], orig_sr, target_sr)
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
    with open_audio(path, quiet) as f:
        info = AudioInfo(f.format, f.subtype, int(f.samplerate), int(f.channels), int(f.frames))
        if sr is not None and sr != info.sample_rate:
            check_ratio(info.sample_rate, sr)
        data = f.read(dtype="float32", always_2d=True)
        _check_complete(f, data.shape[0])
    check_samples(data)
    y = downmix(data) if mono else np.ascontiguousarray(data.T)
    rate = info.sample_rate
    if sr is not None and sr != rate and y.shape[-1] > 0:
        y = resample(y, rate, sr)
        rate = sr
    elif sr is not None:
        rate = sr
    return y, rate, info


#: Samples per channel produced at a time when a file is resampled in blocks:
#: decoding, resampling and the STFT each hold about this much, whatever the
#: file's length or the conversion ratio.
STREAM_SAMPLES = 1 << 18
#: Resampled samples held back until the end of the input is known: the
#: resampler's own output length may differ by a few samples from librosa's
#: (`resampled_length`), and the tail is cut or zero-padded to librosa's.
_TAIL = 1024


def stream(
    path: str, *, sr: int | None, mono: bool, quiet: bool = True
) -> Generator[np.ndarray, None, None]:
    """Decode (and resample) a file in blocks: joined, they are ``load(path, sr=sr, mono=mono)[0]``.

    Bit for bit: libsoxr's output does not depend on how its input is cut into
    chunks (``soxr.ResampleStream`` fed in blocks gives exactly what
    ``soxr.resample`` of the whole signal gives; checked in the tests), and the
    length is librosa's. Memory stays at a few `STREAM_SAMPLES` blocks.

    Parameters
    ----------
    path : str
    sr : int or None
        Target rate; None (or the file's own rate) decodes without resampling.
    mono : bool
    quiet : bool
        As in `load`.

    Yields
    ------
    np.ndarray, shape (channels, k), float32
        Consecutive blocks of the resampled signal (``channels`` 1 when ``mono``).

    Raises
    ------
    DecodeError
        As `load`: unreadable, truncated, non-finite or absurd samples, or a
        ratio above `MAX_RATIO`. Raised when met, possibly after some blocks.
    """
    import soxr

    with open_audio(path, quiet) as f:
        _check_header(f.extra_info)
        rate, channels = int(f.samplerate), int(f.channels)
        if sr is None or sr == rate:
            yield from _native_blocks(f, mono)
            return
        check_ratio(rate, sr)
        ratio = sr / rate
        block = max(64, int(STREAM_SAMPLES / max(ratio, 1.0)))
        streams = [
            soxr.ResampleStream(rate, sr, 1, dtype="float32", quality="soxr_hq")
            for _ in range(1 if mono else channels)
        ]
        n_in = given = 0
        held = np.zeros((len(streams), 0), dtype=np.float32)
        while True:
            data = f.read(block, dtype="float32", always_2d=True)
            last = data.shape[0] < block
            n_in += data.shape[0]
            try:
                check_samples(data)
            except DecodeError:
                raise _scan_rest(f, data) from None
            y = downmix(data) if mono else np.ascontiguousarray(data.T)
            out = np.stack([s.resample_chunk(y[c], last=last) for c, s in enumerate(streams)])
            held = np.concatenate([held, out], axis=1) if held.shape[1] else out
            if held.shape[1] > _TAIL and not last:
                yield held[:, :-_TAIL]
                given += held.shape[1] - _TAIL
                held = held[:, -_TAIL:].copy()
            if last:
                break
        if n_in < f.frames:
            raise DecodeError(f"truncated: decoded {n_in} of {f.frames} samples")
    want = resampled_length(n_in, rate, sr) - given
    if want < 0:  # never seen: libsoxr's count stays within a sample or two of librosa's
        raise DecodeError(f"internal error: resampler overshot by {-want} samples", permanent=False)
    tail = np.zeros((len(streams), want), dtype=np.float32)
    n = min(want, held.shape[1])
    tail[:, :n] = held[:, :n]
    yield tail


def _native_blocks(f: sf.SoundFile, mono: bool) -> Generator[np.ndarray, None, None]:
    """`stream` without resampling: the decoded blocks, downmixed as `load` does (the
    mean of each sample's channels, so the blocks join to `load`'s array exactly)."""
    n_in = 0
    while True:
        data = f.read(STREAM_SAMPLES, dtype="float32", always_2d=True)
        n_in += data.shape[0]
        if data.shape[0]:
            try:
                check_samples(data)
            except DecodeError:
                raise _scan_rest(f, data) from None
            yield downmix(data) if mono else np.ascontiguousarray(data.T)
        if data.shape[0] < STREAM_SAMPLES:
            break
    _check_complete(f, n_in)


def _scan_rest(f: sf.SoundFile, data: np.ndarray) -> DecodeError:
    """The error `check_samples` gives for the whole file, from its first bad block onwards."""
    bad, peak = 0, 0.0
    while data.shape[0]:
        finite = np.isfinite(data)
        bad += int(data.size - np.count_nonzero(finite))
        peak = max(peak, float(np.abs(data, where=finite, out=np.zeros_like(data)).max()))
        data = f.read(STREAM_SAMPLES, dtype="float32", always_2d=True)
    return samples_error(bad, peak)


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
    with open_audio(path, quiet=False) as f:
        f.seek(start)
        data = f.read(stop - start, dtype="float32", always_2d=True)
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
