"""Long files are computed as frame-range parts: same numbers as the whole file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from melcli import audio, features, pipeline
from melcli.cli import cli
from melcli.discover import Source
from melcli.params import FeatureParams

SPEECH = ["--sr", "16000", "--n-fft", "512", "--win-length", "400", "--hop-length", "160",
          "--n-mels", "80"]  # fmt: skip


def _signal(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(t / 3)) * t) + 0.02 * rng.standard_normal(
        t.size
    )
    return np.stack([y * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)


def _whole(path: Path, params: FeatureParams) -> np.ndarray:
    y, sr, _ = audio.load(str(path), sr=params.sr, mono=params.mono)
    return features.compute(y, sr, params)


@pytest.mark.parametrize(
    "kw",
    [
        {"kind": "mel"},
        {"kind": "stft", "pad_mode": "reflect", "scale": "db"},
        {"kind": "mel", "center": False, "n_fft": 512, "win_length": 400, "hop_length": 160},
        {"kind": "stft", "complex": True, "mono": False, "pad_mode": "edge", "n_fft": 511},
        {"kind": "mel", "mono": False, "scale": "log", "window": "kaiser:8"},
    ],
)
def test_parts_equal_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kw: dict
) -> None:
    path = tmp_path / "long.flac"
    sf.write(path, _signal(20.0, 16000, channels=2), 16000)
    params = FeatureParams(**kw)
    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 50_000)
    monkeypatch.setattr(pipeline, "PART_SAMPLES", 30_000)
    info = audio.probe(str(path))
    tasks = pipeline.make_tasks(Source("long.flac", str(path)), info, params)
    assert len(tasks) > 5
    assert tasks[-1].frame_stop == params.n_frames(info.frames)
    assert [t.frame_start for t in tasks] == sorted(t.frame_start for t in tasks)
    pieces = [pipeline.extract(t, params) for t in tasks]
    assert all(r.failure is None for r in pieces)
    joined = np.concatenate([r.data for r in pieces], axis=-1)  # type: ignore[misc]
    whole = _whole(path, params)
    assert pieces[0].meta is not None and pieces[0].meta.shape == whole.shape == joined.shape
    if np.iscomplexobj(whole):
        np.testing.assert_array_equal(joined, whole)
    else:
        tol = 1e-6 * float(np.abs(whole).max())
        np.testing.assert_allclose(joined, whole, rtol=0, atol=tol)


def test_not_split_when_resampling_lossy_or_top_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 1000)
    monkeypatch.setattr(pipeline, "PART_SAMPLES", 4000)
    wav, ogg = tmp_path / "a.wav", tmp_path / "a.ogg"
    sf.write(wav, _signal(2.0, 16000), 16000)
    sf.write(ogg, _signal(2.0, 16000), 16000)
    src = Source("a", str(wav))
    assert len(pipeline.make_tasks(src, audio.probe(str(wav)), FeatureParams(kind="mel"))) > 1
    for params, path in (
        (FeatureParams(kind="mel", sr=22050), wav),
        (FeatureParams(kind="mel", scale="db", top_db=80), wav),
        (FeatureParams(kind="mel"), ogg),
    ):
        assert len(pipeline.make_tasks(src, audio.probe(str(path)), params)) == 1


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split files above 40 000 samples into parts of about 16 000 (seconds, not hours)."""
    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 40_000)
    monkeypatch.setattr(pipeline, "PART_SAMPLES", 16_000)


