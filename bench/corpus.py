#!/usr/bin/env python3
"""Deterministic benchmark corpus for ``make bench``.

Layout (``bench/.corpus`` is gitignored)::

    bench/.corpus/<scale>/speech/  N x 10 s, 16 kHz mono PCM-16 WAV (espeak-ng)
    bench/.corpus/<scale>/music/   N x 30 s, 44.1 kHz stereo PCM-16, even index WAV, odd FLAC
    bench/.corpus/<scale>/clips/   N x 1 s, 16 kHz or 22.05 kHz mono PCM-16 WAV mixtures
    bench/.corpus/<scale>/long/    one 16 kHz mono FLAC (60 min full, 6 min quick)
    bench/.corpus/<scale>/STAMP.json

``<scale>`` is ``full`` (200 / 40 / 1000 / 60 min) or ``quick`` (20 / 4 / 100 / 6 min).
Every file is generated from a seed derived from its subset and index only, so the
quick corpus is a prefix of the full one.  The corpus is rebuilt only when the spec in
``STAMP.json`` differs from the one computed here (which includes the espeak-ng version
and whether real espeak-ng speech or the synthetic fallback was used).

Usage::

    python bench/corpus.py [--quick] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

BENCH_DIR = Path(__file__).resolve().parent
CORPUS_ROOT = BENCH_DIR / ".corpus"
SUBSETS = ("speech", "music", "clips", "long")
CORPUS_VERSION = 1

SCALES: dict[str, dict[str, int]] = {
    "full": {
        "n_speech": 200,
        "speech_s": 10,
        "n_music": 40,
        "music_s": 30,
        "n_clips": 1000,
        "clip_s": 1,
        "long_min": 60,
    },
    "quick": {
        "n_speech": 20,
        "speech_s": 10,
        "n_music": 4,
        "music_s": 30,
        "n_clips": 100,
        "clip_s": 1,
        "long_min": 6,
    },
}

SPEECH_SR = 16000
MUSIC_SR = 44100
LONG_SR = 16000
CLIP_RATES = (16000, 22050)

# espeak-ng voices (languages) and variants; English text read by other-language
# voices is fine here: we only want varied, realistic speech-like spectra.
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "de",
    "fr-fr",
    "es",
    "it",
    "nl",
    "pt",
    "sv",
    "pl",
)
VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f3", "+f4", "+croak", "+whisper")

_WORDS_TEXT = (
    "the a of and to in is that it for on was with as by at from this be are or have "
    "an which one had not but what all were when we there can been has more if will "
    "spectrum window frame audio signal filter river morning quiet engineer measure "
    "seven tired quick brown fox jumps over lazy dog bright yellow garden station "
    "window mountain history number silver across under between small large many "
    "every people little world country letter children mother father question music "
    "evening weather paper mirror rhythm harmony orchestra violin trumpet whistle "
    "thunder lightning coffee bicycle library museum theatre village forest island "
    "winter summer autumn spring north south east west yesterday tomorrow together "
    "carefully slowly quickly suddenly always never sometimes perhaps certainly"
)
WORDS = _WORDS_TEXT.split()


# --------------------------------------------------------------------------- helpers


def _write_atomic(path: Path, data: np.ndarray, sr: int, fmt: str, subtype: str = "PCM_16") -> None:
    """Write ``data`` (frames x channels or frames) to ``path`` via a temp file + rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, data, sr, format=fmt, subtype=subtype)
    os.replace(tmp, path)


def _peak_normalise(x: np.ndarray, peak: float = 0.89) -> np.ndarray:
    """Scale ``x`` so that its absolute peak equals ``peak`` (no-op for silence)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return x if m == 0.0 else x * (peak / m)


def espeak_version() -> str | None:
    """Return the espeak-ng version string, or None if espeak-ng is unavailable."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    parts = out.stdout.split()
    # "eSpeak NG text-to-speech: 1.51  Data at: ..."
    for i, p in enumerate(parts):
        if p.endswith(":") and i + 1 < len(parts) and parts[i + 1][:1].isdigit():
            return parts[i + 1]
    return out.stdout.strip()[:40] or "unknown"


