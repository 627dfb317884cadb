#!/usr/bin/env python3
"""Regenerate the small real-audio corpus in ``sample_audio/``.

The corpus exercises directory walking (two subdirectories), several containers
and codecs (WAV PCM_16 / PCM_24, FLAC, OGG/Vorbis, MP3), sample rates
(16 / 22.05 / 44.1 / 48 kHz) and channel counts (mono / stereo):

=================================  ==========================================
File                               Content
=================================  ==========================================
``speech/hello.wav``               espeak-ng speech, 16 kHz mono PCM_16
``speech/numbers.flac``            espeak-ng speech, 16 kHz mono FLAC
``speech/hello.mp3``               same speech as ``hello.wav``, 22.05 kHz MP3
``music/chords.flac``              synthetic chords, 44.1 kHz stereo FLAC
``music/arpeggio.ogg``             synthetic arpeggio, 22.05 kHz mono Vorbis
``music/pad_24bit.wav``            synthetic pad, 48 kHz stereo PCM_24
=================================  ==========================================

This script is for developers only: it needs the ``espeak-ng`` executable, which
is *not* available on CI. Its output files are committed, so tests never need to
run it. Usage (from the repository root)::

    .venv/bin/python scripts/make_sample_audio.py

Everything is deterministic: the synthesis uses fixed seeds, espeak-ng output is
deterministic for a given espeak-ng version, and the random Ogg bitstream serial
number that libsndfile picks is rewritten to a fixed value, so with the same
library versions every run produces byte-identical files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "sample_audio"

#: Hard upper bound on the total size of the generated audio files.
MAX_TOTAL_BYTES = 2 * 1024 * 1024
#: Every file must stay below this absolute peak (after decoding).
MAX_PEAK = 0.9
#: Fixed Ogg bitstream serial number (libsndfile picks a time-seeded one).
OGG_SERIAL = int.from_bytes(b"melc", "little")

SPEECH_RATE = 16_000
MP3_RATE = 22_050
CHORDS_RATE = 44_100
ARPEGGIO_RATE = 22_050
PAD_RATE = 48_000

HELLO_TEXT = "Hello! This is a short test of the spectrogram tool."
NUMBERS_TEXT = "One, two, three, four, five."

FloatArray = np.ndarray


# --------------------------------------------------------------------------- #
# Generic helpers
# --------------------------------------------------------------------------- #
def normalize_peak(audio: FloatArray, peak: float) -> FloatArray:
    """Scale a signal so that its absolute peak equals ``peak``.

    Parameters
    ----------
    audio : numpy.ndarray
        Signal of any shape (``(n,)`` or ``(n, channels)``).
    peak : float
        Target absolute peak, in full-scale units.

    Returns
    -------
    numpy.ndarray
        The rescaled signal as ``float64``.
    """
    audio = np.asarray(audio, dtype=np.float64)
    current = float(np.max(np.abs(audio)))
    if current == 0.0:
        return audio
    return audio * (peak / current)


def fade(audio: FloatArray, sr: int, fade_in: float, fade_out: float) -> FloatArray:
    """Apply raised-cosine fade-in and fade-out ramps.

    Parameters
    ----------
    audio : numpy.ndarray
        Signal of shape ``(n,)`` or ``(n, channels)``.
    sr : int
        Sample rate in Hz.
    fade_in, fade_out : float
        Ramp durations in seconds.

    Returns
    -------
    numpy.ndarray
        A faded copy of ``audio``.
    """
    out = np.array(audio, dtype=np.float64, copy=True)
    n = out.shape[0]
    for seconds, rising in ((fade_in, True), (fade_out, False)):
        k = min(n, int(round(seconds * sr)))
        if k == 0:
            continue
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
        if not rising:
            ramp = ramp[::-1]
        if out.ndim == 2:
            ramp = ramp[:, None]
        if rising:
            out[:k] *= ramp
        else:
            out[n - k :] *= ramp
    return out


def midi_to_hz(note: float) -> float:
    """Convert a MIDI note number to a frequency in Hz (A4 = 69 = 440 Hz).

    Parameters
    ----------
    note : float
        MIDI note number.

    Returns
    -------
    float
        Frequency in Hz.
    """
    return float(440.0 * 2.0 ** ((note - 69.0) / 12.0))


def harmonic_note(
    freq: float,
    duration: float,
    sr: int,
    n_harmonics: int = 8,
    decay: float = 3.0,
    brightness: float = 1.0,
    phase_seed: int = 0,
) -> FloatArray:
    """Synthesise one plucked/struck harmonic tone with a decaying envelope.

    Higher harmonics have smaller amplitudes (``1 / k**brightness``) and decay
    faster (``decay * k**0.5`` per second). Harmonics above Nyquist are dropped.

    Parameters
    ----------
    freq : float
        Fundamental frequency in Hz.
    duration : float
        Duration in seconds.
    sr : int
        Sample rate in Hz.
    n_harmonics : int, optional
        Maximum number of harmonics (including the fundamental).
    decay : float, optional
        Exponential decay rate of the fundamental, in 1/s.
    brightness : float, optional
        Spectral roll-off exponent; larger values give a darker tone.
    phase_seed : int, optional
        Seed for the (deterministic) random starting phases of the harmonics.

    Returns
    -------
    numpy.ndarray
        Mono signal of shape ``(round(duration * sr),)``, unnormalised.
    """
    n = int(round(duration * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(phase_seed)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=n_harmonics)
    attack = np.minimum(1.0, t / 0.005)  # 5 ms linear attack avoids clicks
    out = np.zeros(n)
    for k in range(1, n_harmonics + 1):
        fk = freq * k
        if fk >= 0.45 * sr:
            break
        env = np.exp(-decay * np.sqrt(k) * t)
        out += (1.0 / k**brightness) * env * np.sin(2.0 * np.pi * fk * t + phases[k - 1])
    return out * attack


# --------------------------------------------------------------------------- #
# Speech (espeak-ng)
# --------------------------------------------------------------------------- #
def espeak(
    text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50
) -> tuple[FloatArray, int]:
    """Synthesise speech with the ``espeak-ng`` command-line program.

    Parameters
    ----------
    text : str
        Text to speak.
    voice : str, optional
        espeak-ng voice name (``-v``).
    speed : int, optional
        Speaking rate in words per minute (``-s``).
    pitch : int, optional
        Pitch adjustment, 0..99 (``-p``).

    Returns
    -------
    audio : numpy.ndarray
        Mono ``float64`` signal at espeak-ng's native rate.
    sr : int
        espeak-ng's output sample rate (22050 Hz for the standard voices).

    Raises
    ------
    RuntimeError
        If ``espeak-ng`` is not installed.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is required: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
            check=True,
        )
        audio, sr = sf.read(wav, dtype="float64", always_2d=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return audio, int(sr)


def trim_silence(
    audio: FloatArray, sr: int, threshold: float = 1e-3, pad: float = 0.1
) -> FloatArray:
    """Trim leading/trailing near-silence, keeping a short margin.

    Parameters
    ----------
    audio : numpy.ndarray
        Mono signal.
    sr : int
        Sample rate in Hz.
    threshold : float, optional
        Absolute amplitude below which a sample counts as silent.
    pad : float, optional
        Margin of (quiet) audio kept on each side, in seconds.

    Returns
    -------
    numpy.ndarray
        The trimmed signal (unchanged if it is entirely silent).
    """
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    margin = int(round(pad * sr))
    start = max(0, int(loud[0]) - margin)
    stop = min(audio.shape[0], int(loud[-1]) + 1 + margin)
    return audio[start:stop]


def resample(audio: FloatArray, sr_in: int, sr_out: int) -> FloatArray:
    """Resample with soxr (very high quality).

    Parameters
    ----------
    audio : numpy.ndarray
        Signal of shape ``(n,)`` or ``(n, channels)``.
    sr_in, sr_out : int
        Input and output sample rates in Hz.

    Returns
    -------
    numpy.ndarray
        The resampled ``float64`` signal.
    """
    if sr_in == sr_out:
        return np.asarray(audio, dtype=np.float64)
    out = soxr.resample(np.asarray(audio, dtype=np.float64), sr_in, sr_out, quality="VHQ")
    return np.asarray(out, dtype=np.float64)


# --------------------------------------------------------------------------- #
# Music (numpy synthesis)
# --------------------------------------------------------------------------- #
def make_chords(sr: int = CHORDS_RATE, seed: int = 1) -> FloatArray:
    """Four struck chords (C, Am, F, G), one per second, stereo.

    The left channel carries a low voicing with a bass note, the right channel
    a brighter, higher voicing with slightly different decay, so the two
    channels have clearly different content. A little white noise (about
    -60 dBFS) is added to each channel independently.

    Parameters
    ----------
    sr : int, optional
        Sample rate in Hz.
    seed : int, optional
        Seed for harmonic phases and noise.

    Returns
    -------
    numpy.ndarray
        Signal of shape ``(4 * sr, 2)`` with peak 0.8.
    """
    chord_len = 1.0
    # (bass, left voicing, right voicing) as MIDI notes
    progression = [
        (36, [48, 52, 55], [64, 67, 72, 76]),  # C
        (33, [45, 48, 52], [64, 69, 72, 76]),  # Am
        (29, [41, 45, 48], [65, 69, 72, 77]),  # F
        (31, [43, 47, 50], [62, 67, 71, 74]),  # G
    ]
    n_chord = int(round(chord_len * sr))
    out = np.zeros((n_chord * len(progression), 2))
    for i, (bass, left, right) in enumerate(progression):
        s = slice(i * n_chord, (i + 1) * n_chord)
        seed_i = seed * 1000 + i * 100
        out[s, 0] += 1.2 * harmonic_note(midi_to_hz(bass), chord_len, sr, 6, 2.0, 1.2, seed_i)
        for j, note in enumerate(left):
            out[s, 0] += harmonic_note(midi_to_hz(note), chord_len, sr, 8, 3.0, 1.0, seed_i + 1 + j)
        for j, note in enumerate(right):
            out[s, 1] += 0.8 * harmonic_note(
                midi_to_hz(note), chord_len, sr, 10, 4.5, 0.8, seed_i + 11 + j
            )
    out = normalize_peak(out, 0.78)
    rng = np.random.default_rng(seed)
    out += 1e-3 * rng.standard_normal(out.shape)
    return normalize_peak(fade(out, sr, 0.0, 0.05), 0.8)


def make_arpeggio(sr: int = ARPEGGIO_RATE, seed: int = 2) -> FloatArray:
    """A rising and falling A-minor-seventh arpeggio of sixteenth notes, mono.

    Parameters
    ----------
    sr : int, optional
        Sample rate in Hz.
    seed : int, optional
        Seed for harmonic phases and noise.

    Returns
    -------
    numpy.ndarray
        Signal of shape ``(3 * sr,)`` with peak 0.7 (headroom for the lossy
        codec's overshoot).
    """
    total = 3.0
    step = 0.125  # 24 notes in 3 s (sixteenths at 120 bpm)
    notes = [57, 60, 64, 67, 69, 72, 76, 79, 81, 79, 76, 72] * 2
    n_total = int(round(total * sr))
    n_step = int(round(step * sr))
    ring = 0.6  # each note rings on under the following ones
    out = np.zeros(n_total + int(round(ring * sr)))
    for i, note in enumerate(notes):
        tone = harmonic_note(midi_to_hz(note), ring, sr, 6, 6.0, 1.5, seed * 1000 + i)
        start = i * n_step
        out[start : start + tone.shape[0]] += tone
    out = out[:n_total]
    rng = np.random.default_rng(seed)
    out += 2e-3 * rng.standard_normal(out.shape)
    return normalize_peak(fade(out, sr, 0.0, 0.3), 0.7)


def make_pad(sr: int = PAD_RATE, seed: int = 3) -> FloatArray:
    """A slow, swelling stereo pad of detuned sustained tones (D major add 9).

    Each channel gets its own detuning, harmonic phases and slow tremolo rate,
    so left and right share the harmony but are essentially uncorrelated.

    Parameters
    ----------
    sr : int, optional
        Sample rate in Hz.
    seed : int, optional
        Seed for phases and noise.

    Returns
    -------
    numpy.ndarray
        Signal of shape ``(2 * sr, 2)`` with peak 0.75.
    """
    duration = 2.0
    n = int(round(duration * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    notes = [50, 57, 62, 64, 66, 69]
    out = np.zeros((n, 2))
    for ch, detune_cents in enumerate((-7.0, 6.0)):
        for note in notes:
            base = midi_to_hz(note) * 2.0 ** (detune_cents / 1200.0)
            for k in range(1, 6):
                phase = rng.uniform(0.0, 2.0 * np.pi)
                out[:, ch] += (0.5**k) * np.sin(2.0 * np.pi * base * k * t + phase)
        rate = 0.7 + 0.4 * ch
        out[:, ch] *= 1.0 + 0.25 * np.sin(2.0 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    out = normalize_peak(out, 0.74)
    out += 3e-4 * rng.standard_normal(out.shape)
    return normalize_peak(fade(out, sr, 0.6, 0.5), 0.75)


# --------------------------------------------------------------------------- #
# Ogg serial-number fix-up (libsndfile uses a time-seeded random serial)
# --------------------------------------------------------------------------- #
def _ogg_crc_table() -> list[int]:
    """Build the lookup table of the Ogg page CRC-32 (poly 0x04C11DB7, MSB first).

    Returns
    -------
    list of int
        256-entry CRC table.
    """
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC_TABLE = _ogg_crc_table()


def ogg_crc(data: bytes) -> int:
    """Compute the Ogg page checksum of ``data``.

    Parameters
    ----------
    data : bytes
        A complete page with its CRC field zeroed.

    Returns
    -------
    int
        The 32-bit CRC.
    """
    crc = 0
    table = _OGG_CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) & 0xFF) ^ byte]
    return crc


def set_ogg_serial(path: Path, serial: int) -> None:
    """Rewrite the bitstream serial number of every page of a single-stream Ogg file.

    Page CRCs are recomputed, so the result is a valid Ogg file that differs
    from the input only in the serial number.

    Parameters
    ----------
    path : pathlib.Path
        Ogg file, modified in place.
    serial : int
        New 32-bit serial number.

    Raises
    ------
    ValueError
        If the file is not a well-formed single-stream Ogg file.
    """
    data = bytearray(path.read_bytes())
    pos = 0
    old_serial: int | None = None
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS":
            raise ValueError(f"{path}: no Ogg page at byte {pos}")
        n_segments = data[pos + 26]
        header_len = 27 + n_segments
        body_len = sum(data[pos + 27 : pos + header_len])
        page_len = header_len + body_len
        page_serial = int.from_bytes(data[pos + 14 : pos + 18], "little")
        if old_serial is None:
            old_serial = page_serial
        elif page_serial != old_serial:
            raise ValueError(f"{path}: more than one logical bitstream")
        data[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        data[pos + 22 : pos + 26] = b"\x00\x00\x00\x00"
        crc = ogg_crc(bytes(data[pos : pos + page_len]))
        data[pos + 22 : pos + 26] = crc.to_bytes(4, "little")
        pos += page_len
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #
def generate(out_dir: Path) -> list[Path]:
    """Write all corpus files below ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Destination directory (``sample_audio/``); subdirectories are created.

    Returns
    -------
    list of pathlib.Path
        The written audio files, in a fixed order.
    """
    speech_dir = out_dir / "speech"
    music_dir = out_dir / "music"
    speech_dir.mkdir(parents=True, exist_ok=True)
    music_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(path: Path, writer: Callable[[Path], None]) -> None:
        writer(path)
        written.append(path)

    # Speech: hello (WAV at 16 kHz + MP3 at espeak's native 22.05 kHz).
    hello, hello_sr = espeak(HELLO_TEXT, voice="en-us", speed=175, pitch=50)
    hello = trim_silence(hello, hello_sr)
    hello_16k = normalize_peak(resample(hello, hello_sr, SPEECH_RATE), 0.8)
    put(
        speech_dir / "hello.wav",
        lambda p: sf.write(p, hello_16k, SPEECH_RATE, format="WAV", subtype="PCM_16"),
    )
    hello_mp3 = normalize_peak(resample(hello, hello_sr, MP3_RATE), 0.7)
    put(
        speech_dir / "hello.mp3",
        lambda p: sf.write(p, hello_mp3, MP3_RATE, format="MP3", subtype="MPEG_LAYER_III"),
    )

    # Speech: numbers (FLAC at 16 kHz, a different voice).
    numbers, numbers_sr = espeak(NUMBERS_TEXT, voice="en-gb", speed=170, pitch=40)
    numbers = trim_silence(numbers, numbers_sr)
    numbers_16k = normalize_peak(resample(numbers, numbers_sr, SPEECH_RATE), 0.8)
    put(
        speech_dir / "numbers.flac",
        lambda p: sf.write(p, numbers_16k, SPEECH_RATE, format="FLAC", subtype="PCM_16"),
    )

    # Music.
    chords = make_chords()
    put(
        music_dir / "chords.flac",
        lambda p: sf.write(p, chords, CHORDS_RATE, format="FLAC", subtype="PCM_16"),
    )
    arpeggio = make_arpeggio()

    def write_ogg(p: Path) -> None:
        sf.write(p, arpeggio, ARPEGGIO_RATE, format="OGG", subtype="VORBIS")
        set_ogg_serial(p, OGG_SERIAL)

    put(music_dir / "arpeggio.ogg", write_ogg)
    pad = make_pad()
    put(
        music_dir / "pad_24bit.wav",
        lambda p: sf.write(p, pad, PAD_RATE, format="WAV", subtype="PCM_24"),
    )
    return written


def verify(paths: Sequence[Path], root: Path) -> int:
    """Read every file back, print a summary table and check the size budget.

    Parameters
    ----------
    paths : sequence of pathlib.Path
        Files to check.
    root : pathlib.Path
        Directory that the printed paths are made relative to.

    Returns
    -------
    int
        Total size of the files in bytes.

    Raises
    ------
    RuntimeError
        If a file cannot be decoded, is empty, contains non-finite samples,
        exceeds the peak limit, or the total size exceeds the budget.
    """
    header = (
        f"{'path':<34} {'format':<6} {'subtype':<15} {'rate':>6} {'ch':>2} "
        f"{'dur (s)':>8} {'peak':>6} {'bytes':>9}"
    )
    print(header)
    print("-" * len(header))
    total = 0
    for path in paths:
        info = sf.info(path)
        data, sr = sf.read(path, dtype="float64", always_2d=True)
        size = path.stat().st_size
        total += size
        peak = float(np.max(np.abs(data))) if data.size else 0.0
        if sr != info.samplerate or data.shape[1] != info.channels or data.shape[0] == 0:
            raise RuntimeError(f"{path}: inconsistent or empty read-back")
        if not np.all(np.isfinite(data)):
            raise RuntimeError(f"{path}: non-finite samples")
        if peak >= MAX_PEAK:
            raise RuntimeError(f"{path}: peak {peak:.3f} >= {MAX_PEAK}")
        print(
            f"{path.relative_to(root).as_posix():<34} {info.format:<6} {info.subtype:<15} "
            f"{info.samplerate:>6} {info.channels:>2} {data.shape[0] / sr:>8.3f} "
            f"{peak:>6.3f} {size:>9}"
        )
    print("-" * len(header))
    print(f"{'total':<34} {'':<6} {'':<15} {'':>6} {'':>2} {'':>8} {'':>6} {total:>9}")
    if total >= MAX_TOTAL_BYTES:
        raise RuntimeError(f"total size {total} bytes exceeds budget of {MAX_TOTAL_BYTES}")
    return total


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (defaults to ``sys.argv[1:]``).

    Returns
    -------
    int
        Process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"output directory (default: {DEFAULT_OUT_DIR.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out.resolve()
    paths = generate(out_dir)
    verify(paths, out_dir.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
