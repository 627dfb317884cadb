"""``--format kaldi`` (issue 10): feats.ark + feats.scp + manifest.json, read back with
kaldiio (the reference reader of Kaldi archives in Python) and compared with the HDF5
output of the same command; keys Kaldi cannot hold are refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest

import melcli as melcli_lib
from melcli import pipeline
from tests.conftest import (
    AudioFactory,
    Invoke,
    RunMelcli,
    assert_no_traceback,
    feature_arrays,
)


@pytest.fixture
def speech(audio: AudioFactory) -> Path:
    audio.samples("speech/hello.wav", "speech/numbers.flac", "music/chords.flac")
    audio.mix("extra/ümlaut.wav", sr=16000, seconds=0.8)
    return audio.root


@pytest.mark.parametrize(
    "args",
    [
        ["fbank"],
        ["fbank", "--preset", "lhotse", "--deltas", "2"],
        ["mfcc", "--sr", "16000", "--n-mfcc", "13"],
        ["mel", "--dtype", "float64", "--scale", "log", "--normalize", "meanvar"],
    ],
)
def test_kaldiio_reads_the_hdf5_output_transposed(
    melcli: RunMelcli, speech: Path, tmp_path: Path, args: list[str]
) -> None:
    h5, kaldi = tmp_path / "f.h5", tmp_path / "feats"
    assert melcli(*args[:1], "in", "-o", h5, *args[1:]).returncode == 0
    proc = melcli(*args[:1], "in", "-o", kaldi, "--format", "kaldi", *args[1:])
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in kaldi.iterdir()) == ["feats.ark", "feats.scp", "manifest.json"]
    want = feature_arrays(h5)
    scp = kaldiio.load_scp(str(kaldi / "feats.scp"))
    keys = [line.split(" ", 1)[0] for line in (kaldi / "feats.scp").read_text().splitlines()]
    assert keys == sorted(want, key=lambda k: k.encode()) == sorted(scp)  # C-locale order
    for key, ref in want.items():
        got = scp[key]
        assert got.dtype == ref.dtype and got.shape == ref.T.shape  # Kaldi: (frames, rows)
        np.testing.assert_array_equal(got, ref.T)
    with kaldiio.ReadHelper(f"ark:{kaldi / 'feats.ark'}") as reader:  # read as a stream
        assert [k for k, _ in reader] == keys
    with melcli_lib.open(kaldi) as feats:  # melcli reads it back in its own orientation
        assert feats.format == "kaldi" and sorted(feats) == sorted(want)
        for key, ref in want.items():
            np.testing.assert_array_equal(feats[key], ref)
            np.testing.assert_array_equal(feats.read(key, frames=slice(2, 7)), ref[..., 2:7])
    h5_man = json.loads(h5.with_suffix(".json").read_text())
    man = json.loads((kaldi / "manifest.json").read_text())
    assert man["output_format"] == "kaldi" and man["params"] == h5_man["params"]
    assert [e["shape"] for e in man["entries"]] == [e["shape"] for e in h5_man["entries"]]


def test_keys_with_whitespace_are_refused_before_any_work(
    melcli: RunMelcli, invoke: Invoke, audio: AudioFactory, tmp_path: Path
) -> None:
    audio.tone("spk 1/a.wav", sr=16000, seconds=0.5)
    audio.tone("b\tc.wav", sr=16000, seconds=0.5)
    audio.tone("ok.wav", sr=16000, seconds=0.5)
    out = tmp_path / "feats"
    proc = melcli("fbank", "in", "-o", out, "--format", "kaldi")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, proc.stderr  # one line after Click's usage lines
    assert "--format kaldi: 2 keys have whitespace" in lines[0]
    assert "'spk 1/a.wav'" in lines[0] and "'b\\tc.wav'" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".feats*"))  # nothing was started
    res = invoke("fbank", "in", "-o", out, "--format", "kaldi")
    assert res.exit_code == 2 and "keys have whitespace" in res.stderr
    assert_no_traceback(proc.stderr, res.stderr)
    # the same inputs are fine for the other formats
    assert melcli("fbank", "in", "-o", tmp_path / "f.h5").returncode == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["mel", "--keep-channels"], "channels cannot be kept"),
        (["mel", "--dtype", "float16"], "float32 or float64 matrices, not float16"),
        (["stft", "--complex"], "not a complex STFT"),
        (["mel", "--compression", "gzip"], "applies to HDF5 outputs"),
        (["mel", "--manifest", "m.json"], "applies to HDF5 outputs"),
    ],
)
def test_what_kaldi_cannot_store_is_a_usage_error(
    melcli: RunMelcli, audio: AudioFactory, tmp_path: Path, args: list[str], says: str
) -> None:
    audio.tone("a.wav", sr=16000, seconds=0.5)
    proc = melcli(args[0], "in", "-o", tmp_path / "feats", "--format", "kaldi", *args[1:])
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert_no_traceback(proc.stderr)
    assert not (tmp_path / "feats").exists()


def test_long_file_parts_inspect_like_and_rerun(
    invoke: Invoke, audio: AudioFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 20_000)
    monkeypatch.setattr(pipeline, "PART_SAMPLES", 16_000)
    audio.mix("long.wav", sr=16000, seconds=6.0)
    audio.mix("short.wav", sr=16000, seconds=0.5)
    out, h5 = tmp_path / "feats", tmp_path / "f.h5"
    res = invoke("fbank", "in", "-o", out, "--format", "kaldi", "-v")
    assert res.exit_code == 0, res.stderr
    assert "long.wav part 3/" in res.stderr  # really computed in parts
    assert invoke("fbank", "in", "-o", h5).exit_code == 0
    kaldi, ref = feature_arrays(out), feature_arrays(h5)
    for key in ref:
        np.testing.assert_array_equal(kaldi[key], ref[key])
    shown = invoke("inspect", out, "--key", "long.wav", "--json")
    assert shown.exit_code == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["format"] == "kaldi" and info["entry"]["shape"] == list(ref["long.wav"].shape)
    like = invoke("fbank", "in", "-o", tmp_path / "again.h5", "--like", out, "--num-mel-bins", "40")
    assert like.exit_code == 0, like.stderr
    assert feature_arrays(tmp_path / "again.h5")["short.wav"].shape[0] == 40
    rerun = invoke("fbank", "in", "-o", out, "--format", "kaldi")
    assert rerun.exit_code == 0 and "up to date" in rerun.stderr
    # an ark that lost its tail is repaired by the next run: those entries are computed again
    ark = out / "feats.ark"
    ark.write_bytes(ark.read_bytes()[:-100])
    repaired = invoke("fbank", "in", "-o", out, "--format", "kaldi")
    assert repaired.exit_code == 0, repaired.stderr
    assert "repaired: 1 entries missing from the output are computed again" in repaired.stderr
    np.testing.assert_array_equal(feature_arrays(out)["short.wav"], ref["short.wav"])
