"""The fbank kind and its kaldi / lhotse presets (issue 10), against kaldi-native-fbank
itself (dither 0) on real audio, and against the golden outputs of lhotse and of Kaldi's
add-deltas; through the library and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import kaldi_native_fbank as knf
import numpy as np
import pytest

import melcli as melcli_lib
from melcli import audio, features, presets
from melcli.params import FeatureParams
from tests.conftest import AudioFactory, RunMelcli, assert_no_traceback, feature_arrays

SAMPLES = Path(__file__).parents[1] / "sample_audio"
REFERENCE = Path(__file__).parent / "reference"
GOLDEN = np.load(REFERENCE / "golden.npz")
CALLS = json.loads((REFERENCE / "golden.json").read_text())
#: Kaldi (and kaldi-native-fbank) compute in float32, melcli's FFT in float64: the two
#: agree to ~2e-6 in log units (median), to 5e-3 in bins up to ~20 nats below their
#: frame's peak; deeper, float32 rounding of the FFT (~6e-8 of the frame's peak
#: amplitude) dominates: measured 0.016 at 25 nats below.
LOG_TOL = 5e-3


def assert_kaldi_close(got: np.ndarray, ref: np.ndarray) -> None:
    """Within LOG_TOL, plus float32 FFT rounding for bins far below their frame's peak."""
    assert got.shape == ref.shape
    err = np.abs(got - ref)
    depth = ref.max(axis=-2, keepdims=True) - ref  # nats of energy below the frame's peak
    allowed = LOG_TOL + 4 * 6e-8 * np.exp(depth / 2)
    assert (err <= allowed).all(), float((err - allowed).max())
    assert np.median(err) <= 1e-4 and np.quantile(err, 0.99) <= LOG_TOL


_FRAME = {"snip_edges", "window_type", "preemph_coeff", "remove_dc_offset",
          "round_to_power_of_two", "frame_length_ms", "frame_shift_ms"}  # fmt: skip
_MEL = {"num_bins", "low_freq", "high_freq"}


def knf_fbank(y: np.ndarray, sr: int, **opts: Any) -> np.ndarray:
    """kaldi-native-fbank's OnlineFbank of int16-scaled samples, dither 0: (bins, frames)."""
    o = knf.FbankOptions()
    o.frame_opts.dither = 0.0
    o.frame_opts.samp_freq = sr
    for name, value in opts.items():
        target = o.frame_opts if name in _FRAME else o.mel_opts if name in _MEL else o
        setattr(target, name, value)
    f = knf.OnlineFbank(o)
    f.accept_waveform(sr, (y * 32768).tolist())
    f.input_finished()
    return np.array([f.get_frame(i) for i in range(f.num_frames_ready)]).T


CASES = [
    ({}, {}),
    ({"snip_edges": False}, {"snip_edges": False}),
    ({"num_mel_bins": 80, "high_freq": -400.0}, {"num_bins": 80, "high_freq": -400.0}),
    ({"window_type": "hamming", "low_freq": 60.0, "high_freq": 7000.0},
     {"window_type": "hamming", "low_freq": 60.0, "high_freq": 7000.0}),
    ({"window_type": "hanning", "preemphasis_coefficient": 0.0, "remove_dc_offset": False},
     {"window_type": "hanning", "preemph_coeff": 0.0, "remove_dc_offset": False}),
    ({"window_type": "rectangular", "round_to_power_of_two": False},
     {"window_type": "rectangular", "round_to_power_of_two": False}),
    ({"window_type": "blackman", "frame_length": 32.0, "frame_shift": 12.5},
     {"window_type": "blackman", "frame_length_ms": 32.0, "frame_shift_ms": 12.5}),
    ({"use_power": False}, {"use_power": False}),
    ({"window_type": "sine"}, {"window_type": "sine"}),
    ({"use_energy": True}, {"use_energy": True}),  # log energy before pre-emphasis: row 0
    ({"use_energy": True, "raw_energy": False, "snip_edges": False},
     {"use_energy": True, "raw_energy": False, "snip_edges": False}),
    ({"use_energy": True, "energy_floor": 2e5}, {"use_energy": True, "energy_floor": 2e5}),
]  # fmt: skip


