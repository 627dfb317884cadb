"""Parity with librosa itself: the correctness contract of the v1 issue.

For y = librosa.load(path, sr=sr_or_None, mono=...)[0]:
stft = |librosa.stft(y, ...)| ** power, mel = librosa.feature.melspectrogram(...),
db = librosa.power_to_db / amplitude_to_db (ref 1.0), log = ln(max(x, amin)).
Tolerance: max |melcli - librosa| <= 1e-5 * max |librosa| (1e-3 dB after db).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import h5py
import librosa
import numpy as np
import pytest
import soundfile as sf
from conftest import SAMPLE_AUDIO, AudioFactory, sample_files, sine
from hypothesis import given, settings
from hypothesis import strategies as st

from melcli import audio as melaudio
from melcli import features
from melcli.discover import Source
from melcli.params import FeatureParams, window_spec
from melcli.pipeline import extract

DB_TOL = 1e-3  # dB
REL_TOL = 1e-5  # of max |librosa|


# ---------------------------------------------------------------------------
# the reference and the comparison
# ---------------------------------------------------------------------------
def librosa_reference(path: str | Path, p: FeatureParams) -> tuple[np.ndarray, int]:
    """What the contract says melcli must compute, straight from librosa."""
    y, sr = librosa.load(path, sr=p.sr, mono=p.mono)
    stft_args: dict[str, Any] = {
        "n_fft": p.n_fft, "hop_length": p.hop_length, "win_length": p.win_length,
        "window": window_spec(p.window), "center": p.center, "pad_mode": p.pad_mode,
    }  # fmt: skip
    if p.kind == "stft":
        spec = librosa.stft(y, **stft_args)
        if p.complex:
            return (spec[None] if not p.mono and spec.ndim == 2 else spec), sr
        out = np.abs(spec) ** p.power
    else:
        out = librosa.feature.melspectrogram(
            y=y, sr=sr, **stft_args, power=p.power, n_mels=p.n_mels, fmin=p.fmin,
            fmax=p.fmax, htk=p.mel_scale == "htk", norm=None if p.norm == "none" else "slaney",
        )  # fmt: skip
    if not p.mono and out.ndim == 2:  # a mono file: melcli keeps a channel axis of 1
        out = out[None]
    if p.scale == "db":
        to_db = librosa.power_to_db if p.power == 2.0 else librosa.amplitude_to_db
        out = to_db(out, ref=1.0, amin=p.amin, top_db=p.top_db)
    elif p.scale == "log":
        out = np.log(np.maximum(out, p.amin))
    return out, sr


def ours(path: str | Path, p: FeatureParams) -> tuple[np.ndarray, int]:
    """melcli's library path: decode + compute."""
    y, sr, _ = melaudio.load(str(path), sr=p.sr, mono=p.mono)
    return features.compute(y, sr, p), sr


def assert_parity(got: np.ndarray, ref: np.ndarray, p: FeatureParams) -> None:
    """The contract's tolerance, with a message that says how far off it is."""
    assert got.shape == ref.shape, f"shape {got.shape} != librosa {ref.shape}"
    assert got.dtype == np.dtype(p.out_dtype)
    assert np.isfinite(got).all()
    err = float(np.max(np.abs(got.astype(np.complex128 if p.stores_complex else np.float64) - ref)))
    if p.scale == "db":
        assert err <= DB_TOL, f"max error {err} dB > {DB_TOL} dB"
    else:
        peak = float(np.max(np.abs(ref)))
        assert peak > 0
        assert err <= REL_TOL * peak, f"max error {err} > {REL_TOL} x {peak}"


def check(path: str | Path, **kw: Any) -> tuple[np.ndarray, FeatureParams]:
    """Compute with melcli and librosa, assert parity, return melcli's array."""
    p = FeatureParams(**kw)
    got, sr = ours(path, p)
    ref, ref_sr = librosa_reference(path, p)
    assert sr == ref_sr
    assert_parity(got, ref, p)
    return got, p


