"""Outputs that melcli did not write (issue 8.5, 15.13): crafted manifests and
datasets, and keys that are not entries. Each gives one line and an exit code,
never a traceback, and nothing is read that the output does not really hold."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import AudioFactory, Invoke, RunMelcli, assert_no_traceback


@pytest.fixture
def h5_out(audio: AudioFactory, invoke: Invoke, tmp_path: Path) -> Path:
    """A real HDF5 output of three entries, two of them in a folder."""
    audio.tone("a.wav")
    audio.tone("speech/spk01/b.wav", freq=880)
    audio.tone("speech/spk01/c.wav", freq=660)
    res = invoke("mel", "in", "-o", "feats.h5", "-j", "1")
    assert res.exit_code == 0, res.stderr
    return tmp_path / "feats.h5"


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("speech/spk01", "'speech/spk01' in .* is a folder of 2 entries, not an entry"),
        ("speech", "'speech' in .* is a folder of 2 entries"),
        ("", "--key '' is not an entry key"),
        ("../a.wav", "--key '../a.wav' is not an entry key"),
        ("/a.wav", "--key '/a.wav' is not an entry key"),
        ("nope.wav", "no entry 'nope.wav' in"),
    ],
)
def test_inspect_key_that_is_not_an_entry(
    h5_out: Path, melcli: RunMelcli, key: str, says: str
) -> None:
    """A folder, an empty key, a path out of the output: one line, exit 1."""
    import re

    for target in (h5_out, h5_out.with_suffix(".json")):
        proc = melcli("inspect", target, "--key", key)
        assert_no_traceback(proc.stderr)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and re.search(f"melcli: error: .*{says}", lines[0]), lines


def _replace_manifest(out: Path, make: Callable[[h5py.File], Any]) -> None:
    with h5py.File(out, "r+") as f:
        del f["manifest"]
        make(f)


def _json_manifest(value: Any) -> Callable[[h5py.File], Any]:
    return lambda f: f.create_dataset("manifest", data=json.dumps(value), dtype=h5py.string_dtype())


CRAFTED = {
    "a JSON list": (_json_manifest([1, 2, 3]), "its manifest is a JSON list, not an object"),
    "an int array": (
        lambda f: f.create_dataset("manifest", data=np.arange(10)),
        "/manifest is not one JSON text",
    ),
    "no entries": (
        _json_manifest({"melcli_version": "1", "params": {"kind": "mel"}}),
        "its manifest has no valid 'command'",
    ),
    "a bad entry": (None, "entry 1 has no valid 'shape'"),
    "a huge sparse array": (
        lambda f: f.create_dataset("manifest", shape=(3 * 10**9,), dtype="u1", chunks=(1 << 20,)),
        "/manifest is not one JSON text",
    ),
    "a deep JSON": (
        lambda f: f.create_dataset(
            "manifest", data="[" * 100_000 + "]" * 100_000, dtype=h5py.string_dtype()
        ),
        "/manifest: maximum recursion depth",
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_h5_manifest(h5_out: Path, melcli: RunMelcli, case: str) -> None:
    """inspect and an incremental mel onto the file: one line each, no traceback,
    and a huge /manifest is refused without being read."""
    make, says = CRAFTED[case]
    if make is None:  # a real manifest with one entry's shape removed
        with h5py.File(h5_out, "r") as f:
            man = json.loads(f["manifest"][()])
        del man["entries"][1]["shape"]
        make = _json_manifest(man)
    _replace_manifest(h5_out, make)
    proc = melcli("inspect", h5_out, timeout=60)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 1
    assert (
        proc.stderr.splitlines() == [proc.stderr.splitlines()[0]]
        and f"feats.h5 is not a melcli output: {says}" in proc.stderr
    ), proc.stderr
    proc = melcli("mel", "in", "-o", h5_out, timeout=60)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 2
    assert f"is not a melcli output: {says}" in proc.stderr


def test_huge_dataset_with_key_is_not_read(h5_out: Path, melcli: RunMelcli) -> None:
    """A 1e12-value dataset in place of an entry: its size is checked before any
    read (against the manifest record, and against what the file stores)."""
    shape = [1000, 10**9]
    with h5py.File(h5_out, "r+") as f:
        del f["features/a.wav"]
        f.create_dataset("features/a.wav", shape=shape, dtype="f4", chunks=(100, 10000))
    proc = melcli("inspect", h5_out, "--key", "a.wav", timeout=60)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 1
    assert "holds (1000, 1000000000) float32, but its manifest record says (128," in proc.stderr
    with h5py.File(h5_out, "r+") as f:  # the record made to match: the storage tells
        man = json.loads(f["manifest"][()])
        man["entries"][0]["shape"] = shape
        del f["manifest"]
        _json_manifest(man)(f)
    proc = melcli("inspect", h5_out, "--key", "a.wav", timeout=60)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 1
    assert "stores 0 of its 4000000000000 bytes: not an entry melcli wrote" in proc.stderr


def test_npy_manifest_key_out_of_the_output(
    audio: AudioFactory, invoke: Invoke, melcli: RunMelcli, tmp_path: Path
) -> None:
    """A manifest key '../secret' never names a file: inspect --key and a rerun
    refuse the manifest before reading anything."""
    audio.tone("a.wav")
    assert invoke("mel", "in", "-o", "np", "-j", "1").exit_code == 0
    np.save(tmp_path / "secret.npy", np.full((128, 16), 7.0, dtype=np.float32))
    side = tmp_path / "np" / "manifest.json"
    man = json.loads(side.read_text(encoding="utf-8"))
    man["entries"][0]["key"] = "../secret"
    side.write_text(json.dumps(man), encoding="utf-8")
    proc = melcli("inspect", "np", "--key", "../secret")
    assert proc.returncode == 1 and "not an entry key" in proc.stderr, proc.stderr
    for args in (["inspect", "np"], ["mel", "in", "-o", "np"]):
        proc = melcli(*args)
        assert_no_traceback(proc.stderr)
        assert proc.returncode in (1, 2)
        assert "not a melcli output: entry 0 has the key '../secret'" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "np").iterdir()) == ["a.wav.npy", "manifest.json"]


def test_inspect_key_reads_in_blocks(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entry statistics read block by block give what the whole array gives."""
    from melcli import inspection as insp

    audio.tone("a.wav", seconds=3.0)
    for out in ("b.h5", "b"):
        assert invoke("mel", "in", "-o", out, "-j", "1", "--scale", "db").exit_code == 0
        whole = json.loads(invoke("inspect", out, "--key", "a.wav", "--json").stdout)["entry"]
        with monkeypatch.context() as m:
            m.setattr(insp, "STATS_BLOCK", 128 * 7)  # 7 frames a block
            blocks = json.loads(invoke("inspect", out, "--key", "a.wav", "--json").stdout)
        blocks = blocks["entry"]
        assert blocks["min"] == whole["min"] and blocks["max"] == whole["max"]
        assert blocks["mean"] == pytest.approx(whole["mean"], rel=1e-12)
        assert blocks["shape"] == whole["shape"] and whole["shape"][-1] > 7


