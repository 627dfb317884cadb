"""The mfcc kind (issue 10): librosa.feature.mfcc and librosa.feature.delta, on real audio,
through the library and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import pytest
import soundfile as sf

import melcli as melcli_lib
from melcli import audio as audio_io
from melcli import dsp, features
from melcli.errors import ParameterError
from melcli.kinds.fbank import kaldi_deltas
from melcli.params import FeatureParams
from tests.conftest import AudioFactory, RunMelcli, assert_no_traceback, feature_arrays

SAMPLES = Path(__file__).parents[1] / "sample_audio"
REL_TOL = 1e-4  # of max |librosa|


def librosa_mfcc(y: np.ndarray, sr: int, p: FeatureParams) -> np.ndarray:
    """librosa's own MFCCs (and deltas) for these parameters."""
    raw = p.to_dict()
    ref = librosa.feature.mfcc(
        y=y, sr=sr, n_mfcc=raw["n_mfcc"], dct_type=raw["dct_type"], lifter=raw["lifter"],
        n_fft=raw["n_fft"], hop_length=raw["hop_length"], win_length=raw["win_length"],
        window=raw["window"], center=raw["center"], pad_mode=raw["pad_mode"],
        power=raw["power"], n_mels=raw["n_mels"], fmin=raw["fmin"], fmax=raw["fmax"],
        htk=raw["mel_scale"] == "htk", mel_norm=None if raw["norm"] == "none" else "slaney",
    )  # fmt: skip
    parts = [ref] + [librosa.feature.delta(ref, order=o) for o in range(1, raw["deltas"] + 1)]
    return np.concatenate(parts, axis=-2)


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape and got.dtype == np.float32
    err = float(np.abs(got - ref).max())
    assert err <= REL_TOL * float(np.abs(ref).max()), err / float(np.abs(ref).max())


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"n_mfcc": 13, "lifter": 22.0, "n_mels": 40},
        {"deltas": 2},
        {"deltas": 1, "dct_type": 3, "n_mels": 64, "fmax": 7000.0},
        {
            "n_fft": 512,
            "hop_length": 160,
            "win_length": 400,
            "window": "hamming",
            "power": 1.0,
            "n_mels": 40,
        },
    ],
)
@pytest.mark.parametrize("name", ["speech/hello.wav", "speech/numbers.flac", "music/chords.flac"])
def test_matches_librosa_on_real_audio(name: str, kw: dict[str, Any]) -> None:
    y, sr = librosa.load(SAMPLES / name, sr=None, mono=False)
    p = FeatureParams(kind="mfcc", mono=y.ndim == 1, **kw)
    got = features.compute(np.atleast_2d(y).astype(np.float32), sr, p)
    assert_close(got, librosa_mfcc(y, sr, p))


def test_deltas_and_dct_equal_scipy_and_librosa() -> None:
    import scipy.fft

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 30, 41)).astype(np.float32)
    for order in (1, 2):
        want = librosa.feature.delta(x, order=order)
        np.testing.assert_allclose(dsp.savgol_deltas(x, order), want, rtol=0, atol=1e-5)
    for t in (2, 3):
        np.testing.assert_allclose(dsp.dct_matrix(30, 13, t) @ x[0],
                                   scipy.fft.dct(x[0], type=t, norm="ortho", axis=0)[:13],
                                   rtol=0, atol=1e-5)  # fmt: skip


def test_cli_mfcc_with_deltas_reads_back_as_librosa(
    melcli: RunMelcli, audio: AudioFactory, tmp_path: Path
) -> None:
    audio.samples("speech/hello.wav", "music/arpeggio.ogg")
    audio.tone("short.wav", sr=16000, seconds=0.05)  # 2 frames at sr 16000, hop 512: < 9
    out = tmp_path / "mfcc.h5"
    proc = melcli("mfcc", "in", "-o", out, "--sr", "16000", "--n-mfcc", "13", "--deltas", "2")
    assert proc.returncode == 3, proc.stderr
    assert_no_traceback(proc.stderr)
    assert "skipped short.wav: 2 frames are too few for --deltas" in proc.stderr
    with melcli_lib.open(out) as feats:
        assert feats.params["kind"] == "mfcc" and feats.params["top_db"] == 80.0
        assert list(feats) == ["music/arpeggio.ogg", "speech/hello.wav"]
        assert [f["key"] for f in feats.failures] == ["short.wav"]
        p = FeatureParams.from_dict(feats.params)
        for key in feats:
            y, sr = librosa.load(audio.root / key, sr=16000)
            assert_close(feats[key], librosa_mfcc(y, sr, p))
            assert feats[key].shape[0] == 39
        assert feats.stats is not None and len(feats.stats["mean"]) == 39
    rerun = melcli("mfcc", "in", "-o", out, "--sr", "16000", "--n-mfcc", "13", "--deltas", "2")
    assert rerun.returncode == 3 and "up to date" in rerun.stderr
    shown = melcli("inspect", out)
    assert shown.returncode == 0 and "melcli mfcc output" in shown.stdout