# ---------------------------------------------------------------------------
# parameter sets
# ---------------------------------------------------------------------------
PARAM_SETS = [
    pytest.param({"kind": "mel"}, id="mel-defaults"),
    pytest.param({"kind": "stft"}, id="stft-defaults"),
    pytest.param({"kind": "stft", "n_fft": 512, "hop_length": 128, "window": "hamming"},
                 id="stft-512-hamming"),
    pytest.param({"kind": "mel", "n_fft": 400, "hop_length": 160, "n_mels": 80, "scale": "log"},
                 id="mel-asr-logmel"),
    pytest.param({"kind": "mel", "n_fft": 1024, "win_length": 512, "hop_length": 200,
                  "mel_scale": "htk", "norm": "none", "fmin": 60.0, "fmax": 7000.0,
                  "scale": "db", "top_db": 80.0}, id="mel-htk-nonorm-db-topdb"),
    pytest.param({"kind": "stft", "n_fft": 256, "win_length": 200, "hop_length": 50,
                  "power": 1.0, "scale": "db", "center": False}, id="stft-amplitude-db-nocenter"),
    pytest.param({"kind": "stft", "n_fft": 512, "power": 1.0, "scale": "log", "amin": 1e-5},
                 id="stft-magnitude-log-amin"),
    pytest.param({"kind": "mel", "n_fft": 512, "hop_length": 256, "power": 1.0, "n_mels": 40},
                 id="mel-magnitude"),
    pytest.param({"kind": "stft", "n_fft": 384, "hop_length": 97, "power": 1.5},
                 id="stft-odd-hop-power-1.5"),
    pytest.param({"kind": "mel", "n_fft": 2048, "hop_length": 512, "scale": "db",
                  "dtype": "float64"}, id="mel-db-float64"),
]  # fmt: skip


@pytest.mark.parametrize("kw", PARAM_SETS)
def test_parameter_sets_match_librosa(audio: AudioFactory, kw: dict[str, Any]) -> None:
    path = audio.mix("mix.wav", sr=16000, seconds=0.7)
    check(path, **kw)


# All eight windows of the lecture (boxcar is rectangular's alias); win_length
# < n_fft exercises the centred zero-padding of the window.
WINDOWS = ["rectangular", "boxcar", "hann", "hamming", "blackman", "bartlett",
           "gaussian:40", "gaussian:12.5", "kaiser:14", "kaiser:0.5", "flattop"]  # fmt: skip


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"kind": "stft", "n_fft": 256, "win_length": 200, "hop_length": 64},
                     id="stft"),
        pytest.param({"kind": "mel", "n_fft": 512, "hop_length": 128, "n_mels": 40,
                      "scale": "db"}, id="mel-db"),
    ],
)  # fmt: skip
def test_every_window_matches_librosa(audio: AudioFactory, window: str, kw: dict[str, Any]) -> None:
    path = audio.mix("w.wav", sr=16000, seconds=0.4)
    check(path, window=window, **kw)


def test_rectangular_is_boxcar_and_windows_differ(audio: AudioFactory) -> None:
    path = audio.mix("w.wav", sr=16000, seconds=0.3)
    base = {"kind": "stft", "n_fft": 256, "hop_length": 64}
    rect, _ = ours(path, FeatureParams(**base, window="rectangular"))
    box, _ = ours(path, FeatureParams(**base, window="boxcar"))
    np.testing.assert_array_equal(rect, box)
    results = [ours(path, FeatureParams(**base, window=w))[0] for w in WINDOWS if w != "boxcar"]
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            assert not np.allclose(results[i], results[j]), (WINDOWS[i], WINDOWS[j])