def ensure_espeak(allow_install: bool = True) -> str | None:
    """Return the espeak-ng version, installing it with apt-get if missing and possible.

    Installation is only attempted when running as root with apt-get available; on
    failure None is returned and the caller falls back to synthetic speech.
    """
    ver = espeak_version()
    if ver is not None or not allow_install:
        return ver
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    print("corpus: espeak-ng missing, trying `apt-get install -y espeak-ng` ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmds in (
        [["apt-get", "install", "-y", "-q", "espeak-ng"]],
        [["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "espeak-ng"]],
    ):
        try:
            ok = all(
                subprocess.run(c, env=env, capture_output=True, timeout=600).returncode == 0
                for c in cmds
            )
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok and espeak_version() is not None:
            return espeak_version()
    return None


# --------------------------------------------------------------------------- speech


def _sentence(rng: random.Random, n_words: int) -> str:
    """A pseudo-random English-ish text of ``n_words`` words with some punctuation."""
    out: list[str] = []
    for k in range(n_words):
        w = rng.choice(WORDS)
        if not out or out[-1].endswith("."):
            w = w.capitalize()
        if k % rng.randint(5, 11) == 4:
            w += rng.choice((",", ".", ".", ";"))
        out.append(w)
    return " ".join(out) + "."


def _espeak_clip(text: str, voice: str, speed: int, pitch: int, gap: int) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng and return float32 mono audio at 16 kHz."""
    with tempfile.TemporaryDirectory(prefix="melcli-espeak-") as td:
        wav = Path(td) / "s.wav"
        cmd = [
            "espeak-ng",
            "-v",
            voice,
            "-s",
            str(speed),
            "-p",
            str(pitch),
            "-g",
            str(gap),
            "-w",
            str(wav),
            text,
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        y, sr = sf.read(wav, dtype="float32", always_2d=False)
    if y.ndim > 1:
        y = y.mean(axis=1)
    if sr != SPEECH_SR:
        y = soxr.resample(y, sr, SPEECH_SR, quality="HQ").astype(np.float32)
    return y


def _synthetic_speech(seed: int, n: int, sr: int = SPEECH_SR) -> np.ndarray:
    """Speech-like fallback: pulse train with f0 contour through moving formants + noise.

    Used only when espeak-ng is unavailable (a notice is printed and recorded in the stamp).
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng([7, seed])
    out = np.zeros(n, dtype=np.float64)
    pos = int(rng.integers(0, sr // 5))
    f0_base = float(rng.uniform(90, 230))
    phase = 0.0
    while pos < n:
        syl = int(rng.uniform(0.12, 0.3) * sr)
        seg_n = min(syl, n - pos)
        t = np.arange(seg_n) / sr
        if rng.random() < 0.2:  # fricative
            src = rng.standard_normal(seg_n) * 0.3
        else:
            f0 = f0_base * (
                1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6))
            )
            ph = phase + 2 * np.pi * np.cumsum(f0) / sr
            phase = float(ph[-1]) if seg_n else phase
            src = (np.mod(ph, 2 * np.pi) < 0.6).astype(np.float64) - 0.1
            src += 0.02 * rng.standard_normal(seg_n)
        y = src
        for fc, bw in (
            (rng.uniform(300, 900), 80),
            (rng.uniform(900, 2500), 120),
            (rng.uniform(2400, 3500), 200),
        ):
            r = np.exp(-np.pi * bw / sr)
            th = 2 * np.pi * fc / sr
            y = y + lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], src) * 2
        env = np.sin(np.pi * np.linspace(0, 1, seg_n)) ** 0.7
        out[pos : pos + seg_n] = y * env
        pos += seg_n
        if rng.random() < 0.15:
            pos += int(rng.uniform(0.1, 0.5) * sr)  # pause
    return _peak_normalise(out, 0.7).astype(np.float32)