@pytest.mark.parametrize(("mine", "theirs"), CASES)
@pytest.mark.parametrize("name", ["speech/hello.wav", "speech/numbers.flac", "music/chords.flac"])
def test_matches_kaldi_native_fbank_on_real_audio(
    name: str, mine: dict[str, Any], theirs: dict[str, Any]
) -> None:
    y, sr, _ = audio.load(str(SAMPLES / name), sr=16000, mono=True)  # melcli's own samples
    got = features.compute(y, sr, FeatureParams(kind="fbank", **mine))
    assert_kaldi_close(got, knf_fbank(y[0], sr, **theirs))


def test_linear_bins_match_kaldi_native_fbank() -> None:
    y, sr, _ = audio.load(str(SAMPLES / "speech/hello.wav"), sr=16000, mono=True)
    got = features.compute(y, sr, FeatureParams(kind="fbank", use_log_fbank=False))
    ref = knf_fbank(y[0], sr, use_log_fbank=False)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.fixture
def golden_16k(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for name, info in CALLS["inputs"].items():
        if info["sr"] == 16000:  # the presets resample to 16 kHz: compare where none is needed
            shutil.copy(REFERENCE / info["file"], root / f"{name}.flac")
    return root


def test_lhotse_preset_and_kaldi_deltas_equal_their_golden_outputs(
    melcli: RunMelcli, golden_16k: Path, tmp_path: Path
) -> None:
    lhotse, deltas = tmp_path / "lhotse.h5", tmp_path / "deltas.h5"
    assert melcli("fbank", golden_16k, "-o", lhotse, "--preset", "lhotse").returncode == 0
    proc = melcli("fbank", golden_16k, "-o", deltas, "--preset", "kaldi", "--deltas", "2")
    assert proc.returncode == 0, proc.stderr
    with melcli_lib.open(lhotse) as feats, melcli_lib.open(deltas) as d:
        assert sorted(feats) == sorted(f"{n}.flac" for n in ("hello", "numbers"))
        for key in feats:
            name = key[: -len(".flac")]
            ref = GOLDEN[f"lhotse_fbank/{name}"][0].T  # lhotse: (frames, 80) per channel
            assert feats[key].shape == ref.shape == (80, 100)
            assert_kaldi_close(feats[key], ref)
            ref = GOLDEN[f"kaldi_fbank_deltas/{name}"][0]  # (69, frames)
            assert d[key].shape == ref.shape == (69, 98)
            assert_kaldi_close(d[key][:23], ref[:23])
            assert np.abs(d[key][23:] - ref[23:]).max() <= LOG_TOL  # deltas of those
        assert json.loads((tmp_path / "lhotse.json").read_text())["params"]["input_scale"] == 1.0


def test_cli_fbank_defaults_resample_and_skip_short_files(
    melcli: RunMelcli, audio: AudioFactory, tmp_path: Path
) -> None:
    audio.samples("speech/numbers.flac", "music/chords.flac")
    audio.tone("tiny.wav", sr=16000, seconds=0.02)  # 320 samples < one 400-sample frame
    out = tmp_path / "f.h5"
    proc = melcli("fbank", "in", "-o", out)
    assert proc.returncode == 3, proc.stderr
    assert "skipped tiny.wav: too short: 320 samples give no frame of 400 samples" in proc.stderr
    with melcli_lib.open(out) as feats:
        p = feats.params
        assert (p["sr"], p["n_fft"], p["win_length"], p["hop_length"]) == (16000, 512, 400, 160)
        for key in ("music/chords.flac", "speech/numbers.flac"):
            y, sr, _ = audio_load(audio.root / key)
            assert_kaldi_close(feats[key], knf_fbank(y[0], sr))
        assert len(feats.frequencies("speech/numbers.flac")) == 23
    again = melcli("fbank", "in", "-o", out)
    assert again.returncode == 3 and "up to date" in again.stderr


def audio_load(path: Path) -> tuple[np.ndarray, int, Any]:
    return audio.load(str(path), sr=16000, mono=True)


@pytest.mark.parametrize("backend", ["threading", "fork"])
def test_parallel_runs_give_the_serial_numbers(
    melcli: RunMelcli, audio: AudioFactory, tmp_path: Path, backend: str
) -> None:
    for i in range(4):
        audio.mix(f"a{i}.wav", sr=16000 if i % 2 else 22050, seconds=0.5 + 0.25 * i)
    assert melcli("fbank", "in", "-o", tmp_path / "one.h5", "-j", "1").returncode == 0
    out = tmp_path / "many.h5"
    assert melcli("fbank", "in", "-o", out, "-j", "2", "--backend", backend).returncode == 0
    one, many = feature_arrays(tmp_path / "one.h5"), feature_arrays(out)
    assert sorted(one) == sorted(many)
    for key in one:
        np.testing.assert_array_equal(one[key], many[key])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--high-freq", "9000"], "--high-freq"),
        (["--num-mel-bins", "2"], "--num-mel-bins"),
        (["--n-fft", "512"], "No such option"),
        (["--deltas", "3"], "--deltas"),
        (["--frame-length", "0.01"], "--frame-length"),
    ],
)
def test_bad_fbank_options_are_usage_errors(
    melcli: RunMelcli, audio: AudioFactory, args: list[str], says: str
) -> None:
    audio.tone("a.wav", sr=16000, seconds=0.5)
    proc = melcli("fbank", "in", "-o", "x.h5", *args)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert_no_traceback(proc.stderr)


