"""The reading side (issue 9): melcli.open over HDF5 and npy outputs, checked
against h5py / numpy reads of the same files, across fork and after incremental
reruns; --like reuses an output's parameters."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import h5py
import librosa
import numpy as np
import pytest

import melcli as melcli_lib
from melcli.errors import OutputError
from melcli.params import FeatureParams
from tests.conftest import AudioFactory, RunMelcli, h5py_arrays


@pytest.fixture
def data(audio: AudioFactory) -> Path:
    audio.mix("spk1/a.wav", sr=16000, seconds=1.0)
    audio.mix("spk1/b.flac", sr=22050, seconds=0.7, channels=2)
    audio.tone("spk2/c.wav", sr=16000, seconds=0.4)
    audio.raw("spk2/bad.wav", b"RIFF....WAVEnope")
    return audio.root


def _npy_arrays(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root))[: -len(".npy")]: np.load(p) for p in root.rglob("*.npy")}


def _kaldiio_arrays(root: Path) -> dict[str, np.ndarray]:
    import kaldiio

    return {key: mat.T for key, mat in kaldiio.load_scp(str(root / "feats.scp")).items()}


@pytest.mark.parametrize("fmt", ["h5", "npy", "kaldi"])
def test_open_reads_what_h5py_and_numpy_read(
    data: Path, melcli: RunMelcli, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / ("o.h5" if fmt == "h5" else "o")
    assert melcli("mel", "in", "-o", out, "--n-mels", "40", "--format", fmt).returncode == 3
    want = {"h5": h5py_arrays, "npy": _npy_arrays, "kaldi": _kaldiio_arrays}[fmt](out)
    man_path = out.with_suffix(".json") if fmt == "h5" else out / "manifest.json"
    man = json.loads(man_path.read_text())
    for path in (out, man_path):
        with melcli_lib.open(path) as feats:
            assert list(feats) == sorted(want) == [e["key"] for e in man["entries"]]
            assert len(feats) == 3 and "spk1/a.wav" in feats and "spk2/bad.wav" not in feats
            for key, arr in want.items():
                got = feats[key]
                assert got.dtype == arr.dtype
                np.testing.assert_array_equal(got, arr)
                np.testing.assert_array_equal(feats.read(key, frames=slice(3, 9)), arr[..., 3:9])
            assert feats.params == man["params"]
            assert FeatureParams.from_dict(feats.params).n_mels == 40
            assert feats.entry("spk1/b.flac") == man["entries"][1]
            assert [f["key"] for f in feats.failures] == ["spk2/bad.wav"]
            with pytest.raises(KeyError):
                feats["nope.wav"]
            freqs = feats.frequencies("spk1/b.flac")
            np.testing.assert_allclose(freqs, man["frequencies"]["22050"])
            np.testing.assert_allclose(
                freqs, librosa.mel_frequencies(n_mels=42, fmax=11025.0)[1:-1], rtol=1e-12
            )
            times = feats.times("spk1/a.wav")
            np.testing.assert_allclose(
                times, librosa.frames_to_time(np.arange(want["spk1/a.wav"].shape[-1]), sr=16000)
            )


def test_times_without_center_are_frame_centres(
    data: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    assert melcli("stft", "in", "-o", "s.h5", "--n-fft", "512", "--no-center").returncode == 3
    with melcli_lib.open(tmp_path / "s.h5") as feats:
        n = feats["spk1/a.wav"].shape[-1]
        assert n == 1 + (16000 - 512) // 128
        want = librosa.frames_to_time(np.arange(n), sr=16000, hop_length=128, n_fft=512)
        np.testing.assert_allclose(feats.times("spk1/a.wav"), want)


def _read_all(args: tuple[melcli_lib.reader.Features, str]) -> float:
    feats, key = args
    return float(np.asarray(feats[key], np.float64).sum())


def test_a_mapping_opened_in_the_parent_works_in_forked_workers(
    data: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    """A DataLoader forks after the dataset has read something: each worker must
    open its own HDF5 handle (sharing the parent's corrupts reads)."""
    assert melcli("mel", "in", "-o", "o.h5").returncode == 3
    feats = melcli_lib.open(tmp_path / "o.h5")
    keys = list(feats) * 20
    want = [float(np.asarray(feats[k], np.float64).sum()) for k in keys]  # parent's handle open
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(_read_all, [(feats, k) for k in keys], chunksize=3)
    assert got == want
    # and in the workers' own forks of the mapping (no pickling)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        queue.put([float(np.asarray(feats[k], np.float64).sum()) for k in keys])

    procs = [ctx.Process(target=child) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == [want, want]
    feats.close()


def test_a_crop_reads_only_its_frames(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """100 frames of a long entry: a few KB read from the file, not the whole entry."""
    audio.mix("long.wav", sr=16000, seconds=120.0)
    assert (
        melcli("stft", "in", "-o", "l.h5", "--n-fft", "512", "--hop-length", "64").returncode == 0
    )

    def rchar() -> int:
        with open("/proc/self/io") as fh:
            return int(next(line for line in fh if line.startswith("rchar")).split()[1])

    with melcli_lib.open(tmp_path / "l.h5") as feats:
        feats.entry("long.wav")
        with h5py.File(tmp_path / "l.h5") as f:
            whole = f["features/long.wav"].nbytes
        before = rchar()
        crop = feats.read("long.wav", frames=slice(15000, 15100))
        read = rchar() - before
    assert crop.shape == (257, 100)
    assert whole > 10_000_000 and read < whole / 50, (read, whole)


def test_reopened_after_incremental_reruns(
    data: Path, audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    assert melcli("mel", "in", "-o", "o.h5").returncode == 3
    (tmp_path / "in/spk2/c.wav").unlink()
    audio.mix("spk3/d.wav", sr=16000, seconds=0.5)
    audio.tone("spk1/a.wav", freq=1234, sr=16000, seconds=0.6)  # changed
    assert melcli("mel", "in", "-o", "o.h5").returncode == 3
    want = h5py_arrays(tmp_path / "o.h5")
    with melcli_lib.open(tmp_path / "o.h5") as feats:
        assert list(feats) == ["spk1/a.wav", "spk1/b.flac", "spk3/d.wav"] == sorted(want)
        for key in feats:
            np.testing.assert_array_equal(feats[key], want[key])


def test_open_refuses_what_is_not_a_melcli_output(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = [1]
    with pytest.raises(OutputError, match="not a melcli output: no /manifest"):
        melcli_lib.open(tmp_path / "x.h5")
    (tmp_path / "y.txt").write_text("hello")
    with pytest.raises(OutputError, match="is not a melcli output"):
        melcli_lib.open(tmp_path / "y.txt")


def test_import_melcli_loads_no_numpy() -> None:
    code = "import sys, melcli; print('numpy' in sys.modules, 'h5py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_like_takes_the_parameters_and_says_each_override(
    data: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    opts = ["--sr", "16000", "--n-fft", "512", "--hop-length", "160", "--n-mels", "40",
            "--scale", "log", "--fmax", "7600"]  # fmt: skip
    assert melcli("mel", "in", "-o", "train.h5", *opts).returncode == 3
    train = json.loads((tmp_path / "train.json").read_text())["params"]
    for like in ("train.h5", "train.json"):
        out = f"test-{like}.h5"
        proc = melcli("mel", "in/spk1", "-o", out, "--like", like)
        assert proc.returncode == 0, proc.stderr
        assert "overriding" not in proc.stderr
        assert json.loads(Path(tmp_path / out).with_suffix(".json").read_text())["params"] == train
    proc = melcli("mel", "in/spk1", "-o", "t64.h5", "--like", "train.h5", "--n-mels", "64",
                  "--hop-length", "160")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "--like" in line]
    assert lines == ["melcli: --like train.h5, overriding n_mels 40 -> 64"]  # 160 is no change
    got = json.loads((tmp_path / "t64.json").read_text())["params"]
    assert got == {**train, "n_mels": 64}
    assert melcli("stft", "in/spk1", "-o", "npy", "--n-fft", "256").returncode == 0
    proc = melcli("stft", "in/spk1", "-o", "s.h5", "--like", "npy")
    assert (
        proc.returncode == 0
        and json.loads((tmp_path / "s.json").read_text())["params"]["n_fft"] == 256
    )


def test_like_of_another_kind_or_of_something_else_is_a_usage_error(
    data: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    assert melcli("mel", "in", "-o", "m.h5").returncode == 3
    proc = melcli("stft", "in", "-o", "s.h5", "--like", "m.h5")
    assert proc.returncode == 2
    assert "--like m.h5 is a melcli mel output, not stft" in proc.stderr
    (tmp_path / "notes.json").write_text('{"a": 1}')
    proc = melcli("mel", "in", "-o", "x.h5", "--like", "notes.json")
    assert proc.returncode == 2 and "--like notes.json:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "x.h5").exists()


def test_readme_dataset_example_runs(data: Path, melcli: RunMelcli, tmp_path: Path) -> None:
    """The README's PyTorch-style dataset, run as written (a stand-in for torch's base class)."""
    import random
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "class Features" in b
    ]
    space: dict[str, object] = {"melcli": melcli_lib, "random": random}
    exec(block, space)  # noqa: S102
    assert melcli("mel", "in", "-o", "o.h5").returncode == 3
    dataset = space["Features"](tmp_path / "o.h5", frames=5)  # type: ignore[operator]
    assert len(dataset) == 3
    full = h5py_arrays(tmp_path / "o.h5")
    for i, key in enumerate(sorted(full)):
        crop = dataset[i]
        assert crop.shape == (*full[key].shape[:-1], min(5, full[key].shape[-1]))
        starts = [
            s for s in range(full[key].shape[-1]) if np.array_equal(full[key][..., s : s + 5], crop)
        ]
        assert starts  # a real window of the entry


def _numpy_stats(arrays: dict[str, np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """count, mean, std per row over the concatenated frames (channels as frames)."""
    cols = [a.astype(np.float64).reshape(-1, a.shape[-2], a.shape[-1]) for a in arrays.values()]
    x = np.concatenate([np.concatenate(list(c), axis=-1) for c in cols], axis=-1)
    return x.shape[-1], x.mean(axis=-1), x.std(axis=-1)


def _assert_stats(path: Path, arrays: dict[str, np.ndarray]) -> None:
    count, mean, std = _numpy_stats(arrays)
    stats = melcli_lib.open(path).stats
    assert stats is not None and stats["count"] == count
    scale = float(np.abs(mean).max()) + float(std.max())
    np.testing.assert_allclose(stats["mean"], mean, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(stats["std"], std, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize(
    ("fmt", "extra"), [("h5", ()), ("npy", ()), ("h5", ("--keep-channels", "--scale", "db"))]
)
def test_dataset_statistics_equal_numpy_through_reruns(
    data: Path, audio: AudioFactory, melcli: RunMelcli, tmp_path: Path,
    fmt: str, extra: tuple[str, ...],
) -> None:  # fmt: skip
    """Global CMVN statistics: exact to float64 accumulation, and kept exact by
    incremental reruns (add, change, remove) without rereading kept entries."""
    out = tmp_path / ("o.h5" if fmt == "h5" else "o")

    def arrays() -> dict[str, np.ndarray]:
        return h5py_arrays(out) if fmt == "h5" else _npy_arrays(out)

    assert melcli("mel", "in", "-o", out, *extra).returncode == 3
    _assert_stats(out, arrays())
    audio.mix("spk3/new.wav", sr=16000, seconds=0.8)
    assert melcli("mel", "in", "-o", out, *extra).returncode == 3
    _assert_stats(out, arrays())
    audio.tone("spk1/a.wav", freq=3000, sr=16000, seconds=0.3)  # changed
    (tmp_path / "in/spk2/c.wav").unlink()  # removed
    proc = melcli("mel", "in", "-o", out, *extra)
    assert proc.returncode == 3 and "updated 1, removed 1" in proc.stderr
    _assert_stats(out, arrays())
    info = json.loads(melcli("inspect", out, "--json").stdout)
    assert info["stats"]["count"] == melcli_lib.open(out).stats["count"]
    assert "statistics: " in melcli("inspect", out).stdout


def test_statistics_after_a_resume_and_a_repair(
    data: Path, audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    import os

    for i in range(6):
        audio.mix(f"more/m{i}.wav", sr=16000, seconds=0.5)
    env = {**os.environ, "MELCLI_CHECKPOINT_SECONDS": "0", "MELCLI_KILL_AT": "write:5"}
    killed = subprocess.run(
        [sys.executable, "-m", "melcli", "mel", "in", "-o", "o.h5", "-j", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9
    proc = melcli("mel", "in", "-o", "o.h5", "-j", "1")
    assert proc.returncode == 3 and "resumed:" in proc.stderr, proc.stderr
    _assert_stats(tmp_path / "o.h5", h5py_arrays(tmp_path / "o.h5"))
    with h5py.File(tmp_path / "o.h5", "r+") as f:
        del f["features/more/m2.wav"]  # deleted by hand: its frames cannot be subtracted
    proc = melcli("mel", "in", "-o", "o.h5", "-j", "1")
    assert "repaired: 1 entries" in proc.stderr
    _assert_stats(tmp_path / "o.h5", h5py_arrays(tmp_path / "o.h5"))


def test_complex_stft_has_no_statistics(data: Path, melcli: RunMelcli, tmp_path: Path) -> None:
    assert melcli("stft", "in", "-o", "c.h5", "--complex").returncode == 3
    assert json.loads((tmp_path / "c.json").read_text())["stats"] is None
    assert melcli_lib.open(tmp_path / "c.h5").stats is None
