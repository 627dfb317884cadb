"""--compression gzip|lzf|none for HDF5 outputs (issue 14.17): h5py's filters,
chunked along time, the same numbers as an uncompressed output, recorded, kept
on incremental reruns and refused when a rerun asks for another."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from melcli import pipeline, store
from tests.conftest import AudioFactory, Invoke, RunMelcli, assert_no_traceback, feature_arrays


@pytest.fixture
def data(audio: AudioFactory) -> Path:
    audio.mix("speech/a.wav", sr=16000, seconds=2.0)
    audio.mix("music/b.flac", sr=44100, seconds=1.5, channels=2)
    audio.tone("c.wav", sr=22050, seconds=0.05)
    return audio.root


@pytest.mark.parametrize("method", ["gzip", "lzf"])
def test_compressed_output_equals_the_uncompressed_one(
    data: Path, melcli: RunMelcli, tmp_path: Path, method: str
) -> None:
    for kind, extra in (("mel", ()), ("stft", ("--keep-channels", "--n-fft", "1024"))):
        plain, packed = tmp_path / f"{kind}-none.h5", tmp_path / f"{kind}-{method}.h5"
        assert melcli(kind, "in", "-o", plain, *extra).returncode == 0
        proc = melcli(kind, "in", "-o", packed, "--compression", method.upper(), *extra)
        assert proc.returncode == 0, proc.stderr
        want, got = feature_arrays(plain), feature_arrays(packed)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        with h5py.File(packed) as f, h5py.File(plain) as g:
            assert f.attrs["compression"] == method
            for key in want:
                ds = f[f"features/{key}"]
                assert ds.compression == method and ds.shuffle
                rows, itemsize = int(np.prod(ds.shape[:-1])), ds.dtype.itemsize
                frames = max(1, min(ds.shape[-1], store.CHUNK_BYTES // (rows * itemsize)))
                assert ds.chunks == (*ds.shape[:-1], frames)  # every row, a span of frames
                assert g[f"features/{key}"].chunks is None  # none: contiguous, as before
        man = json.loads(packed.with_suffix(".json").read_text())
        assert man["compression"] == method
        assert json.loads(plain.with_suffix(".json").read_text())["compression"] == "none"
        info = json.loads(melcli("inspect", packed, "--json").stdout)
        assert info["compression"] == method
        assert f"({'h5'}, {method})" in melcli("inspect", packed).stdout


def test_rerun_keeps_the_compression_and_refuses_another(
    data: Path, melcli: RunMelcli, audio: AudioFactory, tmp_path: Path
) -> None:
    out = tmp_path / "o.h5"
    assert melcli("mel", "in", "-o", out, "--compression", "gzip").returncode == 0
    before = out.read_bytes()
    proc = melcli("mel", "in", "-o", out, "--compression", "lzf")
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 2
    assert "is stored with --compression gzip, not lzf: use --overwrite" in proc.stderr
    proc = melcli("mel", "in", "-o", out)  # the default is none: also another
    assert proc.returncode == 2 and "not none" in proc.stderr
    assert out.read_bytes() == before
    audio.mix("speech/new.wav", sr=16000, seconds=1.0)
    proc = melcli("mel", "in", "-o", out, "--compression", "gzip")
    assert proc.returncode == 0, proc.stderr
    assert "added 1, updated 0, removed 0, unchanged 3" in proc.stderr
    with h5py.File(out) as f:
        assert f["features/speech/new.wav"].compression == "gzip"
        assert f["features/speech/a.wav"].compression == "gzip"
    proc = melcli("mel", "in", "-o", out, "--compression", "lzf", "--overwrite")
    assert proc.returncode == 0
    with h5py.File(out) as f:
        assert f["features/speech/new.wav"].compression == "lzf"


def test_npy_output_cannot_be_compressed(data: Path, melcli: RunMelcli, tmp_path: Path) -> None:
    proc = melcli("mel", "in", "-o", "feats", "--compression", "gzip")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "Error: --compression gzip applies to HDF5 outputs; feats is a directory of .npy "
        "files, which are not compressed: use an .h5 output"
    )
    assert not (tmp_path / "feats").exists()
    assert melcli("mel", "in", "-o", "feats", "--compression", "none").returncode == 0


def test_long_file_written_in_parts_into_compressed_chunks(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long file's parts land in place in a chunked, compressed dataset."""
    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 20_000)
    monkeypatch.setattr(pipeline, "PART_SAMPLES", 8_000)
    audio.mix("long.wav", sr=16000, seconds=6.0)
    assert invoke("mel", "in", "-o", "plain.h5", "-j", "2").exit_code == 0
    res = invoke("mel", "in", "-o", "packed.h5", "-j", "2", "--compression", "gzip")
    assert res.exit_code == 0, res.stderr
    man = json.loads((tmp_path / "packed.json").read_text())
    assert man["entries"][0]["shape"][-1] > 100
    want, got = feature_arrays(tmp_path / "plain.h5"), feature_arrays(tmp_path / "packed.h5")
    np.testing.assert_array_equal(got["long.wav"], want["long.wav"])
    with h5py.File(tmp_path / "packed.h5") as f:
        assert f["features/long.wav"].compression == "gzip"