def make_speech(i: int, duration_s: int, use_espeak: bool) -> np.ndarray:
    """Return the i-th speech item: float32 mono, exactly ``duration_s`` at 16 kHz."""
    n = duration_s * SPEECH_SR
    if not use_espeak:
        return _synthetic_speech(i, n)
    rng = random.Random(f"speech-{i}")
    voice = rng.choice(VOICES) + rng.choice(VARIANTS)
    speed = rng.randint(120, 230)
    pitch = rng.randint(20, 80)
    gap = rng.randint(0, 8)
    lead = np.zeros(int(rng.uniform(0.0, 0.4) * SPEECH_SR), dtype=np.float32)
    parts: list[np.ndarray] = [lead]
    have = lead.size
    for _ in range(6):  # bounded: keep adding sentences until >= duration
        if have >= n:
            break
        n_words = int(duration_s * speed / 60 * 1.2) + 4
        y = _espeak_clip(_sentence(rng, n_words), voice, speed, pitch, gap)
        parts.append(y)
        parts.append(np.zeros(int(rng.uniform(0.1, 0.5) * SPEECH_SR), dtype=np.float32))
        have += y.size + parts[-1].size
    y = np.concatenate(parts)[:n]
    if y.size < n:
        y = np.pad(y, (0, n - y.size))
    return y.astype(np.float32)


# --------------------------------------------------------------------------- music

_CHORDS = (
    (0, 4, 7),
    (0, 3, 7),
    (0, 4, 7, 11),
    (0, 3, 7, 10),
    (0, 4, 7, 10),
    (0, 5, 7),
    (0, 3, 6),
    (0, 4, 8),
)


def make_music(i: int, duration_s: int, sr: int = MUSIC_SR) -> np.ndarray:
    """Synthetic stereo chord progression + bass + noise percussion, float32 (n, 2)."""
    rng = np.random.default_rng([2, i])
    n = duration_s * sr
    out = np.zeros((n, 2), dtype=np.float64)
    bpm = float(rng.uniform(70, 160))
    beat = 60.0 / bpm
    chord_len = beat * int(rng.choice([2, 4, 8]))
    key = int(rng.integers(-9, 3))  # semitones relative to A4
    n_harm = int(rng.integers(3, 9))
    decay = float(rng.uniform(0.3, 3.0))
    t0 = 0.0
    while t0 < duration_s:
        a = int(t0 * sr)
        b = min(n, int((t0 + chord_len) * sr))
        t = np.arange(b - a) / sr
        root = key + int(rng.choice([0, 2, 4, 5, 7, 9]))
        notes = [root + iv for iv in _CHORDS[int(rng.integers(len(_CHORDS)))]] + [root - 12]
        env = np.minimum(t / 0.01, 1.0) * np.exp(-t / decay)
        for k, st in enumerate(notes):
            f = 440.0 * 2 ** (st / 12) * (1 + 0.002 * rng.standard_normal())
            pan = float(rng.uniform(0.15, 0.85))
            tone = np.zeros_like(t)
            for h in range(1, n_harm + 1):
                if f * h < sr / 2 - 1000:
                    tone += np.sin(2 * np.pi * f * h * t + rng.uniform(0, 2 * np.pi)) / h**1.3
            tone *= env * (0.6 if k == len(notes) - 1 else 0.3)
            out[a:b, 0] += tone * (1 - pan)
            out[a:b, 1] += tone * pan
        t0 += chord_len
    # percussion: decaying noise bursts on beats (kick-ish low sine on downbeats)
    nb = int(duration_s / beat)
    hit_len = int(0.15 * sr)
    ht = np.arange(hit_len) / sr
    for k in range(nb):
        a = int(k * beat * sr)
        m = min(hit_len, n - a)
        if m <= 0:
            break
        hit = rng.standard_normal(m) * np.exp(-ht[:m] / 0.02) * 0.25
        if k % 4 == 0:
            hit += np.sin(2 * np.pi * 55 * ht[:m]) * np.exp(-ht[:m] / 0.08) * 0.8
        out[a : a + m, 0] += hit
        out[a : a + m, 1] += hit
    out += 1e-3 * rng.standard_normal(out.shape)
    return _peak_normalise(out).astype(np.float32)