@pytest.mark.parametrize(
    "center,pad_mode",
    [(True, "constant"), (True, "reflect"), (True, "edge"), (False, "constant")],
)
@pytest.mark.parametrize("kind", ["stft", "mel"])
def test_center_and_pad_modes_match_librosa(
    audio: AudioFactory, center: bool, pad_mode: str, kind: str
) -> None:
    path = audio.mix("c.wav", sr=22050, seconds=0.3)
    got, p = check(
        path, kind=kind, n_fft=1024, hop_length=300, center=center, pad_mode=pad_mode,
        **({"n_mels": 64} if kind == "mel" else {}),
    )  # fmt: skip
    n = len(audio_samples(path))
    assert got.shape[-1] == (1 + n // 300 if center else 1 + (n - 1024) // 300)


def test_pad_modes_give_different_edge_frames(audio: AudioFactory) -> None:
    path = audio.mix("c.wav", sr=16000, seconds=0.3)
    res = {m: ours(path, FeatureParams(kind="stft", n_fft=512, pad_mode=m))[0]
           for m in ("constant", "reflect", "edge")}  # fmt: skip
    assert not np.allclose(res["constant"][:, 0], res["reflect"][:, 0])
    assert not np.allclose(res["reflect"][:, 0], res["edge"][:, 0])
    # interior frames do not see the padding
    np.testing.assert_array_equal(res["constant"][:, 3:-3], res["reflect"][:, 3:-3])


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
@pytest.mark.parametrize("norm", ["slaney", "none"])
@pytest.mark.parametrize("scale", ["linear", "db"])
def test_mel_scales_and_norms_match_librosa(
    audio: AudioFactory, mel_scale: str, norm: str, scale: str
) -> None:
    path = audio.mix("m.wav", sr=16000, seconds=0.4)
    check(path, kind="mel", n_fft=1024, hop_length=256, n_mels=64, mel_scale=mel_scale,
          norm=norm, scale=scale)  # fmt: skip


def test_mel_scale_and_norm_change_the_result(audio: AudioFactory) -> None:
    path = audio.mix("m.wav", sr=16000, seconds=0.3)
    base = {"kind": "mel", "n_fft": 1024, "n_mels": 64}
    slaney, _ = ours(path, FeatureParams(**base))
    htk, _ = ours(path, FeatureParams(**base, mel_scale="htk"))
    unnorm, _ = ours(path, FeatureParams(**base, norm="none"))
    assert not np.allclose(slaney, htk)
    assert not np.allclose(slaney, unnorm)


# ---------------------------------------------------------------------------
# rates, containers, channels
# ---------------------------------------------------------------------------
def audio_samples(path: Path) -> np.ndarray:
    return librosa.load(path, sr=None, mono=True)[0]


@pytest.mark.parametrize("sr", [16000, 22050, 44100, 48000])
@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg"])
@pytest.mark.parametrize("channels", [1, 2])
def test_rates_containers_and_downmix_match_librosa(
    audio: AudioFactory, sr: int, suffix: str, channels: int
) -> None:
    path = audio.mix(f"x.{suffix}", sr=sr, seconds=0.35, channels=channels)
    got, _ = check(path, kind="mel", scale="db")
    n = len(audio_samples(path))
    assert got.shape == (128, 1 + n // 512)


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"kind": "stft", "n_fft": 512}, id="stft"),
        pytest.param({"kind": "mel", "scale": "db", "top_db": 60.0}, id="mel-db-topdb"),
        pytest.param({"kind": "mel", "scale": "log", "n_mels": 40, "n_fft": 1024}, id="mel-log"),
    ],
)
def test_keep_channels_matches_librosa_per_channel(
    audio: AudioFactory, sr: int, kw: dict[str, Any]
) -> None:
    path = audio.mix("st.flac", sr=sr, seconds=0.3, channels=2)
    got, p = check(path, mono=False, **kw)
    assert got.ndim == 3 and got.shape[:2] == (2, p.n_bins)
    assert not np.allclose(got[0], got[1])  # the channels really are different
    if p.kind == "stft":  # each channel alone is librosa on that channel
        y, _ = librosa.load(path, sr=None, mono=False)
        for c in range(2):
            ref = np.abs(librosa.stft(y[c], n_fft=p.n_fft, hop_length=p.hop_length)) ** p.power
            assert_parity(got[c], ref, p)


