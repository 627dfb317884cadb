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
from melcli.errors import DecodeError
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


def _whole(path: Path, params: FeatureParams, key: str | None = None) -> np.ndarray:
    """The file's features in one piece (the entry's seed from ``key``, default its name)."""
    y, sr, _ = audio.load(str(path), sr=params.sr, mono=params.mono)
    return features.compute(y, sr, params, seed=features.entry_seed(key or path.name))


@pytest.mark.parametrize(
    "kw",
    [
        {"kind": "mel"},
        {"kind": "stft", "pad_mode": "reflect", "scale": "db"},
        {"kind": "mel", "center": False, "n_fft": 512, "win_length": 400, "hop_length": 160},
        {"kind": "stft", "complex": True, "mono": False, "pad_mode": "edge", "n_fft": 511},
        {"kind": "mel", "mono": False, "scale": "log", "window": "kaiser:8"},
        # Kaldi framing: snip edges, and edge-repeating reflection at both ends
        {"kind": "fbank"},
        {"kind": "fbank", "snip_edges": False, "mono": False, "num_mel_bins": 40},
        # Kaldi's energy row and dither (drawn by frame index), and Kaldi's MFCCs
        {"kind": "fbank", "use_energy": True, "dither": 1.0, "snip_edges": False},
        {"kind": "mfcc", "frontend": "kaldi", "mono": False},
        # the DCT is frame by frame: without top_db (--scale log) an mfcc file is split too
        {"kind": "mfcc", "mono": False, "scale": "log", "n_mfcc": 13, "lifter": 22.0},
        # librosa's separately reflected tail (hop > n_fft / 2): features._librosa_tail
        {
            "kind": "stft",
            "pad_mode": "reflect",
            "n_fft": 256,
            "hop_length": 200,
            "window": "rectangular",
        },
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
        (FeatureParams(kind="mfcc"), wav),  # top_db 80 over the whole entry
    ):
        tasks = pipeline.make_tasks(src, audio.probe(str(path)), params)
        # one task, decoded in blocks: a long file is never held whole
        assert len(tasks) == 1 and tasks[0].stream


@pytest.mark.parametrize(
    ("suffix", "kw"),
    [(".wav", {"kind": "mfcc", "deltas": 2}), (".ogg", {"kind": "mel", "mono": False}),
     (".wav", {"kind": "mfcc", "frontend": "kaldi", "deltas": 2, "snip_edges": False}),
     (".flac", {"kind": "mel", "scale": "db", "top_db": 60.0, "normalize": "meanvar"})],
)  # fmt: skip
def test_long_unsplittable_file_streams_at_its_own_rate_as_the_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, kw: dict
) -> None:
    """No resampling, no split (a whole-entry stage, or a format that does not seek
    exactly): decoded in blocks, the features equal the whole file's."""
    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 20_000)
    monkeypatch.setattr(audio, "STREAM_SAMPLES", 7000)  # several blocks
    monkeypatch.setattr(features, "RUN_SAMPLES", 16_000)
    path = tmp_path / f"long{suffix}"
    sf.write(path, _signal(6.0, 16000, channels=2), 16000)
    params = FeatureParams(**kw)
    info = audio.probe(str(path))
    (task,) = pipeline.make_tasks(Source("long", str(path)), info, params)
    assert task.stream
    res = pipeline.extract(task, params)
    assert res.failure is None and res.data is not None and res.meta is not None
    whole = _whole(path, params, "long")
    assert res.data.shape == whole.shape == tuple(res.meta.shape)
    np.testing.assert_allclose(res.data, whole, rtol=0, atol=1e-5 * float(np.abs(whole).max()))
    assert res.meta.n_samples == info.frames and res.meta.sample_rate == 16000


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