# --------------------------------------------------------------------------- clips


def make_clip(
    i: int, duration_s: int, speech: Callable[[int], np.ndarray] | None
) -> tuple[np.ndarray, int]:
    """The i-th 1 s clip: a mixture of 2-4 of tones/chirp/noise/AM/clicks/speech slice."""
    rng = np.random.default_rng([3, i])
    sr = CLIP_RATES[i % len(CLIP_RATES)]
    n = duration_s * sr
    t = np.arange(n) / sr
    kinds = ["tone", "chirp", "noise", "am", "clicks", "speech"]
    chosen = rng.choice(kinds, size=int(rng.integers(2, 5)), replace=False)
    y = np.zeros(n)
    for kind in chosen:
        g = float(rng.uniform(0.1, 1.0))
        if kind == "tone":
            for _ in range(int(rng.integers(1, 4))):
                y += g * np.sin(2 * np.pi * rng.uniform(50, sr / 2.5) * t + rng.uniform(0, 6))
        elif kind == "chirp":
            f0, f1 = rng.uniform(50, sr / 2.5, size=2)
            y += g * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * duration_s)))
        elif kind == "noise":
            w = rng.standard_normal(n)
            if rng.random() < 0.5:  # crude pink-ish: integrate and high-pass
                w = np.cumsum(w)
                w -= np.convolve(w, np.ones(64) / 64, mode="same")
                w /= np.std(w) + 1e-9
            y += 0.3 * g * w
        elif kind == "am":
            y += (
                g
                * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
                * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 20) * t))
            )
        elif kind == "clicks":
            y[:: int(sr / rng.uniform(2, 40))] += g * 2
        elif kind == "speech" and speech is not None:
            s = speech(int(rng.integers(0, 1 << 30)))
            if sr != SPEECH_SR:
                s = soxr.resample(s, SPEECH_SR, sr, quality="HQ")
            off = int(rng.integers(0, max(1, s.size - n)))
            seg = s[off : off + n]
            y[: seg.size] += g * seg / (np.max(np.abs(seg)) + 1e-9)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
    return _peak_normalise(y * fade).astype(np.float32), sr


# --------------------------------------------------------------------------- long


def write_long(path: Path, minutes: int, speech_files: list[Path]) -> None:
    """Write a ``minutes``-long 16 kHz mono FLAC in 10 s blocks (bounded memory).

    Each block is one speech file (cycled, random gain, sometimes reversed) plus a
    quiet tone whose pitch changes per block; roughly every 7th block is tones only.
    """
    rng = np.random.default_rng([4, minutes])
    block_s = 10
    n_blocks = minutes * 60 // block_s
    bn = block_s * LONG_SR
    t = np.arange(bn) / LONG_SR
    tmp = path.with_name(f".{path.name}.tmp")
    with sf.SoundFile(tmp, "w", LONG_SR, 1, subtype="PCM_16", format="FLAC") as f:
        for b in range(n_blocks):
            y = np.zeros(bn)
            if speech_files and b % 7 != 6:
                s, sr = sf.read(speech_files[b % len(speech_files)], dtype="float64")
                s = s[:bn]
                if rng.random() < 0.3:
                    s = s[::-1]
                y[: s.size] += s * rng.uniform(0.4, 1.0)
            f0 = rng.uniform(80, 3000)
            y += rng.uniform(0.01, 0.1) * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6))
            y += 1e-3 * rng.standard_normal(bn)
            f.write(np.clip(y, -0.99, 0.99).astype(np.float32))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- build


def corpus_dir(scale: str) -> Path:
    """Directory of the corpus for ``scale`` ("full" or "quick")."""
    return CORPUS_ROOT / scale


def expected_spec(scale: str, speech_source: str) -> dict[str, Any]:
    """The spec recorded in STAMP.json; a mismatch triggers a rebuild."""
    return {
        "version": CORPUS_VERSION,
        "scale": scale,
        **SCALES[scale],
        "speech_source": speech_source,
    }