def test_keep_channels_on_mono_file_has_one_channel(audio: AudioFactory) -> None:
    path = audio.mix("m.wav", sr=16000, seconds=0.3)
    got, _ = check(path, kind="mel", mono=False)
    assert got.shape[0] == 1 and got.ndim == 3


@pytest.mark.parametrize(
    "native,target",
    [(44100, 16000), (48000, 16000), (22050, 16000), (16000, 22050), (44100, 48000),
     (48000, 44100), (16000, 16000)],
)  # fmt: skip
def test_resampling_matches_librosa_load(audio: AudioFactory, native: int, target: int) -> None:
    # 1 s: 44100 -> 48000 of 44100 samples is 48001 samples in librosa (float rounding)
    path = audio.mix("r.wav", sr=native, seconds=1.0)
    y_ref, _ = librosa.load(path, sr=target, mono=True)
    y, sr, info = melaudio.load(str(path), sr=target, mono=True)
    assert sr == target and info.sample_rate == native
    assert y.shape == (1, len(y_ref))
    np.testing.assert_allclose(y[0], y_ref, rtol=0, atol=1e-6)
    check(path, kind="mel", sr=target, n_fft=512, hop_length=1 if target == 48000 else 160,
          n_mels=40, win_length=400)  # fmt: skip


def test_resampling_stereo_keep_channels_matches_librosa(audio: AudioFactory) -> None:
    path = audio.mix("st.wav", sr=44100, seconds=0.5, channels=2)
    got, _ = check(path, kind="stft", sr=22050, mono=False, n_fft=512)
    assert got.shape[0] == 2


def test_native_rate_is_kept_without_sr(audio: AudioFactory) -> None:
    # unlike librosa.load's default of 22050 Hz
    path = audio.tone("t.wav", sr=48000, seconds=0.25)
    res = extract(Source("t.wav", str(path)), FeatureParams(kind="mel"))
    assert res.meta is not None and res.meta.sample_rate == 48000
    assert res.meta.n_samples == 12000


# ---------------------------------------------------------------------------
# complex STFT, dtypes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,out", [("float32", np.complex64), ("float64", np.complex128)])
def test_complex_stft_matches_librosa(audio: AudioFactory, dtype: str, out: type) -> None:
    path = audio.mix("c.wav", sr=16000, seconds=0.4)
    got, p = check(path, kind="stft", complex=True, n_fft=512, hop_length=128, dtype=dtype)
    assert got.dtype == out
    # magnitude and phase both: |X|**2 is the power stft
    power, _ = ours(path, FeatureParams(kind="stft", n_fft=512, hop_length=128))
    np.testing.assert_allclose(np.abs(got) ** 2, power, rtol=0, atol=1e-5 * power.max())
    assert np.ptp(np.angle(got[5:50, 10])) > 1  # a phase, not only magnitudes


def test_float16_is_float32_rounded(audio: AudioFactory) -> None:
    path = audio.mix("c.wav", sr=16000, seconds=0.3)
    f32, _ = ours(path, FeatureParams(kind="mel", scale="db"))
    f16, _ = ours(path, FeatureParams(kind="mel", scale="db", dtype="float16"))
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16, f32.astype(np.float16))


def test_float64_output_is_float64(audio: AudioFactory) -> None:
    path = audio.mix("c.wav", sr=16000, seconds=0.3)
    got, _ = check(path, kind="stft", dtype="float64", n_fft=256)
    assert got.dtype == np.float64