# ---------------------------------------------------------------------------
# files that need resampling: decoded, resampled and computed block by block
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rate", "sr", "channels", "n"),
    [(44100, 16000, 1, 123_457), (8000, 48000, 2, 40_001), (48000, 22050, 2, 96_000)],
)
def test_resampled_blocks_are_the_whole_file_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int, sr: int, channels: int, n: int
) -> None:
    """soxr fed in blocks gives exactly soxr over the whole signal, librosa's length included."""
    path = tmp_path / "a.wav"
    sf.write(path, _signal(n / rate + 1, rate, channels=channels)[:n], rate, subtype="FLOAT")
    monkeypatch.setattr(audio, "STREAM_SAMPLES", 5000)  # dozens of blocks
    monkeypatch.setattr(features, "RUN_SAMPLES", 20_000)  # and of frame runs
    for mono in (True, False):
        whole, _, _ = audio.load(str(path), sr=sr, mono=mono)
        blocks = list(audio.stream(str(path), sr=sr, mono=mono))
        assert len(blocks) > 5
        np.testing.assert_array_equal(np.concatenate(blocks, axis=-1), whole)
        for params in (
            FeatureParams(kind="mel", sr=sr, mono=mono, scale="db", top_db=60.0),
            FeatureParams(kind="stft", sr=sr, mono=mono, complex=True, n_fft=511, hop_length=100),
            FeatureParams(kind="mel", sr=sr, mono=mono, center=False, dtype="float16"),
            # top_db over the whole entry, then the DCT, then deltas across frames
            FeatureParams(kind="mfcc", sr=sr, mono=mono, deltas=2),
            FeatureParams(kind="mel", sr=sr, mono=mono, scale="log", normalize="meanvar"),
            # Kaldi framing: reflection at both ends of the stream; deltas over the whole
            FeatureParams(kind="fbank", sr=sr, mono=mono, snip_edges=False),
            FeatureParams(kind="fbank", sr=sr, mono=mono, deltas=2, window_type="hamming"),
            # Whisper: zeros after the end, the clip over every frame touching the signal
            FeatureParams(
                kind="mel",
                sr=sr,
                mono=mono,
                n_fft=400,
                hop_length=160,
                pad_mode="reflect",
                tail="zeros",
                scale="whisper",
                top_db=8.0,
            ),
        ):
            got = features.compute_stream(iter(blocks), sr, params, expected_samples=n)
            want = features.compute(whole, sr, params)
            assert got.shape == want.shape and got.dtype == want.dtype
            tol = 1e-6 * float(np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_streamed_file_fails_as_the_whole_file_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaNs spread over many blocks: the same count as for the whole file; a cut FLAC."""
    monkeypatch.setattr(audio, "STREAM_SAMPLES", 4096)
    y = _signal(3.0, 16000)
    y[100:110] = np.nan
    y[30_000:30_005] = np.inf
    sf.write(tmp_path / "nan.wav", y, 16000, subtype="FLOAT")
    cut = tmp_path / "cut.flac"
    sf.write(cut, _signal(20.0, 16000), 16000)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(DecodeError) as whole:
        audio.load(str(tmp_path / "nan.wav"), sr=8000, mono=True)
    with pytest.raises(DecodeError) as streamed:
        list(audio.stream(str(tmp_path / "nan.wav"), sr=8000, mono=True))
    assert str(streamed.value) == str(whole.value) == "audio contains 15 NaN/Inf samples"
    # libsndfile words it differently when read in blocks; a file failure all the same
    with pytest.raises(DecodeError, match="^cannot decode: |^truncated: "):
        list(audio.stream(str(cut), sr=8000, mono=True))


def _write_long(path: Path, seconds: int, sr: int) -> None:
    """A PCM_16 file of ``seconds``, written ten seconds at a time (no hour in memory):
    ten seconds of a chirp in noise, rotated by a different amount each time."""
    base = (_signal(10.0, sr, seed=7)[:, 0] * 32767).astype(np.int16)
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        for i in range(seconds // 10):
            f.write(np.roll(base, i * 7919))


def test_hour_long_file_resampled_in_bounded_memory_matches_librosa(tmp_path: Path) -> None:
    """An hour at 44.1 kHz -> 16 kHz through the real executable: its peak memory stays
    far below the hour's samples (636 MB as float32), and the first and last 30 s equal
    librosa.load(sr=16000) + melspectrogram of the whole file."""
    import librosa

    data = tmp_path / "data"
    data.mkdir()
    _write_long(data / "hour.wav", 3600, 44100)
    out = tmp_path / "hour.h5"
    # the peak RSS of melcli alone: this wrapper's only child
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "melcli", "mel", str(data),
         "-o", str(out), "--sr", "16000", "-q"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split()[-1]) / 1024
    assert peak_mb < 400, f"melcli peaked at {peak_mb:.0f} MB"  # whole-file resampling: 1.1 GB
    with h5py.File(out) as f:
        got = f["features/hour.wav"][()]
    y, sr = librosa.load(data / "hour.wav", sr=16000)  # the whole file, resampled
    assert got.shape == (128, 1 + len(y) // 512)
    # librosa's frames on slices of it only: frames away from a slice's cut are
    # the whole signal's, and the last frames see the real end of the signal
    thirty, hop, margin = 30 * 16000 // 512, 512, 4
    head = librosa.feature.melspectrogram(y=y[: (thirty + margin) * hop], sr=sr)[:, :thirty]
    start = (len(y) // hop - thirty - margin) * hop  # frame-aligned
    tail = librosa.feature.melspectrogram(y=y[start:], sr=sr)[:, margin:]
    assert tail.shape[1] >= thirty
    for ref, ours_ in ((head, got[:, :thirty]), (tail, got[:, start // hop + margin :])):
        assert ours_.shape == ref.shape
        np.testing.assert_allclose(ours_, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


def test_absurd_resampling_ratio_is_a_recorded_failure(tmp_path: Path) -> None:
    """A header claiming 1 Hz (long once resampled) or 100 Hz (short): one line each."""
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "onehz.wav", _signal(20_000, 1)[:20_000], 1, subtype="PCM_16")
    sf.write(data / "hundred.wav", _signal(10.0, 100), 100, subtype="PCM_16")
    sf.write(data / "ok.wav", _signal(1.0, 8000), 8000, subtype="PCM_16")
    out = tmp_path / "o.h5"
    res = CliRunner().invoke(cli, ["mel", str(data), "-o", str(out), "-j", "1", "--sr", "48000"])
    assert res.exit_code == 3, res.stderr
    man = json.loads((tmp_path / "o.json").read_text())
    assert {f["key"]: f["reason"] for f in man["failures"]} == {
        "onehz.wav": "cannot resample 1 Hz to 48000 Hz: ratio above 256",
        "hundred.wav": "cannot resample 100 Hz to 48000 Hz: ratio above 256",
    }
    assert [e["key"] for e in man["entries"]] == ["ok.wav"]
    assert "melcli: skipped onehz.wav: cannot resample 1 Hz to 48000 Hz: ratio above 256" in (
        res.stderr
    )
    # the header's rate is the file's content: not retried until the file changes
    res = CliRunner().invoke(cli, ["mel", str(data), "-o", str(out), "-j", "1", "--sr", "48000"])
    assert res.exit_code == 3 and "skipped" not in res.stderr
    assert "unchanged 1, failed 2" in res.stderr