def _map_entry_into(out: Path, source: str, *, frames: int | None = None) -> np.ndarray:
    """Make ``features/a.wav`` a virtual dataset mapping ``source`` (relative to the
    output's directory, as melcli's shards are), a file holding a copy of its data
    (all of it, or its first ``frames``); return the data."""
    import melcli

    with melcli.open(out) as feats:
        data = feats["a.wav"]
    part = data[..., :frames] if frames is not None else data
    path = out.parent / source
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["e0"] = part
    layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
    layout[..., : part.shape[-1]] = h5py.VirtualSource(source, "e0", shape=part.shape)
    with h5py.File(out, "r+") as f:
        del f["features/a.wav"]
        f.create_virtual_dataset("features/a.wav", layout)
    return data


def test_an_entry_in_melcli_shards_reads_back(h5_out: Path, melcli: RunMelcli) -> None:
    """The control of the next test: the same mapping, into the output's own shard
    directory, reads as the entry it replaced (from another working directory)."""
    import melcli as lib

    data = _map_entry_into(h5_out, "feats.h5.shards/shard-0a1b.h5")
    with lib.open(h5_out) as feats:
        np.testing.assert_array_equal(feats["a.wav"], data)
    proc = melcli("inspect", h5_out, "--key", "a.wav", "--json", cwd=Path("/"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["entry"]["shape"] == list(data.shape)


@pytest.mark.parametrize(
    ("source", "frames", "says"),
    [
        ("other/shard-0a1b.h5", None, "maps 'other/shard-0a1b.h5', not a shard file"),
        ("feats.h5.shards/../other/shard-0a1b.h5", None, "not a shard file of feats.h5.shards/"),
        ("feats.h5.shards/secret.h5", None, "maps 'feats.h5.shards/secret.h5', not a shard"),
        ("feats.h5.shards/shard-0a1b.h5", 5, "maps 640 of its "),
    ],
)
def test_an_entry_mapping_anything_but_melcli_shards_is_refused(
    h5_out: Path, melcli: RunMelcli, source: str, frames: int | None, says: str
) -> None:
    """A virtual dataset is read only from melcli's own shard files, whole: one
    pointing elsewhere (another directory, a file not named as a shard), or leaving
    values unmapped (HDF5 would return zeros), is refused before anything is read."""
    import melcli as lib
    from melcli.errors import OutputError

    _map_entry_into(h5_out, source, frames=frames)
    proc = melcli("inspect", h5_out, "--key", "a.wav", timeout=60)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0] and "not an entry melcli wrote" in lines[0], lines
    with lib.open(h5_out) as feats, pytest.raises(OutputError, match="not an entry melcli wrote"):
        feats["a.wav"]


def test_a_shard_linked_out_of_the_shard_directory_is_refused(
    h5_out: Path, melcli: RunMelcli
) -> None:
    """A shard name in the right directory that is a symbolic link elsewhere, or missing."""
    _map_entry_into(h5_out, "other/shard-0a1b.h5")
    shards = h5_out.parent / "feats.h5.shards"
    shards.mkdir()
    (shards / "shard-0a1b.h5").symlink_to(h5_out.parent / "other" / "shard-0a1b.h5")
    with h5py.File(h5_out, "r+") as f:  # the same data, mapped through the link
        src = f["features/a.wav"]
        layout = h5py.VirtualLayout(shape=src.shape, dtype=src.dtype)
        layout[...] = h5py.VirtualSource("feats.h5.shards/shard-0a1b.h5", "e0", shape=src.shape)
        del f["features/a.wav"]
        f.create_virtual_dataset("features/a.wav", layout)
    for why in ("linked", "missing"):
        proc = melcli("inspect", h5_out, "--key", "a.wav", timeout=60)
        assert_no_traceback(proc.stderr)
        assert proc.returncode == 1
        assert "maps the missing or linked shard feats.h5.shards/shard-0a1b.h5" in proc.stderr, why
        (shards / "shard-0a1b.h5").unlink(missing_ok=True)