# ---------------------------------------------------------------------------
# the committed real corpus
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", sample_files(), ids=lambda p: p.relative_to(SAMPLE_AUDIO).as_posix()
)
@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"kind": "mel"}, id="mel"),
        pytest.param({"kind": "stft", "scale": "db", "power": 1.0, "n_fft": 1024}, id="stft-db"),
        pytest.param({"kind": "mel", "scale": "log", "n_fft": 400, "hop_length": 160,
                      "n_mels": 80, "sr": 16000}, id="logmel-16k"),
    ],
)  # fmt: skip
def test_sample_audio_matches_librosa(path: Path, kw: dict[str, Any]) -> None:
    check(path, **kw)


def test_sample_audio_corpus_is_there() -> None:
    names = {p.relative_to(SAMPLE_AUDIO).as_posix() for p in sample_files()}
    assert {"speech/hello.wav", "music/chords.flac", "music/arpeggio.ogg"} <= names


# ---------------------------------------------------------------------------
# frame counts
# ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    n_fft=st.sampled_from([16, 64, 100, 256, 512]),
    hop=st.integers(1, 300),
    center=st.booleans(),
)
def test_frame_count_formula_matches_librosa(n: int, n_fft: int, hop: int, center: bool) -> None:
    p = FeatureParams(kind="stft", n_fft=n_fft, hop_length=hop, center=center)
    expected = 1 + n // hop if center else (1 + (n - n_fft) // hop if n >= n_fft else 0)
    assert p.n_frames(n) == expected
    if expected == 0:
        return
    y = np.cos(np.arange(n, dtype=np.float32) * 0.1)[None, :]
    got = features.compute(y, 16000, p)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "n_fft=.* is too large", UserWarning)
        ref = librosa.stft(y[0], n_fft=n_fft, hop_length=hop, center=center)
    assert got.shape == ref.shape == (n_fft // 2 + 1, expected)
    assert_parity(got, np.abs(ref) ** 2, p)


# ---------------------------------------------------------------------------
# known answers: a pure tone lands where it should
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sr,freq,n_fft",
    [(16000, 1000.0, 512), (22050, 2756.25, 1024), (44100, 3000.0, 2048), (48000, 440.0, 4096)],
)
def test_tone_peaks_in_its_fft_bin(sr: int, freq: float, n_fft: int) -> None:
    y = sine(freq, sr, 0.5)[None, :]
    p = FeatureParams(kind="stft", n_fft=n_fft)
    spec = features.compute(y, sr, p)
    freqs = p.row_frequencies(sr)
    expected_bin = round(freq * n_fft / sr)
    interior = spec[:, 2:-2]
    assert (np.argmax(interior, axis=0) == expected_bin).all()
    assert abs(freqs[expected_bin] - freq) <= sr / n_fft / 2
    # hann window, amplitude 0.5: the peak magnitude is about 0.5 * sum(win) / 2
    # (exact when the tone sits on a bin)
    if freq * n_fft / sr == expected_bin:
        mag = np.sqrt(interior[expected_bin])
        np.testing.assert_allclose(mag, 0.5 * n_fft / 2 / 2, rtol=1e-3)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3500.0])
@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
def test_tone_peaks_in_its_mel_band(freq: float, mel_scale: str) -> None:
    sr = 16000
    y = sine(freq, sr, 0.5)[None, :]
    p = FeatureParams(kind="mel", n_fft=2048, n_mels=64, mel_scale=mel_scale)
    spec = features.compute(y, sr, p)
    centres = p.row_frequencies(sr)
    np.testing.assert_allclose(
        centres,
        librosa.mel_frequencies(66, fmin=0, fmax=sr / 2, htk=mel_scale == "htk")[1:-1],
    )
    peak = np.argmax(spec[:, 2:-2], axis=0)
    assert (peak == peak[0]).all()
    assert peak[0] == np.argmin(np.abs(centres - freq))