def _file_list(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


def _digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_stamp(scale: str) -> dict[str, Any] | None:
    """Return the parsed STAMP.json of ``scale`` or None."""
    try:
        return json.loads((corpus_dir(scale) / "STAMP.json").read_text())
    except (OSError, ValueError):
        return None


def _parallel(fn: Callable[[int], None], n: int, workers: int) -> None:
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for _ in ex.map(fn, range(n)):
            pass


def build(scale: str = "full", force: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Build (or reuse) the corpus for ``scale`` and return its stamp.

    The stamp contains the spec plus, per subset, the file count, total audio seconds and
    a content digest.
    """
    ver = ensure_espeak()
    speech_source = f"espeak-ng {ver}" if ver else "synthetic"
    spec = expected_spec(scale, speech_source)
    root = corpus_dir(scale)
    stamp = read_stamp(scale)
    if (
        not force
        and stamp is not None
        and stamp.get("spec") == spec
        and all((root / s).is_dir() for s in SUBSETS)
    ):
        return stamp
    if ver is None:
        print(
            "corpus: NOTICE: espeak-ng unavailable; using synthetic speech-like signals "
            "instead of espeak-ng speech.",
            file=sys.stderr,
        )
    t_start = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)
    for s in SUBSETS:
        (root / s).mkdir(parents=True)
    sc = SCALES[scale]
    workers = max(1, os.cpu_count() or 1)

    def log(msg: str) -> None:
        if verbose:
            print(
                f"corpus[{scale}]: {msg} ({time.perf_counter() - t_start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    def speech_one(i: int) -> None:
        y = make_speech(i, sc["speech_s"], ver is not None)
        _write_atomic(root / "speech" / f"speech_{i:04d}.wav", y, SPEECH_SR, "WAV")

    _parallel(speech_one, sc["n_speech"], workers)
    log(f"{sc['n_speech']} speech files")

    def music_one(i: int) -> None:
        y = make_music(i, sc["music_s"])
        ext, fmt = ("wav", "WAV") if i % 2 == 0 else ("flac", "FLAC")
        _write_atomic(root / "music" / f"music_{i:03d}.{ext}", y, MUSIC_SR, fmt)

    _parallel(music_one, sc["n_music"], workers)
    log(f"{sc['n_music']} music files")

    speech_files = _file_list(root / "speech")
    speech_cache: dict[int, np.ndarray] = {}

    def speech_slice(key: int) -> np.ndarray:
        k = key % len(speech_files)
        if k not in speech_cache:
            speech_cache[k] = sf.read(speech_files[k], dtype="float64")[0]
        return speech_cache[k]

    def clip_one(i: int) -> None:
        y, sr = make_clip(i, sc["clip_s"], speech_slice if speech_files else None)
        _write_atomic(root / "clips" / f"clip_{i:04d}_{sr}.wav", y, sr, "WAV")

    _parallel(clip_one, sc["n_clips"], 1)  # single thread: keeps speech_cache use deterministic
    log(f"{sc['n_clips']} clips")

    write_long(root / "long" / f"long_{sc['long_min']}min.flac", sc["long_min"], speech_files)
    log(f"{sc['long_min']}-minute long file")

    subsets: dict[str, Any] = {}
    for s in SUBSETS:
        files = _file_list(root / s)
        secs = sum(sf.info(str(p)).frames / sf.info(str(p)).samplerate for p in files)
        subsets[s] = {
            "n_files": len(files),
            "audio_s": round(secs, 6),
            "bytes": sum(p.stat().st_size for p in files),
            "digest": _digest(files),
        }
    stamp = {
        "spec": spec,
        "subsets": subsets,
        "build_s": round(time.perf_counter() - t_start, 1),
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = root / ".STAMP.json.tmp"
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    os.replace(tmp, root / "STAMP.json")
    log("done")
    return stamp


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: build the corpus and print its stamp."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10x smaller corpus")
    ap.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    args = ap.parse_args(argv)
    stamp = build("quick" if args.quick else "full", force=args.force)
    print(json.dumps(stamp, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