def test_kaldi_preset_sets_every_fbank_option() -> None:
    from melcli.params import declared

    kaldi = presets.get("fbank", "kaldi").values
    assert FeatureParams(kind="fbank", **kaldi) == FeatureParams(kind="fbank")
    assert {d.name for d in declared(type(FeatureParams(kind="fbank")))} <= set(kaldi)


def test_dither_is_kaldis_noise_in_distribution() -> None:
    """On 20 s of digital silence every bin is the dither noise's energy: melcli's mean
    per bin equals kaldi-native-fbank's (its own random dither) within sampling error."""
    y = np.zeros((1, 20 * 16000), dtype=np.float32)
    got = features.compute(y, 16000, FeatureParams(kind="fbank", dither=1.0), seed=7)
    o = knf.FbankOptions()
    o.frame_opts.dither = 1.0
    f = knf.OnlineFbank(o)
    f.accept_waveform(16000, y[0].tolist())
    f.input_finished()
    ref = np.array([f.get_frame(i) for i in range(f.num_frames_ready)]).T
    assert got.shape == ref.shape == (23, 1998)
    # each bin's mean over 1998 frames: the frames' spread (~0.3-1 nats) / sqrt(1998)
    assert np.abs(got.mean(axis=1) - ref.mean(axis=1)).max() < 0.06
    assert abs(got.std() - ref.std()) < 0.05 * ref.std()
    silent = features.compute(y, 16000, FeatureParams(kind="fbank"))
    assert (silent == np.float32(np.log(1.1920928955078125e-07))).all()  # no dither: the floor


def test_dither_is_the_same_for_every_part_rerun_and_backend(
    melcli: RunMelcli, audio: AudioFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from melcli import pipeline
    from melcli.discover import Source

    path = audio.mix("long.wav", sr=16000, seconds=6.0)
    params = FeatureParams(kind="fbank", dither=1.0)
    y, sr, _ = audio_load(path)
    whole = features.compute(y, sr, params, seed=features.entry_seed("long.wav"))
    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 20_000)
    monkeypatch.setattr(pipeline, "PART_SAMPLES", 16_000)
    tasks = pipeline.make_tasks(Source("long.wav", str(path)), audio_probe(path), params)
    assert len(tasks) > 3
    parts = [pipeline.extract(t, params).data for t in tasks]
    np.testing.assert_array_equal(np.concatenate(parts, axis=-1), whole)  # type: ignore[arg-type]
    # noise differs from the undithered features, and between keys
    assert np.abs(whole - features.compute(y, sr, FeatureParams(kind="fbank"))).max() > 1e-3
    other = features.compute(y, sr, params, seed=features.entry_seed("other.wav"))
    assert not np.array_equal(other, whole)
    audio.mix("b.wav", sr=16000, seconds=1.0)
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    assert melcli("fbank", "in", "-o", one, "--dither", "1", "-j", "1").returncode == 0
    proc = melcli("fbank", "in", "-o", two, "--dither", "1", "-j", "2", "--backend", "fork")
    assert proc.returncode == 0, proc.stderr
    a, b = feature_arrays(one), feature_arrays(two)
    assert sorted(a) == sorted(b) == ["b.wav", "long.wav"]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["long.wav"], whole)  # the command line's: the same noise
    assert json.loads((tmp_path / "one.json").read_text())["params"]["dither"] == 1.0


def audio_probe(path: Path) -> Any:
    return audio.probe(str(path))