def test_stored_frequencies_put_the_tone_at_its_frequency(
    audio: AudioFactory, invoke: Any, tmp_path: Path
) -> None:
    """Through the CLI: /frequencies/<sr> and the manifest's "frequencies"."""
    audio.tone("a.wav", freq=1000.0, sr=16000, seconds=0.5)
    audio.tone("b.flac", freq=3000.0, sr=44100, seconds=0.5)
    out = tmp_path / "s.h5"
    r = invoke("stft", audio.root, "-o", out, "--n-fft", "512", "-j1")
    assert r.exit_code == 0, r.stderr
    r = invoke("mel", audio.root, "-o", tmp_path / "m", "--n-fft", "2048", "--n-mels", "96", "-j1")
    assert r.exit_code == 0, r.stderr
    man_s = json.loads((tmp_path / "s.json").read_text())
    man_m = json.loads((tmp_path / "m" / "manifest.json").read_text())
    with h5py.File(out) as f:
        for key, freq, sr in [("a.wav", 1000.0, 16000), ("b.flac", 3000.0, 44100)]:
            ds = f["features"][key]
            assert ds.attrs["frequencies"] == f"/frequencies/{sr}"
            freqs = f[ds.attrs["frequencies"]][()]
            np.testing.assert_array_equal(freqs, man_s["frequencies"][str(sr)])
            assert freqs.shape == (257,)
            peak = np.argmax(ds[()][:, 2:-2], axis=0)
            assert (np.abs(freqs[peak] - freq) <= sr / 512 / 2).all()
            mel = np.load(tmp_path / "m" / f"{key}.npy", allow_pickle=False)
            centres = np.asarray(man_m["frequencies"][str(sr)])
            assert centres.shape == (96,)
            band = np.argmax(mel[:, 2:-2], axis=0)
            spacing = np.diff(centres)[band]  # one band's width around the tone
            assert (np.abs(centres[band] - freq) <= spacing).all()


# ---------------------------------------------------------------------------
# silence, empty filters, a few runs through the CLI
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_silence_db_is_finite_and_matches_librosa(audio: AudioFactory, power: float) -> None:
    path = audio.write("zero.wav", np.zeros(8000, np.float32), 16000)
    got, _ = check(path, kind="mel", scale="db", power=power)
    # the floor: power_to_db gives 10 log10(amin), amplitude_to_db 20 log10(amin)
    np.testing.assert_allclose(got, 20 / power * np.log10(1e-10), rtol=0, atol=DB_TOL)
    got, _ = check(path, kind="stft", scale="log", power=power)
    np.testing.assert_allclose(got, np.log(1e-10), rtol=1e-6)


def test_empty_mel_filters_match_librosa(audio: AudioFactory) -> None:
    path = audio.mix("m.wav", sr=16000, seconds=0.3)
    p = FeatureParams(kind="mel", n_mels=256, n_fft=256)
    assert p.has_empty_filters(16000)
    assert not FeatureParams(kind="mel").has_empty_filters(16000)
    got, _ = ours(path, p)
    with pytest.warns(UserWarning, match="Empty filters"):
        ref, _ = librosa_reference(path, p)
    assert_parity(got, ref, p)
    assert (got.max(axis=1) == 0).any()  # the empty bands are all zeros


def test_cli_h5_matches_librosa(audio: AudioFactory, invoke: Any, tmp_path: Path) -> None:
    a = audio.mix("speech/a.wav", sr=16000, seconds=0.6)
    b = audio.mix("music/b.flac", sr=44100, seconds=0.4, channels=2)
    c = audio.mix("music/c.ogg", sr=22050, seconds=0.5)
    out = tmp_path / "f.h5"
    args = ["--n-fft", "1024", "--hop-length", "256", "--scale", "db", "--window", "kaiser:8",
            "--mel-scale", "htk", "--n-mels", "60"]  # fmt: skip
    r = invoke("mel", audio.root, "-o", out, "-j1", *args)
    assert r.exit_code == 0, r.stderr
    p = FeatureParams(kind="mel", n_fft=1024, hop_length=256, scale="db", window="kaiser:8",
                      mel_scale="htk", n_mels=60)  # fmt: skip
    with h5py.File(out) as f:
        assert sorted(f["features"].keys()) == ["music", "speech"]
        for key, path in [("speech/a.wav", a), ("music/b.flac", b), ("music/c.ogg", c)]:
            ds = f["features"][key]
            ref, sr = librosa_reference(path, p)
            assert ds.attrs["sample_rate"] == sr
            assert_parity(ds[()], ref, p)


