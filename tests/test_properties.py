"""Property tests (issue 3, section 7).

(a) Random valid parameter sets x random short signals: `melcli.features.compute`
    never crashes, gives the documented shape, and matches librosa itself
    (``librosa.stft`` / ``librosa.feature.melspectrogram`` on the same array) within
    the v1 contract: max |melcli - librosa| <= 1e-5 * max |librosa| on linear
    values, 1e-3 dB after db scaling (and the same relative error, 1e-3 dB ~
    2.3e-4, after log scaling).
(b) Random bytes written as files with audio suffixes (pure noise, and real audio
    files truncated / overwritten / spliced): `melcli.pipeline.extract` never
    raises and always returns either a recorded failure (never an "internal
    error") or valid features; a CLI run over a handful of such files exits 1 or
    3 without a traceback, one skip line per failure.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import librosa
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from melcli import features
from melcli.cli import cli
from melcli.discover import Source
from melcli.errors import DecodeError
from melcli.params import FeatureParams
from melcli.pipeline import extract

REL_TOL = 1e-5  # of max |librosa|, linear values
DB_TOL = 1e-3  # dB
LOG_TOL = DB_TOL * math.log(10) / 10  # the same relative error, in natural-log units

RATES = (8000, 11025, 16000, 22050, 44100, 48000)
#: The eight windows of the lecture (rectangular under both of its names).
PLAIN_WINDOWS = ("rectangular", "boxcar", "hann", "hamming", "blackman", "bartlett", "flattop")
#: Cap on frames x n_fft per example, so 40 examples stay well under a few seconds.
WORK = 1_500_000


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A directory for the files hypothesis examples write (one per example)."""
    with tempfile.TemporaryDirectory(prefix="melcli-props-") as d:
        yield Path(d)


_counter = itertools.count()


# ---------------------------------------------------------------------------
# (a) parameters x signals -> shape and librosa parity
# ---------------------------------------------------------------------------
@st.composite
def windows(draw: st.DrawFn, win_length: int) -> str:
    name = draw(st.sampled_from((*PLAIN_WINDOWS, "gaussian", "kaiser")))
    if name == "gaussian":  # std in samples
        std = draw(st.floats(0.5, max(1.0, 1.5 * win_length), allow_nan=False))
        return f"gaussian:{std!r}"
    if name == "kaiser":
        return f"kaiser:{draw(st.floats(0.0, 30.0, allow_nan=False))!r}"
    return name


