#!/usr/bin/env python3
"""Compute golden outputs of the reference front-ends that are too heavy for CI.

torch, torchaudio, openai-whisper and lhotse are not installed by ``make test`` (torch
alone is hundreds of MB). This script runs them once, on short real-audio excerpts
cut from ``sample_audio/``, and writes what they computed next to the inputs it used:

- ``inputs/*.flac``: the excerpts (1 s, native rate and channel count);
- ``golden.npz``: one array per ``"<reference>/<input>"``, in the reference's own
  orientation (see ``golden.json``);
- ``golden.json``: the exact call behind each reference, the package versions, the
  inputs' SHA-256, rate, channels and length, and each array's shape.

The tests (tests/test_presets.py) compare melcli against these arrays; kaldi-native-fbank
and librosa are light enough to be called live there instead. Nothing here is computed by
melcli or by a re-implementation: every array is the reference library's own output.

Set-up (a separate venv, not the project's; see tests/reference/README.md)::

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0           # the CPU wheel
    /tmp/refenv/bin/pip install --no-deps torchaudio==2.11.0
    /tmp/refenv/bin/pip install openai-whisper==20250625 lhotse==1.33.0 \\
        kaldi-native-fbank librosa==0.11.0 soundfile
    # the torchaudio wheel served here is a CUDA build: its compiled parts fail to load
    # with CPU torch; transforms, functional and compliance are pure Python
    mkdir /tmp/ta-so && mv /tmp/refenv/lib/python3.11/site-packages/torchaudio/lib/*.so /tmp/ta-so/
    /tmp/refenv/bin/python tests/reference/make_golden.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
#: name -> (source in sample_audio/, start second, subtype of the excerpt)
EXCERPTS: dict[str, tuple[str, float, str]] = {
    "hello": ("speech/hello.wav", 0.5, "PCM_16"),  # 16 kHz mono speech
    "numbers": ("speech/numbers.flac", 0.3, "PCM_16"),  # 16 kHz mono speech
    "arpeggio": ("music/arpeggio.ogg", 0.5, "PCM_24"),  # 22.05 kHz: sr // 2 is odd
    "chords": ("music/chords.flac", 1.0, "PCM_16"),  # 44.1 kHz stereo
    "pad": ("music/pad_24bit.wav", 0.5, "PCM_24"),  # 48 kHz stereo, 24 bit
}
SECONDS = 1.0
WHISPER_INPUTS = ("hello", "numbers")  # Whisper works at 16 kHz: no resampler in between


def make_inputs() -> dict[str, Path]:
    """Cut the excerpts (deterministic FLAC files) and return their paths."""
    (HERE / "inputs").mkdir(exist_ok=True)
    paths = {}
    for name, (src, start, subtype) in EXCERPTS.items():
        y, sr = sf.read(ROOT / "sample_audio" / src, dtype="float32", always_2d=True)
        a = int(start * sr)
        path = HERE / "inputs" / f"{name}.flac"
        sf.write(path, y[a : a + int(SECONDS * sr)], sr, subtype=subtype)
        paths[name] = path
    return paths


def load(path: Path) -> tuple[np.ndarray, int]:
    """(channels, n) float32 as soundfile decodes it, which is what melcli reads."""
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(y.T), sr


def main() -> int:
    import kaldi_native_fbank as knf
    import torch
    import torchaudio.functional as F
    import torchaudio.transforms as T
    import whisper
    from lhotse import Fbank, FbankConfig

    torch.set_num_threads(1)
    paths = make_inputs()
    arrays: dict[str, np.ndarray] = {}
    calls = {
        "torchaudio_mel": "torchaudio.transforms.MelSpectrogram(sample_rate=sr)(waveform)"
        " -> (channels, 128, frames)",
        "torchaudio_mfcc": "torchaudio.transforms.MFCC(sample_rate=sr)(waveform)"
        " -> (channels, 40, frames)",
        "whisper_80": "whisper.log_mel_spectrogram(audio, 80, padding=480000)[:, :N // 160]"
        " -> (80, frames); 16 kHz mono inputs only",
        "whisper_128": "whisper.log_mel_spectrogram(audio, 128, padding=480000)[:, :N // 160]"
        " -> (128, frames); 16 kHz mono inputs only",
        "lhotse_fbank": "lhotse.Fbank(FbankConfig(sampling_rate=sr)).extract(channel, sr)"
        " per channel -> (channels, frames, 80)",
        "kaldi_fbank_deltas": "knf.OnlineFbank (dither 0, Kaldi defaults otherwise, input x"
        " 32768) -> (23, frames); torchaudio.functional.compute_deltas(win_length=5) applied"
        " once and twice; stacked [static; delta; delta-delta] per channel"
        " -> (channels, 69, frames)",
    }
    inputs: dict[str, Any] = {}
    for name, path in paths.items():
        y, sr = load(path)
        inputs[name] = {
            "file": f"inputs/{path.name}",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "sr": sr,
            "channels": y.shape[0],
            "samples": y.shape[1],
        }
        wave = torch.from_numpy(y)
        arrays[f"torchaudio_mel/{name}"] = T.MelSpectrogram(sample_rate=sr)(wave).numpy()
        arrays[f"torchaudio_mfcc/{name}"] = T.MFCC(sample_rate=sr)(wave).numpy()
        if name in WHISPER_INPUTS:
            n = y.shape[1]
            for n_mels in (80, 128):
                mel = whisper.log_mel_spectrogram(wave[0], n_mels, padding=whisper.audio.N_SAMPLES)
                arrays[f"whisper_{n_mels}/{name}"] = mel[:, : n // 160].numpy()
        fbank = Fbank(FbankConfig(sampling_rate=sr))
        arrays[f"lhotse_fbank/{name}"] = np.stack([fbank.extract(c, sr) for c in y])
        stacked = []
        for c in y:
            opts = knf.FbankOptions()
            opts.frame_opts.dither = 0.0
            opts.frame_opts.samp_freq = sr
            online = knf.OnlineFbank(opts)
            online.accept_waveform(sr, (c * 32768).tolist())
            online.input_finished()
            feats = np.array([online.get_frame(i) for i in range(online.num_frames_ready)])
            static = torch.from_numpy(feats.T.astype(np.float32))
            d1 = F.compute_deltas(static, win_length=5)
            d2 = F.compute_deltas(d1, win_length=5)
            stacked.append(torch.cat([static, d1, d2]).numpy())
        arrays[f"kaldi_fbank_deltas/{name}"] = np.stack(stacked)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    np.savez_compressed(HERE / "golden.npz", **arrays)
    packages = ["torch", "torchaudio", "openai-whisper", "lhotse", "kaldi-native-fbank"]
    meta = {
        "made_by": "tests/reference/make_golden.py",
        "versions": {p: version(p) for p in packages},
        "calls": calls,
        "inputs": inputs,
        "arrays": {k: list(v.shape) for k, v in sorted(arrays.items())},
    }
    (HERE / "golden.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = (HERE / "golden.npz").stat().st_size + sum(p.stat().st_size for p in paths.values())
    print(f"{len(arrays)} arrays, {size / 1e6:.2f} MB with the inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