def test_cli_npy_keep_channels_resampled_matches_librosa(
    audio: AudioFactory, melcli: Any, tmp_path: Path
) -> None:
    """The real executable, --keep-channels with --sr, read back from .npy."""
    a = audio.mix("a.wav", sr=48000, seconds=0.5, channels=2)
    b = audio.mix("b.flac", sr=16000, seconds=0.5)
    out = tmp_path / "feats"
    args = ["--keep-channels", "--sr", "22050", "--n-fft", "512", "--window", "gaussian:60",
            "--power", "1", "--scale", "log"]  # fmt: skip
    r = melcli("stft", audio.root, "-o", out, "-j1", *args)
    assert r.returncode == 0, r.stderr
    p = FeatureParams(kind="stft", mono=False, sr=22050, n_fft=512, window="gaussian:60",
                      power=1.0, scale="log")  # fmt: skip
    for key, path, channels in [("a.wav", a, 2), ("b.flac", b, 1)]:
        got = np.load(out / f"{key}.npy", allow_pickle=False)
        ref, _ = librosa_reference(path, p)
        assert got.shape[0] == channels
        assert_parity(got, ref, p)


def test_cli_complex_stft_matches_librosa(audio: AudioFactory, invoke: Any, tmp_path: Path) -> None:
    a = audio.mix("a.wav", sr=16000, seconds=0.4)
    out = tmp_path / "c.h5"
    r = invoke("stft", a, "-o", out, "--complex", "--n-fft", "256", "--no-center", "-j1")
    assert r.exit_code == 0, r.stderr
    p = FeatureParams(kind="stft", complex=True, n_fft=256, center=False)
    with h5py.File(out) as f:
        got = f["features/a.wav"][()]
    assert got.dtype == np.complex64
    ref, _ = librosa_reference(a, p)
    assert_parity(got, ref, p)


def test_result_does_not_depend_on_blas_threads(audio: AudioFactory) -> None:
    """-j1 (the parent's BLAS threads) and -j2 (limited workers) must agree bit for bit."""
    from threadpoolctl import threadpool_limits

    path = audio.mix("m.wav", sr=16000, seconds=1.0)
    p = FeatureParams(kind="mel", scale="db")
    results = []
    for threads in (1, 2, 4):
        with threadpool_limits(limits=threads, user_api="blas"):
            results.append(ours(path, p)[0])
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


