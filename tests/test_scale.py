"""Reruns whose cost grows with what changed, not with the dataset (issue 8.8).

What a million entries need is measured in bench/scale.py (docs/benchmarks.md);
these tests check the mechanisms on small real outputs: the manifest read and
written back line by line, the HDF5 sidecar shortcut and when it must not be
taken, and an HDF5 rerun that starts from a copy of the old file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from melcli import manifest, store
from tests.conftest import AudioFactory, Invoke, RunMelcli, assert_no_traceback, feature_arrays

FAST = ("--n-mels", "20", "--n-fft", "256", "-j", "1")


def _corpus(audio: AudioFactory, n: int, folder: str = "") -> None:
    for i in range(n):
        audio.tone(f"{folder}d{i % 3}/f{i:03d}.wav", freq=200 + 37 * i, seconds=0.1)


def _lines(path: Path) -> list[str]:
    return [line.rstrip(",") for line in path.read_text(encoding="utf-8").splitlines()]


def test_rerun_copies_kept_manifest_lines_and_inserts_new_ones(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """Added and removed entries change their own lines only; the rest is byte-identical,
    in key order, and equals what a fresh run writes."""
    _corpus(audio, 12)
    assert melcli("mel", "in", "-o", "a.h5", *FAST).returncode == 0
    before = _lines(tmp_path / "a.json")
    (tmp_path / "in/d1/f004.wav").unlink()
    audio.tone("d0/f000b.wav", seconds=0.1)
    audio.tone("zz/last.wav", seconds=0.1)
    proc = melcli("mel", "in", "-o", "a.h5", *FAST)
    assert proc.returncode == 0, proc.stderr
    after = _lines(tmp_path / "a.json")
    kept = [line for line in before if '"key": ' in line and "d1/f004.wav" not in line]
    assert [line for line in after if '"key": ' in line and line in before] == kept
    man = json.loads((tmp_path / "a.json").read_text())
    keys = [e["key"] for e in man["entries"]]
    assert keys == sorted(keys) and "d1/f004.wav" not in keys
    assert {"d0/f000b.wav", "zz/last.wav"} <= set(keys) and len(keys) == 13
    assert man["totals"]["entries"] == 13
    assert man["totals"]["duration"] == pytest.approx(sum(e["duration"] for e in man["entries"]))
    assert melcli("mel", "in", "-o", "fresh.h5", *FAST).returncode == 0
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    assert [{k: v for k, v in e.items()} for e in fresh["entries"]] == man["entries"]
    with h5py.File(tmp_path / "a.h5") as f:
        assert json.loads(f["manifest"][()]) == man  # the sidecar is /manifest's copy
    got, want = feature_arrays(tmp_path / "a.h5"), feature_arrays(tmp_path / "fresh.h5")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_noop_rerun_builds_no_entry_dict_and_reads_no_hdf5_manifest(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two costs that grew with the dataset: a dict per entry (1.5 KB each) and
    h5py's read of /manifest (5x its size). A no-op rerun does neither."""
    _corpus(audio, 9)
    assert invoke("mel", "in", "-o", "a.h5", *FAST).exit_code == 0

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a no-op rerun must not do this")

    monkeypatch.setattr(manifest.EntryTable, "record", forbidden)
    monkeypatch.setattr(manifest.EntryTable, "__iter__", forbidden)
    monkeypatch.setattr(store, "h5_manifest", forbidden)
    monkeypatch.setattr(store, "missing_entries", forbidden)
    res = invoke("mel", "in", "-o", "a.h5", *FAST)
    assert res.exit_code == 0, res.stderr
    assert "up to date: 9 entries" in res.stderr