@pytest.mark.parametrize("backend", ["threading", "fork", "loky"])
def test_every_backend_gives_the_serial_numbers(
    melcli: RunMelcli, audio: AudioFactory, tmp_path: Path, backend: str
) -> None:
    for i in range(4):
        audio.mix(f"a{i}.wav", sr=16000, seconds=0.6 + 0.2 * i)
    assert (
        melcli("mfcc", "in", "-o", tmp_path / "one.h5", "-j", "1", "--deltas", "1").returncode == 0
    )
    out = tmp_path / f"{backend}.h5"
    proc = melcli("mfcc", "in", "-o", out, "-j", "2", "--backend", backend, "--deltas", "1")
    assert proc.returncode == 0, proc.stderr
    one, many = feature_arrays(tmp_path / "one.h5"), feature_arrays(out)
    assert sorted(one) == sorted(many)
    for key in one:
        np.testing.assert_array_equal(one[key], many[key])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--scale", "linear"], "--scale"),
        (["--n-mfcc", "200"], "--n-mfcc"),
        (["--dct-type", "1"], "--dct-type"),
        (["--deltas", "3"], "--deltas"),
        (["--complex"], "--complex"),
        # the other front end's options
        (["--preset", "kaldi", "--n-mels", "40"],
         "--n-mels does not apply to mfcc --frontend kaldi (it is a --frontend librosa option)"),
        (["--num-ceps", "3"],
         "--num-ceps does not apply to mfcc --frontend librosa (it is a --frontend kaldi option)"),
        (["--frontend", "kaldi", "--num-ceps", "30"], "--num-ceps"),
        (["--frontend", "kaldi", "--n-fft", "400"], "--n-fft does not apply"),
    ],
)  # fmt: skip
def test_bad_mfcc_options_are_usage_errors(
    melcli: RunMelcli, audio: AudioFactory, args: list[str], says: str
) -> None:
    audio.tone("a.wav", seconds=0.5)
    proc = melcli("mfcc", "in", "-o", "x.h5", *args)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert_no_traceback(proc.stderr)


def test_like_takes_an_mfcc_outputs_parameters(
    melcli: RunMelcli, audio: AudioFactory, tmp_path: Path
) -> None:
    audio.tone("a.wav", sr=16000, seconds=1.0)
    train = tmp_path / "train.h5"
    assert melcli("mfcc", "in", "-o", train, "--n-mfcc", "13", "--lifter", "22").returncode == 0
    proc = melcli("mfcc", "in", "-o", tmp_path / "test.h5", "--like", train, "--n-mels", "64")
    assert proc.returncode == 0
    assert "overriding n_mels 128 -> 64" in proc.stderr
    params = json.loads((tmp_path / "test.json").read_text())["params"]
    assert params["n_mfcc"] == 13 and params["lifter"] == 22.0 and params["n_mels"] == 64
    wrong = melcli("mel", "in", "-o", tmp_path / "m.h5", "--like", train)
    assert wrong.returncode == 2 and "mfcc output" in wrong.stderr


@pytest.mark.filterwarnings("ignore:n_fft=2048 is too large")
def test_short_signal_without_deltas_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "s.wav"
    sf.write(path, np.sin(np.arange(800) / 5).astype(np.float32), 16000)
    y, sr = librosa.load(path, sr=None)
    p = FeatureParams(kind="mfcc")
    assert_close(features.compute(y[None], sr, p), librosa_mfcc(y, sr, p))


# -- --frontend kaldi: Kaldi's compute-mfcc-feats, against kaldi-native-fbank ------------


def knf_mfcc(y: np.ndarray, sr: int, **opts: Any) -> np.ndarray:
    """kaldi-native-fbank's OnlineMfcc of int16-scaled samples, dither 0: (ceps, frames)."""
    import kaldi_native_fbank as knf

    o = knf.MfccOptions()
    o.frame_opts.dither = 0.0
    for name, value in opts.items():
        target = o.frame_opts if name in ("snip_edges", "window_type", "frame_length_ms") else (
            o.mel_opts if name == "num_bins" else o)  # fmt: skip
        setattr(target, name, value)
    f = knf.OnlineMfcc(o)
    f.accept_waveform(sr, (y * 32768).tolist())
    f.input_finished()
    return np.array([f.get_frame(i) for i in range(f.num_frames_ready)]).T