# ---------------------------------------------------------------------------
# random parameters, random signals
# ---------------------------------------------------------------------------
@st.composite
def random_params(draw: st.DrawFn) -> FeatureParams:
    kind = draw(st.sampled_from(["stft", "mel"]))
    n_fft = draw(st.sampled_from([32, 100, 128, 255, 256, 400, 512, 1024]))
    scale = draw(st.sampled_from(["linear", "db", "log"]))
    kw: dict[str, Any] = {
        "kind": kind, "n_fft": n_fft, "scale": scale,
        "win_length": draw(st.one_of(st.none(), st.integers(max(1, n_fft // 4), n_fft))),
        "hop_length": draw(st.one_of(st.none(), st.integers(1, n_fft))),
        "window": draw(st.sampled_from(["hann", "rectangular", "hamming", "blackman", "bartlett",
                                        "flattop", "kaiser:6.5", "gaussian:9"])),
        "center": draw(st.booleans()), "pad_mode": draw(st.sampled_from(["constant", "reflect",
                                                                          "edge"])),
        "power": draw(st.sampled_from([1.0, 2.0]) if scale == "db" else st.sampled_from(
            [0.5, 1.0, 2.0, 3.0])),
        "mono": draw(st.booleans()),
    }  # fmt: skip
    if scale == "db":
        kw["top_db"] = draw(st.one_of(st.none(), st.floats(10, 120)))
    if kind == "mel":
        kw["n_mels"] = draw(st.integers(1, 64))
        kw["mel_scale"] = draw(st.sampled_from(["slaney", "htk"]))
        kw["norm"] = draw(st.sampled_from(["slaney", "none"]))
        kw["fmin"] = draw(st.sampled_from([0.0, 20.0, 300.0]))
        kw["fmax"] = draw(st.sampled_from([None, 3000.0, 7999.0]))
    return FeatureParams(**kw)


@settings(max_examples=40, deadline=None)
@given(p=random_params(), seed=st.integers(0, 2**32 - 1), n=st.integers(1024, 6000),
       channels=st.integers(1, 3))  # fmt: skip
def test_random_parameters_match_librosa(
    tmp_path_factory: pytest.TempPathFactory, p: FeatureParams, seed: int, n: int, channels: int
) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    y = np.stack([0.3 * rng.uniform(-1, 1, n) + 0.5 * np.sin(2 * np.pi * rng.uniform(50, 7000) * t)
                  for _ in range(channels)]).astype(np.float32)  # fmt: skip
    path = tmp_path_factory.mktemp("random") / "r.wav"
    sf.write(path, y.T, 16000, subtype="FLOAT")
    got, _ = ours(path, p)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Empty filters", UserWarning)
        ref, _ = librosa_reference(path, p)
    assert_parity(got, ref, p)
    assert got.shape[-1] == p.n_frames(n)


# ---------------------------------------------------------------------------
# librosa pads a centred signal's tail on its own
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "n_fft", "hop", "window"),
    [(1024, 100, 64, "rectangular"), (1025, 8, 5, "hann"), (16000, 512, 400, "hamming"),
     (1024, 32, 32, "rectangular"), (4016, 64, 48, "rectangular")],
)  # fmt: skip
def test_reflect_padded_tail_matches_librosa(
    tmp_path: Path, n: int, n_fft: int, hop: int, window: str
) -> None:
    """With a hop over about half the window, librosa reflects a tail shorter than
    n_fft // 2 + 1 samples on its own (numpy then reflects it more than once): the
    last frame is not the whole signal's reflection. melcli gives librosa's numbers."""
    rng = np.random.default_rng(n)
    path = tmp_path / "t.wav"
    sf.write(path, (0.5 * rng.uniform(-1, 1, n)).astype(np.float32), 16000, subtype="FLOAT")
    for kind in ("stft", "mel") if n_fft >= 100 else ("stft",):
        check(path, kind=kind, n_fft=n_fft, hop_length=hop, window=window, pad_mode="reflect",
              power=1.0, **({"n_mels": 8} if kind == "mel" else {}))  # fmt: skip


def test_cli_reflect_padded_tail_matches_librosa(tmp_path: Path, melcli: Any) -> None:
    """The same through the real executable (parts of long files: test_streaming)."""
    rng = np.random.default_rng(7)
    n = 1024
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "t.wav", (0.5 * rng.uniform(-1, 1, n)).astype(np.float32), 16000,
             subtype="FLOAT")  # fmt: skip
    args = ["--n-fft", "100", "--hop-length", "64", "--window", "rectangular", "--pad-mode",
            "reflect", "-j1"]  # fmt: skip
    r = melcli("stft", tmp_path / "in", "-o", tmp_path / "o.h5", *args)
    assert r.returncode == 0, r.stderr
    p = FeatureParams(kind="stft", n_fft=100, hop_length=64, window="rectangular",
                      pad_mode="reflect")  # fmt: skip
    with h5py.File(tmp_path / "o.h5") as f:
        got = f["features/t.wav"][()]
    ref, _ = librosa_reference(tmp_path / "in" / "t.wav", p)
    assert_parity(got, ref, p)