@pytest.mark.usefixtures("small_parts")
def test_cli_long_file_h5_and_npy_identical_and_resumable(tmp_path: Path) -> None:
    """Through the CLI: written in place part by part, h5 == npy == the whole file."""
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "long.wav", _signal(15.0, 16000), 16000, subtype="PCM_16")
    sf.write(data / "short.wav", _signal(1.0, 16000, seed=2), 16000, subtype="PCM_16")
    runner = CliRunner()
    for out in (tmp_path / "o.h5", tmp_path / "o"):
        res = runner.invoke(cli, ["mel", str(data), "-o", str(out), "-j", "1", *SPEECH])
        assert res.exit_code == 0, res.stderr
    with h5py.File(tmp_path / "o.h5", "r") as f:
        h5 = f["features/long.wav"][()]
    npy = np.load(tmp_path / "o" / "long.wav.npy", allow_pickle=False)
    np.testing.assert_array_equal(h5, npy)
    speech = FeatureParams(
        kind="mel", sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=80
    )
    whole = _whole(data / "long.wav", speech)
    np.testing.assert_allclose(h5, whole, rtol=0, atol=1e-6 * float(whole.max()))
    man = json.loads((tmp_path / "o.json").read_text())
    rec = next(e for e in man["entries"] if e["key"] == "long.wav")
    assert rec["shape"] == [80, 1 + 240000 // 160] and "part" not in rec


def test_real_hour_scale_file_streams_with_two_jobs(tmp_path: Path) -> None:
    """A file above the real split threshold, through the real executable with -j 2."""
    data = tmp_path / "data"
    data.mkdir()
    seconds = (pipeline.SPLIT_SAMPLES + 3 * pipeline.PART_SAMPLES) / 16000
    sf.write(data / "long.flac", _signal(seconds, 16000), 16000)
    out = tmp_path / "long.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "melcli", "mel", str(data), "-o", str(out), "-j", "2", *SPEECH],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    params = FeatureParams(kind="mel", sr=16000, n_fft=512, win_length=400, hop_length=160,
                           n_mels=80)  # fmt: skip
    whole = _whole(data / "long.flac", params)
    with h5py.File(out, "r") as f:
        got = f["features/long.flac"][()]
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6 * float(whole.max()))


@pytest.mark.parametrize("n_samples", [48_000, 48_000 + 1, 48_000 + 159, 47_999])
def test_last_part_keeps_enough_samples_for_reflect_padding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_samples: int
) -> None:
    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 1000)
    monkeypatch.setattr(pipeline, "PART_SAMPLES", 1600)
    path = tmp_path / "a.wav"
    sf.write(path, _signal(n_samples / 16000, 16000)[:n_samples], 16000, subtype="FLOAT")
    params = FeatureParams(kind="stft", n_fft=512, hop_length=160, pad_mode="reflect")
    tasks = pipeline.make_tasks(Source("a", str(path)), audio.probe(str(path)), params)
    parts = [pipeline.extract(t, params).data for t in tasks]
    joined = np.concatenate(parts, axis=-1)  # type: ignore[arg-type]
    np.testing.assert_array_equal(joined, _whole(path, params))


@pytest.mark.usefixtures("small_parts")
def test_long_file_failing_in_several_parts_is_one_skip_line(tmp_path: Path) -> None:
    """A long FLAC cut short: its later parts all fail; the user hears about the file once."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "sub").mkdir()
    sf.write(data / "sub" / "cut.flac", _signal(15.0, 16000), 16000)
    sf.write(data / "ok.wav", _signal(1.0, 16000, seed=2), 16000, subtype="PCM_16")
    raw = (data / "sub" / "cut.flac").read_bytes()
    (data / "sub" / "cut.flac").write_bytes(raw[: len(raw) // 3])  # STREAMINFO still says 15 s
    for out in (tmp_path / "o.h5", tmp_path / "o"):
        res = CliRunner().invoke(cli, ["mel", str(data), "-o", str(out), "-j", "1", *SPEECH])
        assert res.exit_code == 3, res.stderr
        skipped = [line for line in res.stderr.splitlines() if line.startswith("melcli: skip")]
        assert len(skipped) == 1, res.stderr
        assert skipped[0].startswith("melcli: skipped sub/cut.flac:"), res.stderr
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert list(f["features"]) == ["ok.wav"]  # no empty group left for sub/
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["manifest.json", "ok.wav.npy"]
    man = json.loads((tmp_path / "o.json").read_text())
    assert [f["key"] for f in man["failures"]] == ["sub/cut.flac"]