#: Kaldi computes in float32; its log bins differ from melcli's by up to ~5e-3 deep below
#: a frame's peak (tests/test_fbank.py), and the DCT and lifter (up to 12x) mix them.
KALDI_CEPS_TOL = 5e-3

KALDI_CASES = [
    ({}, {}),
    ({"raw_energy": False}, {"raw_energy": False}),
    ({"use_energy": False}, {"use_energy": False}),
    ({"num_ceps": 23, "cepstral_lifter": 0.0, "snip_edges": False},
     {"num_ceps": 23, "cepstral_lifter": 0.0, "snip_edges": False}),
    ({"num_mel_bins": 40, "num_ceps": 20, "window_type": "hamming", "frame_length": 32.0},
     {"num_bins": 40, "num_ceps": 20, "window_type": "hamming", "frame_length_ms": 32.0}),
]  # fmt: skip


@pytest.mark.parametrize(("mine", "theirs"), KALDI_CASES)
@pytest.mark.parametrize("name", ["speech/hello.wav", "speech/numbers.flac", "music/chords.flac"])
def test_kaldi_frontend_matches_kaldi_native_fbank(
    name: str, mine: dict[str, Any], theirs: dict[str, Any]
) -> None:
    y, sr, _ = audio_io.load(str(SAMPLES / name), sr=16000, mono=True)
    params = FeatureParams(kind="mfcc", frontend="kaldi", **mine)
    got, ref = features.compute(y, sr, params), knf_mfcc(y[0], sr, **theirs)
    assert got.shape == ref.shape
    err = np.abs(got - ref)
    assert err.max() <= KALDI_CEPS_TOL and np.median(err) <= 1e-4, float(err.max())


def test_mfcc_preset_kaldi_on_the_command_line(
    melcli: RunMelcli, audio: AudioFactory, tmp_path: Path
) -> None:
    audio.samples("speech/hello.wav", "music/chords.flac")
    audio.mix("x/mix44k.wav", sr=44100, seconds=1.0)  # resampled to 16 kHz
    out, deltas = tmp_path / "k.h5", tmp_path / "d.h5"
    proc = melcli("mfcc", "in", "-o", out, "--preset", "kaldi")
    assert proc.returncode == 0, proc.stderr
    proc = melcli("mfcc", "in", "-o", deltas, "--preset", "kaldi", "--deltas", "2")
    assert proc.returncode == 0 and "overriding deltas 0 -> 2" in proc.stderr, proc.stderr
    with melcli_lib.open(out) as feats, melcli_lib.open(deltas) as d:
        man = json.loads(out.with_suffix(".json").read_text())
        assert man["preset"] == "kaldi" and man["params"]["frontend"] == "kaldi"
        assert man["params"]["num_ceps"] == 13 and man["params"]["cepstral_lifter"] == 22.0
        for key in feats:
            y, sr, _ = audio_io.load(str(audio.root / key), sr=16000, mono=True)
            ref = knf_mfcc(y[0], sr)
            assert feats[key].shape == ref.shape and ref.shape[0] == 13
            assert np.abs(feats[key] - ref).max() <= KALDI_CEPS_TOL
            # add-deltas (proven against Kaldi's on fbank) of the coefficients, stacked
            stacked = d[key]
            assert stacked.shape == (39, ref.shape[1])
            np.testing.assert_array_equal(stacked[:13], feats[key])
            np.testing.assert_allclose(stacked[13:26], kaldi_deltas(feats[key]), atol=1e-5)
            np.testing.assert_allclose(stacked[26:], kaldi_deltas(kaldi_deltas(feats[key])),
                                       atol=1e-5)  # fmt: skip
        assert list(feats.frequencies(key)) == list(range(13))
    like = melcli("mfcc", "in", "-o", tmp_path / "l.h5", "--like", out, "--num-ceps", "10")
    assert like.returncode == 0, like.stderr
    assert feature_arrays(tmp_path / "l.h5")["speech/hello.wav"].shape[0] == 10


def test_front_ends_round_trip_and_validate() -> None:
    kaldi = FeatureParams(kind="mfcc", frontend="kaldi")
    assert type(kaldi).__name__ == "KaldiMfccParams" and kaldi.use_energy and kaldi.n_bins == 13
    assert FeatureParams.from_dict(kaldi.to_dict()) == kaldi
    assert FeatureParams(kind="mfcc").frontend == "librosa"
    with pytest.raises(ParameterError, match="frontend='htk' must be one of: librosa, kaldi"):
        FeatureParams(kind="mfcc", frontend="htk")
    with pytest.raises(ParameterError, match="does not apply to mfcc"):
        FeatureParams(kind="mfcc", frontend="kaldi", n_mels=40)
