#!/usr/bin/env python3
"""Baseline contenders for the melcli benchmark, each meant to run as its own process.

Modes (each prints one JSON object as the last line of stdout)::

    python bench/baselines.py decode DIR
        soundfile-read every audio file of DIR to float32 (no resampling, no downmix);
        reports in-process decode seconds ("decode only").
    python bench/baselines.py math DIR --params default,speech
        pre-decodes DIR (downmix, soxr HQ resample to the target rate: timed separately,
        *not* part of the math), then times the minimal math on one core
        (framing + window + float32 rfft + |X|^2 [+ mel matmul]) for "mel" and "stft",
        computed in blocks of frames into reused buffers (results are not kept: storing
        them is the writer's job, not part of the floor); fastest of MATH_PASSES passes.
    python bench/baselines.py librosa DIR OUTDIR --kind mel|stft|mfcc|fbank --params NAME --jobs N
        the user's loop: librosa.load + melspectrogram (|stft|^2, librosa.feature.mfcc;
        for fbank: librosa.load at 16 kHz + kaldi_native_fbank.OnlineFbank, dither 0, the
        way a Kaldi-style Python pipeline calls it) + np.save per file; --jobs 2 runs it
        through joblib.Parallel(n_jobs=2) (loky backend).
    python bench/baselines.py verify OUT.h5 DIR --kind mel|stft|mfcc|fbank --params NAME
        checks a melcli output (entry count; 3 entries against librosa), outside timing.
    python bench/baselines.py selftest DIR
        checks the minimal-math output against librosa on a few files.

Top-level imports are stdlib only so that ``run.py`` can import PARAMS cheaply and so
that the librosa loop pays its own import cost inside the timed process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

T_PROCESS_START = time.perf_counter()

if TYPE_CHECKING:
    import numpy as np

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")

#: Parameter sets: librosa defaults at the native rate, and the speech front-end.
PARAMS: dict[str, dict[str, Any]] = {
    "default": {"sr": None, "n_fft": 2048, "win_length": None, "hop_length": 512, "n_mels": 128},
    "speech": {"sr": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 80},
}


#: Kinds measured; fbank only with the speech set (Kaldi's defaults are a 16 kHz front end).
KINDS = ("mel", "stft", "mfcc", "fbank")
CONFIGS = tuple((p, k) for p in PARAMS for k in KINDS if k != "fbank" or p == "speech")


def melcli_args(params: str, kind: str) -> list[str]:
    """melcli command-line options for a parameter set (``[]`` for librosa defaults;
    fbank: Kaldi's defaults at 16 kHz)."""
    p = PARAMS[params]
    if params == "default" or kind == "fbank":
        return []
    args = [
        "--sr",
        str(p["sr"]),
        "--n-fft",
        str(p["n_fft"]),
        "--win-length",
        str(p["win_length"]),
        "--hop-length",
        str(p["hop_length"]),
    ]
    if kind in ("mel", "mfcc"):
        args += ["--n-mels", str(p["n_mels"])]
    return args


def knf_fbank(y: np.ndarray, sr: int) -> np.ndarray:
    """kaldi-native-fbank's fbank of [-1, 1] samples (scaled to int16 values), dither 0:
    (frames, 23)."""
    import kaldi_native_fbank as knf
    import numpy as np

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = sr
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(sr, (y * 32768).tolist())
    fb.input_finished()
    return np.array([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def list_audio(d: str | Path) -> list[Path]:
    """Audio files directly inside ``d``, sorted by name."""
    return sorted(
        p
        for p in Path(d).iterdir()
        if p.is_file() and p.suffix.lower() in AUDIO_EXTS and not p.name.startswith(".")
    )


def _emit(obj: dict[str, Any]) -> None:
    obj["t_process"] = time.perf_counter() - T_PROCESS_START
    print(json.dumps(obj), flush=True)


# --------------------------------------------------------------------------- (a) decode


def run_decode(directory: str) -> dict[str, Any]:
    """Read every file with soundfile to float32; return timing and audio duration."""
    import soundfile as sf

    files = list_audio(directory)
    t0 = time.perf_counter()
    audio_s = 0.0
    for p in files:
        y, sr = sf.read(p, dtype="float32")
        audio_s += y.shape[0] / sr
    t = time.perf_counter() - t0
    return {"mode": "decode", "decode_s": t, "audio_s": audio_s, "n_files": len(files)}


# --------------------------------------------------------------------------- (b) math

#: bytes of windowed frames per block (frames per block = this / (4 * n_fft)); about the
#: L2 size, which measured fastest on the 2-core EPYC dev box (64 frames at n_fft 2048).
BLOCK_BYTES = 512 * 1024
#: the math is timed this many times per process and the fastest pass is reported (a floor)
MATH_PASSES = 2


class MinimalMath:
    """Framing + window + float32 rfft + |X|^2 (+ mel matmul), one thread, in blocks."""

    def __init__(
        self,
        sr: int,
        n_fft: int,
        win_length: int | None,
        hop_length: int,
        n_mels: int,
        block: int | None = None,
    ) -> None:
        import librosa.filters
        import numpy as np
        import scipy.signal

        win_length = win_length or n_fft
        w = scipy.signal.get_window("hann", win_length, fftbins=True).astype(np.float32)
        lpad = (n_fft - win_length) // 2
        self.window = np.zeros(n_fft, dtype=np.float32)
        self.window[lpad : lpad + win_length] = w
        self.fb_t = np.ascontiguousarray(
            librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, dtype=np.float32).T
        )
        self.n_fft, self.hop = n_fft, hop_length
        self.block = block or min(1024, max(16, BLOCK_BYTES // (4 * n_fft)))
        self.n_bins = n_fft // 2 + 1

    def _blocks(self, y: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, |X|^2 block) pairs for centered, zero-padded frames of ``y``."""
        import numpy as np
        import scipy.fft

        pad = self.n_fft // 2
        yp = np.pad(y, (pad, pad))
        frames = np.lib.stride_tricks.sliding_window_view(yp, self.n_fft)[:: self.hop]
        n = 1 + y.shape[0] // self.hop
        frames = frames[:n]
        buf = np.empty((self.block, self.n_fft), dtype=np.float32)
        pw = np.empty((self.block, self.n_bins), dtype=np.float32)
        tmp = np.empty((self.block, self.n_bins), dtype=np.float32)
        for i in range(0, n, self.block):
            m = min(self.block, n - i)
            np.multiply(frames[i : i + m], self.window, out=buf[:m])
            x = scipy.fft.rfft(buf[:m], axis=1, workers=1)
            np.multiply(x.real, x.real, out=pw[:m])
            np.multiply(x.imag, x.imag, out=tmp[:m])
            pw[:m] += tmp[:m]
            yield i, pw[:m]

    def power(self, y: np.ndarray) -> np.ndarray:
        """|STFT|^2 as (n_frames, n_bins) float32."""
        import numpy as np

        out = np.empty((1 + y.shape[0] // self.hop, self.n_bins), dtype=np.float32)
        for i, p in self._blocks(y):
            out[i : i + p.shape[0]] = p
        return out

    def sink(self, y: np.ndarray, kind: str) -> float:
        """Compute |X|^2 (and the mel matmul for ``kind == "mel"``) block by block into
        reused buffers, keeping nothing: the timed "minimal math".  Returns a checksum so
        that the work cannot be skipped."""
        import numpy as np

        acc = 0.0
        mel_buf = np.empty((self.block, self.fb_t.shape[1]), dtype=np.float32)
        for _, p in self._blocks(y):
            if kind == "mel":
                np.matmul(p, self.fb_t, out=mel_buf[: p.shape[0]])
                acc += float(mel_buf[0, 0])
            else:
                acc += float(p[0, 0])
        return acc

    def mel(self, y: np.ndarray) -> np.ndarray:
        """Mel power spectrogram as (n_frames, n_mels) float32."""
        import numpy as np

        out = np.empty((1 + y.shape[0] // self.hop, self.fb_t.shape[1]), dtype=np.float32)
        for i, p in self._blocks(y):
            np.matmul(p, self.fb_t, out=out[i : i + p.shape[0]])
        return out


def _load_mono(files: list[Path]) -> list[tuple[np.ndarray, int]]:
    import numpy as np
    import soundfile as sf

    out = []
    for p in files:
        y, sr = sf.read(p, dtype="float32", always_2d=True)
        out.append((np.ascontiguousarray(y.mean(axis=1, dtype=np.float32)), sr))
    return out


def run_math(directory: str, param_names: list[str]) -> dict[str, Any]:
    """Time the minimal math per parameter set on pre-decoded, pre-resampled audio."""
    import numpy as np
    import soxr
    from threadpoolctl import threadpool_limits

    files = list_audio(directory)
    t0 = time.perf_counter()
    audio = _load_mono(files)
    res: dict[str, Any] = {
        "mode": "math",
        "n_files": len(files),
        "decode_mono_s": time.perf_counter() - t0,
        "audio_s": sum(y.shape[0] / sr for y, sr in audio),
    }
    with threadpool_limits(limits=1):
        for name in param_names:
            p = PARAMS[name]
            t0 = time.perf_counter()
            ys: list[tuple[np.ndarray, int]] = []
            for y, sr in audio:
                if p["sr"] is not None and sr != p["sr"]:
                    y = soxr.resample(y, sr, p["sr"], quality="HQ").astype(np.float32, copy=False)
                    sr = p["sr"]
                ys.append((y, sr))
            t_res = time.perf_counter() - t0
            engines: dict[int, MinimalMath] = {}
            for _, sr in ys:
                if sr not in engines:
                    engines[sr] = MinimalMath(
                        sr, p["n_fft"], p["win_length"], p["hop_length"], p["n_mels"]
                    )
                    warm = np.zeros(sr, dtype=np.float32)  # first-call costs outside timing
                    engines[sr].sink(warm, "mel")
                    engines[sr].sink(warm, "stft")
            r: dict[str, float] = {"resample_s": t_res}
            for kind in ("mel", "stft"):
                passes = []
                for _ in range(MATH_PASSES):
                    t0 = time.perf_counter()
                    for y, sr in ys:
                        engines[sr].sink(y, kind)
                    passes.append(time.perf_counter() - t0)
                r[f"{kind}_s"] = min(passes)
            res[name] = r
    return res


def run_verify(h5_path: str, directory: str, kind: str, params: str) -> dict[str, Any]:
    """Check a melcli HDF5 output: one dataset per input, and 3 entries equal librosa's.

    Expects melcli's layout (datasets under ``features/`` named by the input's relative
    path); anything else is reported as unverified rather than as a failure.
    """
    import h5py
    import librosa
    import numpy as np

    files = {p.name: p for p in list_audio(directory)}
    res: dict[str, Any] = {"mode": "verify", "n_inputs": len(files)}
    with h5py.File(h5_path, "r") as f:
        grp = f.get("features")
        if not isinstance(grp, h5py.Group):
            return {**res, "ok": None, "why": f"no 'features' group (keys {list(f)[:5]})"}
        names = sorted(grp)
        res["n_entries"] = len(names)
        picks = (
            [n for n in dict.fromkeys([names[0], names[len(names) // 2], names[-1]]) if n in files]
            if names
            else []
        )
        p = PARAMS[params]
        kw = {"n_fft": p["n_fft"], "hop_length": p["hop_length"], "win_length": p["win_length"]}
        worst = 0.0
        for name in picks:
            y, sr = librosa.load(files[name], sr=16000 if kind == "fbank" else p["sr"])
            if kind == "mel":
                ref = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=p["n_mels"], **kw)
            elif kind == "mfcc":
                ref = librosa.feature.mfcc(y=y, sr=sr, n_mels=p["n_mels"], **kw)
            elif kind == "fbank":
                ref = knf_fbank(y, int(sr)).T
            else:
                ref = np.abs(librosa.stft(y, **kw)) ** 2
            got = np.asarray(grp[name])
            if got.shape != ref.shape:
                return {**res, "ok": False, "why": f"{name}: shape {got.shape} != {ref.shape}"}
            worst = max(worst, float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) or 1.0)))
    ok = len(names) == len(files) and bool(picks) and worst <= 1e-3
    why = "" if ok else f"{len(names)} entries for {len(files)} inputs, max rel err {worst:.2g}"
    return {**res, "ok": ok, "max_rel_err": worst, "checked": len(picks), "why": why}


def run_selftest(directory: str, n: int = 3) -> dict[str, Any]:
    """Max relative error of the minimal math vs librosa on the first ``n`` files."""
    import librosa
    import numpy as np

    worst = 0.0
    for p in PARAMS.values():
        for path in list_audio(directory)[:n]:
            y, sr_f = librosa.load(path, sr=p["sr"])
            sr = int(sr_f)
            kw = {"n_fft": p["n_fft"], "hop_length": p["hop_length"], "win_length": p["win_length"]}
            e = MinimalMath(sr, p["n_fft"], p["win_length"], p["hop_length"], p["n_mels"])
            ref_m = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=p["n_mels"], **kw)
            ref_p = np.abs(librosa.stft(y, **kw)) ** 2
            for ref, got in ((ref_m, e.mel(y).T), (ref_p, e.power(y).T)):
                assert ref.shape == got.shape, (ref.shape, got.shape)
                worst = max(worst, float(np.max(np.abs(ref - got)) / np.max(np.abs(ref))))
    return {"mode": "selftest", "max_rel_err": worst, "ok": worst < 1e-4}


# --------------------------------------------------------------------------- (c), (d) librosa


def run_librosa(directory: str, outdir: str, kind: str, params: str, jobs: int) -> dict[str, Any]:
    """librosa.load + melspectrogram / |stft|^2 + np.save per file; joblib if jobs > 1."""
    import librosa
    import numpy as np

    # librosa is lazily loaded: touch what the loop uses so that t_import is meaningful.
    _ = (librosa.load, librosa.feature.melspectrogram, librosa.feature.mfcc, librosa.stft)
    t_import = time.perf_counter() - T_PROCESS_START
    p = dict(PARAMS[params])
    sr_target = p.pop("sr")
    n_mels = p.pop("n_mels")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> None:
        y, sr = librosa.load(path, sr=16000 if kind == "fbank" else sr_target)
        if kind == "mel":
            S = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=n_mels, **p)
        elif kind == "mfcc":
            S = librosa.feature.mfcc(y=y, sr=sr, n_mels=n_mels, **p)
        elif kind == "fbank":
            S = knf_fbank(y, int(sr))
        else:
            S = np.abs(librosa.stft(y, **p)) ** 2
        np.save(out / f"{path.name}.npy", S)

    files = list_audio(directory)
    t0 = time.perf_counter()
    if jobs == 1:
        for f in files:
            one(f)
    else:
        from joblib import Parallel, delayed

        Parallel(n_jobs=jobs)(delayed(one)(f) for f in files)
    return {
        "mode": "librosa",
        "kind": kind,
        "params": params,
        "jobs": jobs,
        "n_files": len(files),
        "t_import": t_import,
        "t_work": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run one baseline, print its JSON result."""
    ap = argparse.ArgumentParser(description="melcli benchmark baselines (one per process)")
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("decode")
    a.add_argument("dir")
    b = sub.add_parser("math")
    b.add_argument("dir")
    b.add_argument("--params", default=",".join(PARAMS))
    c = sub.add_parser("librosa")
    c.add_argument("dir")
    c.add_argument("outdir")
    c.add_argument("--kind", choices=KINDS, default="mel")
    c.add_argument("--params", choices=tuple(PARAMS), default="default")
    c.add_argument("--jobs", type=int, default=1)
    s = sub.add_parser("selftest")
    s.add_argument("dir")
    v = sub.add_parser("verify")
    v.add_argument("h5")
    v.add_argument("dir")
    v.add_argument("--kind", choices=KINDS, default="mel")
    v.add_argument("--params", choices=tuple(PARAMS), default="default")
    args = ap.parse_args(argv)
    if args.mode == "decode":
        _emit(run_decode(args.dir))
    elif args.mode == "math":
        _emit(run_math(args.dir, [x for x in args.params.split(",") if x]))
    elif args.mode == "librosa":
        _emit(run_librosa(args.dir, args.outdir, args.kind, args.params, args.jobs))
    elif args.mode == "verify":
        _emit(run_verify(args.h5, args.dir, args.kind, args.params))
    else:
        r = run_selftest(args.dir)
        _emit(r)
        return 0 if r["ok"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