@st.composite
def feature_cases(draw: st.DrawFn) -> tuple[FeatureParams, np.ndarray, int]:
    """A valid FeatureParams, a signal (channels, n) float32 and its rate."""
    kind = draw(st.sampled_from(("stft", "mel")))
    sr = draw(st.sampled_from(RATES))
    n_fft = draw(st.one_of(st.sampled_from((256, 400, 401, 512, 1024, 2048)), st.integers(2, 2048)))
    win_length = draw(st.one_of(st.just(n_fft), st.integers(1, n_fft)))
    hop = draw(st.one_of(st.just(max(1, win_length // 4)), st.integers(1, 2 * n_fft)))
    center = draw(st.booleans())
    scale = draw(st.sampled_from(("linear", "db", "log")))
    kw: dict[str, Any] = {
        "kind": kind, "n_fft": n_fft, "win_length": win_length, "hop_length": hop,
        "window": draw(windows(win_length)), "center": center,
        "pad_mode": draw(st.sampled_from(("constant", "reflect", "edge"))),
        "power": draw(st.sampled_from((1.0, 2.0))), "scale": scale,
        "top_db": draw(st.one_of(st.none(), st.floats(0.0, 120.0))) if scale == "db" else None,
        "dtype": draw(st.sampled_from(("float32", "float64"))),
        "mono": draw(st.booleans()),
    }  # fmt: skip
    if kind == "mel":
        nyquist = sr / 2
        fmin = draw(st.one_of(st.just(0.0), st.floats(0.0, 0.9 * nyquist)))
        fmax = draw(st.one_of(st.none(), st.floats(fmin + 1.0, nyquist)))
        kw |= {
            "n_mels": draw(st.one_of(st.sampled_from((40, 80, 128)), st.integers(1, 256))),
            "fmin": fmin, "fmax": fmax,
            "mel_scale": draw(st.sampled_from(("slaney", "htk"))),
            "norm": draw(st.sampled_from(("slaney", "none"))),
        }  # fmt: skip
    params = FeatureParams(**kw)
    channels = 1 if params.mono else draw(st.integers(1, 3))
    # signal length: enough frames to be interesting, few enough to stay fast
    max_n = max(1, min(6000, WORK * hop // n_fft))
    low = 1 if center else max(1, n_fft - 64)  # some too short without --center
    n = draw(st.integers(low, max(low, max_n if center else n_fft + max_n)))
    y = draw(signals(channels, n, sr))
    return params, y, sr


@st.composite
def signals(draw: st.DrawFn, channels: int, n: int, sr: int) -> np.ndarray:
    """Noise, tones, silence, impulses, DC, tiny and full-scale signals."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(("noise", "tone", "zeros", "impulse", "dc", "tiny", "clipped")))
    if kind == "zeros":
        y = np.zeros((channels, n))
    elif kind == "impulse":
        y = np.zeros((channels, n))
        y[:, rng.integers(0, n)] = rng.uniform(-1, 1)
    elif kind == "dc":
        y = np.full((channels, n), rng.uniform(-1, 1))
    elif kind == "tone":
        f = rng.uniform(0, sr / 2, size=(channels, 1))
        y = rng.uniform(0.01, 1) * np.sin(2 * np.pi * f * np.arange(n) / sr + rng.uniform(0, 6))
    else:
        amp = {"noise": rng.uniform(0.01, 1), "tiny": 1e-6, "clipped": 1.0}[kind]
        y = amp * rng.uniform(-1, 1, size=(channels, n))
        if kind == "clipped":
            y = np.sign(y)
    return np.ascontiguousarray(y, dtype=np.float32)


def _librosa_window(window: str) -> str | tuple[str, float]:
    name, _, param = window.partition(":")
    name = "boxcar" if name == "rectangular" else name
    return (name, float(param)) if param else name


def librosa_reference(
    y: np.ndarray, sr: int, raw: dict[str, Any], *, prepad: bool = False
) -> np.ndarray:
    """The contract, from librosa, on the same float32 array.

    ``prepad``: pad the whole signal by n_fft // 2 on both sides with ``pad_mode``
    first and call librosa with center=False: librosa's documented meaning of
    ``center=True``, without its head/tail split-padding shortcut.
    """
    if prepad and raw["center"]:
        half = raw["n_fft"] // 2
        y = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(half, half)], mode=raw["pad_mode"])
        raw = {**raw, "center": False}
    stft_args = {
        "n_fft": raw["n_fft"], "hop_length": raw["hop_length"], "win_length": raw["win_length"],
        "window": _librosa_window(raw["window"]), "center": raw["center"],
        "pad_mode": raw["pad_mode"],
    }  # fmt: skip
    with warnings.catch_warnings():
        # expected: n_fft longer than a centred short signal, and mel filterbanks
        # with empty filters (n_mels too high for n_fft). Anything else stays an error.
        warnings.filterwarnings("ignore", r"n_fft=\d+ is too large", UserWarning)
        warnings.filterwarnings("ignore", r"Empty filters detected", UserWarning)
        if raw["kind"] == "stft":
            out = np.abs(librosa.stft(y, **stft_args)) ** raw["power"]
        else:
            out = librosa.feature.melspectrogram(
                y=y, sr=sr, **stft_args, power=raw["power"], n_mels=raw["n_mels"],
                fmin=raw["fmin"], fmax=raw["fmax"], htk=raw["mel_scale"] == "htk",
                norm=None if raw["norm"] == "none" else "slaney",
            )  # fmt: skip
    if raw["scale"] == "db":
        to_db = librosa.power_to_db if raw["power"] == 2.0 else librosa.amplitude_to_db
        out = to_db(out, ref=1.0, amin=raw["amin"], top_db=raw["top_db"])
    elif raw["scale"] == "log":
        out = np.log(np.maximum(out, raw["amin"]))
    return out


def expected_shape(params: FeatureParams, channels: int, n: int) -> tuple[int, ...]:
    """Documented: bins x (1 + n // hop) with center, 1 + (n - n_fft) // hop without.

    With center the signal is padded by n_fft // 2 on both sides (librosa), so for
    an odd n_fft the padded length is n + n_fft - 1 and librosa gives
    1 + (n - 1) // hop frames; the documented formula holds for even n_fft only.
    """
    bins = params.n_mels if params.kind == "mel" else 1 + params.n_fft // 2
    if params.center:
        padded = n + 2 * (params.n_fft // 2)
        frames = 1 + (padded - params.n_fft) // params.hop_length
        if params.n_fft % 2 == 0:
            assert frames == 1 + n // params.hop_length  # the README's formula
    else:
        frames = 1 + (n - params.n_fft) // params.hop_length
    return (bins, frames) if params.mono else (channels, bins, frames)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feature_cases())
# one sample, edge padding: a DC frame, all of whose energy is below fmin (found by hypothesis)
@example((FeatureParams(kind="mel", n_fft=256, hop_length=64, window="hamming", pad_mode="edge",
                        power=1.0, n_mels=40, fmin=32.0),
          np.array([[-0.2949456]], dtype=np.float32), 8000))  # fmt: skip
def test_features_match_librosa(case: tuple[FeatureParams, np.ndarray, int]) -> None:
    params, y, sr = case
    channels, n = y.shape
    if not params.center and n < params.n_fft:
        with pytest.raises(DecodeError, match="too short"):
            features.compute(y, sr, params)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # melcli itself must not warn per file
        got = features.compute(y, sr, params)
    assert got.shape == expected_shape(params, channels, n)
    assert got.dtype == np.dtype(params.dtype)
    assert np.isfinite(got).all()

    signal = y if channels > 1 else y[0]
    ref = librosa_reference(signal, sr, params.to_dict())
    ref = ref[None] if not params.mono and ref.ndim == 2 else ref
    assert ref.shape == got.shape, (ref.shape, got.shape)
    floor = spectrum_scale(signal, sr, params)
    err = parity_error(got, ref, params, floor)
    if err > 1 and params.center and params.pad_mode == "reflect":
        # librosa.stft(center=True) pads a short tail slice instead of the whole
        # signal; with 'reflect' and a hop above n_fft / 2 (or n_fft = 2) that
        # reflection differs from reflecting the whole signal, which melcli does.
        # Then librosa disagrees with its own definition of centring:
        full = librosa_reference(signal, sr, params.to_dict(), prepad=True)
        full = full[None] if not params.mono and full.ndim == 2 else full
        assert parity_error(ref, full, params, floor) > 1, (
            "librosa agrees with itself: melcli is off"
        )
        err = parity_error(got, full, params, floor)
    assert err <= 1, f"error {err:.3g} x tolerance ({params.scale})"


def spectrum_scale(signal: np.ndarray, sr: int, params: FeatureParams) -> float:
    """What librosa's mel filterbank makes of the STFT's peak: the scale of a mel
    spectrogram's rounding noise. When every band lies where the spectrum is
    (analytically) zero, e.g. a DC frame with fmin above the first bin, both
    libraries output noise far below their own peak; it is noise of this size."""
    if params.kind != "mel":
        return 0.0
    raw = params.to_dict()
    stft_args = {
        "n_fft": raw["n_fft"], "hop_length": raw["hop_length"], "win_length": raw["win_length"],
        "window": _librosa_window(raw["window"]), "center": raw["center"],
        "pad_mode": raw["pad_mode"],
    }  # fmt: skip
    norm = None if raw["norm"] == "none" else "slaney"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"n_fft=\d+ is too large", UserWarning)
        warnings.filterwarnings("ignore", r"Empty filters detected", UserWarning)
        spec = np.abs(librosa.stft(signal, **stft_args)) ** raw["power"]
        basis = librosa.filters.mel(
            sr=sr, n_fft=raw["n_fft"], n_mels=raw["n_mels"], fmin=raw["fmin"],
            fmax=raw["fmax"], htk=raw["mel_scale"] == "htk", norm=norm,
        )  # fmt: skip
    return float(spec.max()) * float(basis.sum(axis=1).max()) if spec.size else 0.0


def parity_error(
    got: np.ndarray, ref: np.ndarray, params: FeatureParams, floor: float = 0.0
) -> float:
    """Max |got - ref| as a multiple of the contract's tolerance (<= 1 passes).

    Linear values: relative to the larger of librosa's peak and ``floor``
    (`spectrum_scale`)."""
    err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    if params.scale == "db":
        return err / DB_TOL
    if params.scale == "log":
        return err / LOG_TOL
    peak = max(float(np.max(np.abs(ref))), floor)
    return err / (REL_TOL * peak) if peak > 0 else (0.0 if err == 0 else math.inf)


# a few fixed corners hypothesis might not draw, run as plain examples
@pytest.mark.parametrize(
    "kw, n",
    [
        ({"kind": "stft", "n_fft": 2, "win_length": 1, "hop_length": 1, "center": False}, 2),
        ({"kind": "stft", "n_fft": 2048, "hop_length": 4096, "center": True}, 1),
        ({"kind": "mel", "n_fft": 64, "n_mels": 256, "window": "kaiser:0.0"}, 500),
        ({"kind": "mel", "n_fft": 512, "fmin": 7999.0, "window": "gaussian:0.5"}, 900),
        ({"kind": "stft", "n_fft": 300, "center": False, "pad_mode": "reflect"}, 300),
        # odd n_fft, centred, n a multiple of hop: librosa has 1 + (n - 1) // hop frames
        ({"kind": "stft", "n_fft": 401, "hop_length": 100, "center": True}, 1000),
        ({"kind": "mel", "n_fft": 3, "hop_length": 1, "center": True}, 5),
    ],
)
def test_parameter_corners(kw: dict[str, Any], n: int) -> None:
    params = FeatureParams(**kw)
    y = np.random.default_rng(n).uniform(-1, 1, (1, n)).astype(np.float32)
    got = features.compute(y, 16000, params)
    assert got.shape == expected_shape(params, 1, n)
    ref = librosa_reference(y[0], 16000, params.to_dict())
    assert parity_error(got, ref, params) <= 1


# ---------------------------------------------------------------------------
# (b) random bytes as audio files
# ---------------------------------------------------------------------------
SUFFIXES = ("wav", "flac", "mp3", "ogg", "aiff", "au", "caf", "w64", "opus")


def _real_files() -> dict[str, bytes]:
    """Small genuine files of several containers, in memory, to corrupt."""
    y = (0.5 * np.sin(np.arange(700) / 7.0)).astype(np.float32)
    st2 = np.stack([y, y[::-1]], axis=1)
    out = {}
    for name, fmt, subtype, data in (
        ("wav", "WAV", "PCM_16", y), ("wav", "WAV", "FLOAT", st2), ("flac", "FLAC", "PCM_24", st2),
        ("ogg", "OGG", "VORBIS", y), ("aiff", "AIFF", "PCM_16", y), ("au", "AU", "ULAW", y),
        ("caf", "CAF", "ALAC_16", y), ("w64", "W64", "DOUBLE", y),
    ):  # fmt: skip
        buf = io.BytesIO()
        sf.write(buf, data, 16000, format=fmt, subtype=subtype)
        out[f"{name}-{subtype}"] = buf.getvalue()
    return out


REAL = _real_files()


def _float_wav_with_first_frame(left: float, right: float) -> bytes:
    """The stereo float WAV of `REAL` with its first frame's two samples replaced."""
    data = bytearray(REAL["wav-FLOAT"])
    at = data.index(b"data") + 8
    data[at : at + 8] = np.array([left, right], dtype="<f4").tobytes()
    return bytes(data)


#: Regression examples (mangled real files hypothesis found): +Inf and -Inf in the
#: two channels of one frame (the downmix makes a NaN, with a numpy warning), and
#: huge finite samples (legal in a float WAV) that overflow float32 in |X|**2.
INF_PAIR = _float_wav_with_first_frame(np.inf, -np.inf)
HUGE_PAIR = _float_wav_with_first_frame(3e38, 3e38)


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Pure noise, or a real file truncated, overwritten in places, or spliced."""
    how = draw(st.sampled_from(("random", "truncate", "overwrite", "splice", "header-only")))
    if how == "random":
        return draw(st.binary(max_size=3000))
    base = REAL[draw(st.sampled_from(sorted(REAL)))]
    if how == "truncate":
        return base[: draw(st.integers(0, len(base)))]
    if how == "header-only":  # the first bytes of a real header, then noise
        cut = draw(st.integers(4, 80))
        return base[:cut] + draw(st.binary(max_size=500))
    data = bytearray(base)
    if how == "overwrite":  # mostly in the header, where it hurts
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.one_of(st.integers(0, min(100, len(data) - 1)),
                                 st.integers(0, len(data) - 1)))  # fmt: skip
            data[pos] = draw(st.integers(0, 255))
        return bytes(data)
    pos = draw(st.integers(0, len(data)))
    return bytes(data[:pos]) + draw(st.binary(min_size=1, max_size=200)) + bytes(data[pos:])


EXTRACT_PARAMS = (
    FeatureParams(kind="mel"),
    FeatureParams(kind="stft", n_fft=256, center=False, mono=False, scale="db"),
    FeatureParams(kind="mel", n_fft=512, n_mels=40, fmax=4000.0, scale="log", mono=False),
    FeatureParams(kind="stft", n_fft=128, complex=True),
)


def _write(scratch: Path, content: bytes, suffix: str) -> Path:
    p = scratch / f"f{next(_counter)}.{suffix}"
    p.write_bytes(content)
    return p


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
@given(
    content=hostile_bytes(),
    suffix=st.sampled_from(SUFFIXES),
    params=st.sampled_from(EXTRACT_PARAMS),
)
@example(content=INF_PAIR, suffix="wav", params=EXTRACT_PARAMS[0])
@example(content=HUGE_PAIR, suffix="wav", params=EXTRACT_PARAMS[0])
@example(content=HUGE_PAIR, suffix="wav", params=EXTRACT_PARAMS[2])
def test_extract_never_raises(
    scratch: Path, content: bytes, suffix: str, params: FeatureParams
) -> None:
    path = _write(scratch, content, suffix)
    src = Source(path.name, str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # recorded, not raised: extract runs as in the CLI
        res = extract(src, params)
    assert res.source == src
    assert (res.failure is None) != (res.meta is None), res
    if res.failure is not None:
        reason = res.failure.reason
        assert res.failure.key == src.key and res.failure.source == src.path
        assert reason and "\n" not in reason, reason
        assert not reason.startswith("internal error"), reason
        assert res.data is None
    else:
        meta, data = res.meta, res.data
        assert meta is not None and data is not None
        assert meta.n_samples > 0 and meta.sample_rate > 0 and meta.channels > 0
        assert tuple(data.shape) == meta.shape and str(data.dtype) == meta.dtype
        ch = () if params.mono else (meta.channels,)
        assert data.shape == (*ch, params.n_bins, params.n_frames(meta.n_samples))
        assert np.isfinite(data).all(), "non-finite features from a file without NaN/Inf"
    # a bad file gets one clear line from melcli, not Python warnings on stderr
    assert not [str(w.message) for w in caught], [
        f"{w.category.__name__}: {w.message}" for w in caught
    ]
    path.unlink()


def _show_on_stderr(message: Any, category: Any, filename: str, lineno: int, *a: Any) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno))


def _invoke(args: list[str], cwd: Path) -> Any:
    """``melcli.cli.cli`` in-process; warnings are printed on the (captured) stderr
    as in the real executable, not raised as pytest's filterwarnings=error would."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_on_stderr
            res = CliRunner().invoke(cli, args)
    finally:
        os.chdir(old)
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        pytest.fail("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return res


def check_cli_run(
    code: int, stdout: str, stderr: str, out: Path, n_inputs: int, good: set[str]
) -> None:
    """Exit 1 (nothing could be processed) or 3 (written, some failed); one
    ``melcli: skipped`` line per failure and nothing but melcli's own lines."""
    assert "Traceback" not in stderr
    assert code in (1, 3), stderr
    assert [ln for ln in stderr.splitlines() if not ln.startswith("melcli: ")] == [], stderr
    skipped = [ln for ln in stderr.splitlines() if ln.startswith("melcli: skipped ")]
    if code == 1:
        assert not good
        assert not out.exists() and not out.with_suffix(".json").exists()
        assert len(skipped) == n_inputs, stderr
        assert "nothing written" in stderr
        return
    assert stdout.strip() == str(out)
    man = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert man["failures"], man
    assert sorted(skipped) == sorted(
        f"melcli: skipped {f['key']}: {f['reason']}" for f in man["failures"]
    )
    assert len(man["entries"]) + len(man["failures"]) == n_inputs
    assert good <= {e["key"] for e in man["entries"]}
    for f in man["failures"]:
        assert f["reason"] and not f["reason"].startswith("internal error"), f
    with h5py.File(out, "r") as h5:
        for e in man["entries"]:
            data = h5["features"][e["key"]][()]
            assert list(data.shape) == e["shape"]
            assert np.isfinite(data).all(), f"{e['key']}: non-finite features written"


def _good_wav(path: Path) -> None:
    sf.write(path, (np.sin(np.arange(4000) / 9.0) * 0.3).astype(np.float32), 16000)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(st.tuples(hostile_bytes(), st.sampled_from(SUFFIXES)), min_size=1, max_size=4),
    with_good=st.booleans(),
)
@example(files=[(INF_PAIR, "wav")], with_good=True)
@example(files=[(HUGE_PAIR, "wav")], with_good=False)
def test_cli_over_random_files(
    scratch: Path, files: list[tuple[bytes, str]], with_good: bool
) -> None:
    """In-process CLI over hostile files (plus an empty one, so something fails)."""
    run_dir = scratch / f"run{next(_counter)}"
    root = run_dir / "in"
    root.mkdir(parents=True)
    (root / "zero.wav").write_bytes(b"")
    for i, (content, suffix) in enumerate(files):
        (root / f"r{i}.{suffix}").write_bytes(content)
    if with_good:
        _good_wav(root / "good.wav")
    out = run_dir / "out.h5"
    res = _invoke(["mel", str(root), "-o", str(out), "-j", "1", "--no-progress"], run_dir)
    check_cli_run(res.exit_code, res.stdout, res.stderr, out, len(files) + 1 + with_good,
                  {"good.wav"} if with_good else set())  # fmt: skip


def test_cli_subprocess_over_random_files(scratch: Path) -> None:
    """The real executable, two workers, over seeded noise and mangled real files."""
    rng = np.random.default_rng(7)
    run_dir = scratch / "subprocess"
    root = run_dir / "in"
    root.mkdir(parents=True)
    names = sorted(REAL)
    for i, suffix in enumerate(SUFFIXES):
        (root / f"noise{i}.{suffix}").write_bytes(rng.bytes(int(rng.integers(0, 3000))))
        base = bytearray(REAL[names[i % len(names)]])
        base[int(rng.integers(0, 60))] ^= 0xFF  # one flipped header byte
        (root / f"flipped{i}.{suffix}").write_bytes(bytes(base))
        (root / f"cut{i}.{suffix}").write_bytes(
            REAL[names[i % len(names)]][: int(rng.integers(0, 200))]
        )
    _good_wav(root / "good.wav")
    out = run_dir / "out.h5"
    exe = shutil.which("melcli", path=str(Path(sys.executable).parent)) or shutil.which("melcli")
    cmd = [exe] if exe else [sys.executable, "-m", "melcli"]
    proc = subprocess.run(
        [*cmd, "mel", str(root), "-o", str(out), "-j", "2", "--no-progress"],
        capture_output=True, text=True, cwd=run_dir, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    check_cli_run(
        proc.returncode, proc.stdout, proc.stderr, out, 3 * len(SUFFIXES) + 1, {"good.wav"}
    )