def test_hand_edited_hdf5_is_read_from_its_own_manifest(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """The sidecar shortcut is only taken for a file untouched since melcli wrote it:
    an entry deleted by hand (same sidecar, same digest) is noticed and recomputed."""
    _corpus(audio, 6)
    assert melcli("mel", "in", "-o", "a.h5", *FAST).returncode == 0
    want = feature_arrays(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        del f["features/d1/f001.wav"]
    proc = melcli("mel", "in", "-o", "a.h5", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "repaired: 1 entries missing from the output" in proc.stderr
    assert "updated 1, removed 0, unchanged 5" in proc.stderr
    got = feature_arrays(tmp_path / "a.h5")
    assert got.keys() == want.keys()
    np.testing.assert_array_equal(got["d1/f001.wav"], want["d1/f001.wav"])


def test_stale_or_edited_sidecar_is_not_trusted(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """A sidecar that is not /manifest's copy (edited: another digest) is ignored and
    rewritten from /manifest; the rerun has nothing to do."""
    _corpus(audio, 5)
    assert melcli("mel", "in", "-o", "a.h5", *FAST).returncode == 0
    side = tmp_path / "a.json"
    good = side.read_bytes()
    side.write_bytes(good.replace(b'"d0/f000.wav"', b'"d0/fXXX.wav"'))
    os.utime(side, ns=(0, os.stat(tmp_path / "a.h5").st_mtime_ns + 10**9))  # newer: digest decides
    proc = melcli("mel", "in", "-o", "a.h5", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "up to date: 5 entries" in proc.stderr
    assert side.read_bytes() == good


def test_hdf5_rerun_starts_from_a_copy_and_compacts_dead_space(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """An incremental HDF5 rerun deletes what changed in a copy of the old file (its
    space is counted in dead_bytes) and writes a compact file once half is dead."""
    _corpus(audio, 10)
    audio.tone("big/long.wav", seconds=4.0, sr=16000)
    out = tmp_path / "a.h5"
    assert melcli("mel", "in", "-o", out, *FAST).returncode == 0
    with h5py.File(out) as f:
        assert f.attrs[store.DEAD_ATTR] == 0
    audio.tone("d0/new.wav", seconds=0.1)
    assert melcli("mel", "in", "-o", out, *FAST).returncode == 0
    with h5py.File(out) as f:
        dead = int(f.attrs[store.DEAD_ATTR])
        assert dead > 0  # the old manifest's text, at least
        assert "features/d0/new.wav" in f
    size = out.stat().st_size
    (tmp_path / "in/big/long.wav").unlink()  # most of the file's bytes: now dead
    proc = melcli("mel", "in", "-o", out, *FAST)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out) as f:
        assert f.attrs[store.DEAD_ATTR] == 0  # rewritten compact
        assert "big" not in f["features"]
        assert len(json.loads(f["manifest"][()])["entries"]) == 11
    assert out.stat().st_size < size / 2
    assert melcli("mel", "in", "-o", "fresh.h5", *FAST).returncode == 0
    got, want = feature_arrays(out), feature_arrays(tmp_path / "fresh.h5")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_copy_based_rerun_removes_entries_groups_and_rates(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """Deleting in the copy leaves no trace: a removed folder's group and a sample
    rate no entry has any more are gone, updated entries hold the new data."""
    _corpus(audio, 8)
    audio.tone("other/x.wav", sr=22050, seconds=0.1)
    out = tmp_path / "a.h5"
    assert melcli("mel", "in", "-o", out, *FAST).returncode == 0
    with h5py.File(out) as f:
        assert set(f["frequencies"]) == {"16000", "22050"}
    (tmp_path / "in/other/x.wav").unlink()
    (tmp_path / "in/other").rmdir()
    audio.tone("d2/f002.wav", freq=3000, seconds=0.2)  # updated: other content, other shape
    proc = melcli("mel", "in", "-o", out, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "updated 1" in proc.stderr and "removed 1" in proc.stderr
    with h5py.File(out) as f:
        assert f.attrs[store.DEAD_ATTR] > 0  # this run started from a copy
        assert "other" not in f["features"]
        assert set(f["frequencies"]) == {"16000"}
    assert melcli("mel", "in", "-o", "fresh.h5", *FAST).returncode == 0
    got, want = feature_arrays(out), feature_arrays(tmp_path / "fresh.h5")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_entry_table_reads_hand_formatted_json_and_refuses_bad_entries(tmp_path: Path) -> None:
    """A manifest re-indented by a user's tool is read whole, then checked the same way."""
    recs = [
        {"key": k, "source": f"/d/{k}", "sample_rate": 16000, "channels": 1, "duration": 0.1,
         "n_samples": 1600, "shape": [20, 7], "dtype": "float32", "source_size": 10,
         "source_mtime": 1.0}
        for k in ("b.wav", "a.wav", "c/d.wav")
    ]  # fmt: skip
    man = manifest.build(params={"kind": "mel"}, command="melcli mel d", output_format="h5",
                         entries=recs, failures=[], frequencies={16000: [0.0]})  # fmt: skip
    text = manifest.dumps(man)
    table = manifest.loads(text, "x")["entries"]
    assert table.keys == ["a.wav", "b.wav", "c/d.wav"]
    assert [table.source(i) for i in range(3)] == ["/d/a.wav", "/d/b.wav", "/d/c/d.wav"]
    pretty = json.dumps(json.loads(text), indent=4).encode()
    again = manifest.loads(pretty, "x")["entries"]
    assert again.keys == table.keys and list(again) == list(table)
    bad = json.loads(text)
    bad["entries"][1]["key"] = "../secret"
    with pytest.raises(manifest.OutputError, match="entry 1 has the key '../secret'"):
        manifest.loads(manifest.dumps(bad), "x")
    bad["entries"][1]["key"] = "a.wav"  # twice
    with pytest.raises(manifest.OutputError, match="listed twice"):
        manifest.loads(json.dumps(bad).encode(), "x")


def test_corrupt_sidecar_shortcut_never_hides_a_bad_output(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """A sidecar whose digest matches but whose entries are crafted is checked like
    /manifest: one line, exit 2, nothing replaced."""
    _corpus(audio, 3)
    out = tmp_path / "a.h5"
    assert melcli("mel", "in", "-o", out, *FAST).returncode == 0
    side = tmp_path / "a.json"
    crafted = side.read_bytes().replace(b'"d0/f000.wav"', b'"../f000.wav"')
    side.write_bytes(crafted)
    import hashlib

    with h5py.File(out, "r+") as f:
        f.attrs[store.DIGEST_ATTR] = hashlib.sha256(crafted).hexdigest()
    os.utime(out, ns=(0, os.stat(side).st_mtime_ns - 10**9))
    proc = melcli("mel", "in", "-o", out, *FAST)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert "is not a melcli output" in proc.stderr and "'../f000.wav'" in proc.stderr
