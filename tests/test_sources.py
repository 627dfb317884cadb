"""Issue 14 items 8, 9 and 15: what an entry's key and source are, and what a rerun keeps.

* item 8: ``--root DIR`` keys every input by its path relative to DIR (stdin
  lists, files, directories), records it, and refuses a rerun under another root;
* item 9: the source path is part of an entry's identity (a key that now comes
  from another file is computed again, or with ``--checksum`` and the same
  bytes only re-pointed);
* item 15: turning ``--checksum`` on keeps what size + mtime vouch for, and an
  interrupted run's work dropped for other parameters is said so.

Real `melcli` processes on copies of sample_audio/; outputs read back with h5py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SAMPLE_AUDIO, RunMelcli, assert_no_traceback

from melcli.discover import discover, root_relative


def collection(root: Path) -> list[Path]:
    """``root/a/001.wav`` and ``root/b/001.wav`` (different audio, one file name),
    ``root/speech/numbers.flac``."""
    files = [root / "a" / "001.wav", root / "b" / "001.wav", root / "speech" / "numbers.flac"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_AUDIO / "speech" / "hello.wav", files[0])
    shutil.copy(SAMPLE_AUDIO / "music" / "pad_24bit.wav", files[1])
    shutil.copy(SAMPLE_AUDIO / "speech" / "numbers.flac", files[2])
    return files


def manifest(output: Path) -> dict:
    side = output.with_suffix(".json") if output.suffix == ".h5" else output / "manifest.json"
    return json.loads(side.read_text(encoding="utf-8"))


def h5_entries(output: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Key -> (features, the ``source`` attribute) of every entry of an HDF5 output."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    with h5py.File(output, "r") as f:

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj[()], obj.attrs["source"])

        f["features"].visititems(visit)
    return out


def listing(*paths: Path) -> str:
    return "".join(f"{p}\n" for p in paths)


# ---------------------------------------------------------------------------
# item 8: --root
# ---------------------------------------------------------------------------
def test_absolute_paths_on_stdin_keep_their_folders_with_root(
    melcli: RunMelcli, tmp_path: Path
) -> None:
    coll = tmp_path / "coll"
    files = collection(coll)
    res = melcli("mel", "-", "-o", "x.h5", input=listing(*files))
    assert res.returncode == 2, res.stderr
    assert "same key '001.wav'" in res.stderr
    assert f"give --root DIR so keys keep their folders (e.g. --root {coll})" in res.stderr
    assert "common parent directory" not in res.stderr
    assert not (tmp_path / "x.h5").exists()
    res = melcli("mel", "-", "-o", "x.h5", "--root", coll, input=listing(*files))
    assert res.returncode == 0, res.stderr
    got = h5_entries(tmp_path / "x.h5")
    assert sorted(got) == ["a/001.wav", "b/001.wav", "speech/numbers.flac"]
    assert {k: s for k, (_, s) in got.items()} == {
        "a/001.wav": str(files[0]), "b/001.wav": str(files[1]),
        "speech/numbers.flac": str(files[2]),
    }  # fmt: skip
    assert manifest(tmp_path / "x.h5")["root"] == str(coll)


def test_root_gives_the_same_keys_to_a_list_a_directory_and_files(
    melcli: RunMelcli, tmp_path: Path
) -> None:
    files = collection(tmp_path / "data")
    relative = [p.relative_to(tmp_path) for p in files]
    walked = melcli("mel", "data/", "-o", "walked.h5", "-q")
    # `find data | melcli mel -` kept `data/` in its keys; --root data does not
    plain = melcli("mel", "-", "-o", "plain.h5", "-q", input=listing(*relative))
    rooted = melcli("mel", "-", "-o", "rooted.h5", "-q", "--root", "data", input=listing(*relative))
    named = melcli("mel", *relative, "-o", "named.h5", "-q", "--root", "data")
    mixed = melcli(
        "mel", "data/a", files[1], "-", "-o", "mixed.h5", "-q", "--root", tmp_path / "data",
        input=listing(relative[2]),
    )  # fmt: skip
    for res in (walked, plain, rooted, named, mixed):
        assert res.returncode == 0, res.stderr
    expect = ["a/001.wav", "b/001.wav", "speech/numbers.flac"]
    assert sorted(h5_entries(tmp_path / "walked.h5")) == expect
    assert sorted(h5_entries(tmp_path / "plain.h5")) == [f"data/{k}" for k in expect]
    for name in ("rooted.h5", "named.h5", "mixed.h5"):
        got = h5_entries(tmp_path / name)
        assert sorted(got) == expect, name
        for key, (data, _) in h5_entries(tmp_path / "walked.h5").items():
            np.testing.assert_array_equal(got[key][0], data)
    # a directory under the root keeps its path from the root
    res = melcli("mel", "data/speech", "-o", "sub.h5", "-q", "--root", ".")
    assert res.returncode == 0, res.stderr
    assert sorted(h5_entries(tmp_path / "sub.h5")) == ["data/speech/numbers.flac"]


def test_inputs_outside_the_root_are_refused_by_name(melcli: RunMelcli, tmp_path: Path) -> None:
    files = collection(tmp_path / "coll")
    other = tmp_path / "other" / "x.wav"
    other.parent.mkdir()
    shutil.copy(files[0], other)
    for args, stdin in (
        (["coll/a", "other"], None),
        ([files[0], other], None),
        (["-"], listing(files[0], other)),
    ):
        res = melcli("mel", *args, "-o", "x.h5", "--root", "coll/a", input=stdin)
        assert res.returncode == 2, (args, res.stderr)
        assert f"1 input is outside --root {tmp_path / 'coll' / 'a'}: " in res.stderr
        assert "other" in res.stderr.split("outside --root")[1]
        assert_no_traceback(res.stderr)
        assert not (tmp_path / "x.h5").exists()
    res = melcli("mel", "coll", "-o", "x.h5", "--root", "nope")
    assert res.returncode == 2 and "nope" in res.stderr
    res = melcli("mel", "coll", "-o", "x.h5", "--root", files[0])
    assert res.returncode == 2 and "is a file" in res.stderr


def test_root_through_a_symlink_matches_the_real_paths(tmp_path: Path) -> None:
    files = collection(tmp_path / "coll")
    (tmp_path / "link").symlink_to(tmp_path / "coll")
    (tmp_path / "via").symlink_to(tmp_path)  # $PWD reached through a link
    for root in (tmp_path / "link", tmp_path / "via" / "coll"):
        assert root_relative(str(files[0]), str(root)) == "a/001.wav"
        listed = "".join(f"{p}\n" for p in files)

        found = discover(["-"], stdin=io.BytesIO(listed.encode()), root=str(root))
        assert [s.key for s in found.sources] == ["a/001.wav", "b/001.wav", "speech/numbers.flac"]
        assert [s.path for s in found.sources] == [str(p) for p in files]  # not resolved
    assert root_relative(str(tmp_path / "coll2" / "x.wav"), str(tmp_path / "coll")) is None
    assert root_relative(str(tmp_path / "coll"), str(tmp_path / "coll")) == ""


def test_a_rerun_under_another_root_is_refused(melcli: RunMelcli, tmp_path: Path) -> None:
    collection(tmp_path / "data")
    out = tmp_path / "x.h5"
    assert melcli("mel", "data", "-o", out, "--root", "data", "-q").returncode == 0
    before = out.read_bytes()
    for extra in (["--root", "."], [], ["--root", ".", "--dry-run"]):
        res = melcli("mel", "data", "-o", out, *extra)
        assert res.returncode == 2, (extra, res.stderr)
        assert f"keys relative to --root {tmp_path / 'data'}" in res.stderr
        assert "--overwrite" in res.stderr
        assert out.read_bytes() == before
    res = melcli("mel", f"{tmp_path}/data/", "-o", out, "--root", f"{tmp_path}/data/")
    assert res.returncode == 0 and "up to date" in res.stderr, res.stderr
    res = melcli("mel", "data", "-o", out, "--root", ".", "--overwrite", "-q")
    assert res.returncode == 0, res.stderr
    assert manifest(out)["root"] == str(tmp_path)
    assert sorted(h5_entries(out))[0] == "data/a/001.wav"
    # and an output made without --root refuses one
    res = melcli("mel", "data", "-o", "plain.h5", "-q")
    assert res.returncode == 0 and manifest(tmp_path / "plain.h5")["root"] is None
    res = melcli("mel", "data", "-o", "plain.h5", "--root", "data")
    assert res.returncode == 2 and "no --root" in res.stderr, res.stderr


# ---------------------------------------------------------------------------
# item 9: the source path is part of an entry's identity
# ---------------------------------------------------------------------------
def same_size_other_audio(src: Path, dst: Path) -> None:
    """``dst``: audio of ``src``'s size but other content, with ``src``'s mtime (touch -r)."""
    import soundfile as sf

    y, sr = sf.read(src, dtype="int16")
    sf.write(dst, (y // 2).astype(np.int16), sr, subtype="PCM_16")
    assert dst.stat().st_size == src.stat().st_size
    st = src.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("checksum", [[], ["--checksum"]])
def test_a_key_from_another_file_of_the_same_size_and_mtime_is_recomputed(
    melcli: RunMelcli, tmp_path: Path, checksum: list[str]
) -> None:
    (tmp_path / "dA").mkdir()
    (tmp_path / "dB").mkdir()
    a, b = tmp_path / "dA" / "x.wav", tmp_path / "dB" / "x.wav"
    shutil.copy(SAMPLE_AUDIO / "speech" / "hello.wav", a)
    same_size_other_audio(a, b)
    out = tmp_path / "o.h5"
    assert melcli("mel", "-", "-o", out, "-q", *checksum, input=f"{a}\n").returncode == 0
    res = melcli("mel", "-", "-o", out, *checksum, input=f"{b}\n")
    assert res.returncode == 0, res.stderr
    assert "added 0, updated 1, removed 0, unchanged 0, failed 0" in res.stderr
    assert "up to date" not in res.stderr
    ((data, source),) = h5_entries(out).values()
    assert source == str(b)
    assert manifest(out)["entries"][0]["source"] == str(b)
    ref = tmp_path / "ref.h5"
    assert melcli("mel", b, "-o", ref, "-q").returncode == 0
    np.testing.assert_array_equal(data, h5_entries(ref)["x.wav"][0])
    # and back to dA
    res = melcli("mel", "-", "-o", out, *checksum, input=f"{a}\n")
    assert "updated 1" in res.stderr and h5_entries(out)["x.wav"][1] == str(a), res.stderr


def test_a_key_moving_between_input_directories_is_recomputed(
    melcli: RunMelcli, tmp_path: Path
) -> None:
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    first = tmp_path / "d1" / "x.wav"
    shutil.copy(SAMPLE_AUDIO / "speech" / "hello.wav", first)
    out = tmp_path / "o"
    assert melcli("mel", "d1", "d2", "-o", out, "-q").returncode == 0
    same_size_other_audio(first, tmp_path / "d2" / "x.wav")
    first.unlink()
    res = melcli("mel", "d1", "d2", "-o", out)
    assert res.returncode == 0 and "updated 1" in res.stderr, res.stderr
    (entry,) = manifest(out)["entries"]
    assert entry["source"] == str(tmp_path / "d2" / "x.wav")


def test_a_moved_dataset_is_repointed_with_checksum_and_recomputed_without(
    melcli: RunMelcli, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    files = collection(old / "coll")
    listed = listing(*(p.relative_to(old) for p in files))
    out = tmp_path / "feats.h5"
    npy = tmp_path / "feats"
    for o in (out, npy):
        res = melcli("mel", "-", "-o", o, "-q", "--checksum", input=listed, cwd=old)
        assert res.returncode == 0, res.stderr
    before = h5_entries(out)
    new = tmp_path / "new"
    shutil.copytree(old, new)  # copies mtimes too
    shutil.rmtree(old)
    for o in (out, npy):
        res = melcli("mel", "-", "-o", o, "--checksum", input=listed, cwd=new)
        assert res.returncode == 0, res.stderr
        assert "added 0, updated 0, removed 0, unchanged 3, failed 0" in res.stderr
        assert "repointed: 3 entries" in res.stderr
        assert {e["key"]: e["source"] for e in manifest(o)["entries"]} == {
            str(p.relative_to(old)): str(new / p.relative_to(old)) for p in files
        }
    after = h5_entries(out)
    for key, (data, source) in after.items():
        np.testing.assert_array_equal(data, before[key][0])
        assert source == str(new / key)
    res = melcli("mel", "-", "-o", out, "--checksum", input=listed, cwd=new)
    assert "up to date" in res.stderr and "repointed" not in res.stderr, res.stderr
    # absolute paths under --root: the root moves with the data
    res = melcli("mel", "-", "-o", "abs.h5", "-q", "--checksum", "--root", new / "coll",
                 input=listing(*(new / p.relative_to(old) for p in files)))  # fmt: skip
    assert res.returncode == 0, res.stderr
    shutil.move(new / "coll", tmp_path / "coll2")
    moved = [tmp_path / "coll2" / p.relative_to(old / "coll") for p in files]
    res = melcli("mel", "-", "-o", "abs.h5", "--checksum", "--root", tmp_path / "coll2",
                 input=listing(*moved))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "unchanged 3" in res.stderr and "repointed: 3" in res.stderr
    assert manifest(tmp_path / "abs.h5")["root"] == str(tmp_path / "coll2")
    # without --checksum a moved file cannot be shown to be the same: computed again
    shutil.move(tmp_path / "coll2", tmp_path / "coll3")
    again = listing(*(tmp_path / "coll3" / p.relative_to(old / "coll") for p in files))
    res = melcli("mel", "-", "-o", "abs.h5", "--root", tmp_path / "coll3", input=again)
    assert res.returncode == 0 and "updated 3" in res.stderr, res.stderr


# ---------------------------------------------------------------------------
# item 15: turning --checksum on; an interrupted run's work dropped for other parameters
# ---------------------------------------------------------------------------
def sha256(path: Path) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_turning_checksum_on_hashes_and_keeps_what_size_and_mtime_vouch_for(
    melcli: RunMelcli, tmp_path: Path, fmt: str
) -> None:
    files = collection(tmp_path / "data")
    out = tmp_path / ("feats.h5" if fmt == "h5" else "feats")
    assert melcli("mel", "data", "-o", out, "-q").returncode == 0
    assert not any("source_hash" in e for e in manifest(out)["entries"])
    before = h5_entries(out) if fmt == "h5" else None
    shutil.copy(SAMPLE_AUDIO / "speech" / "hello.wav", files[1])  # really changed (size, mtime)
    res = melcli("mel", "data", "-o", out, "--checksum")
    assert res.returncode == 0, res.stderr
    assert "added 0, updated 1, removed 0, unchanged 2, failed 0" in res.stderr
    entries = {e["key"]: e for e in manifest(out)["entries"]}
    assert {k: e["source_hash"] for k, e in entries.items()} == {
        str(p.relative_to(tmp_path / "data")): sha256(p) for p in files
    }
    if before is not None:
        after = h5_entries(out)
        for key in ("a/001.wav", "speech/numbers.flac"):
            np.testing.assert_array_equal(after[key][0], before[key][0])
    res = melcli("mel", "data", "-o", out, "--checksum")
    assert "unchanged 3" in res.stderr and "up to date" in res.stderr, res.stderr
    # from now on the hashes count: same size, same mtime, other bytes is seen
    same_size_other_audio(files[0], files[0].with_name("tmp.wav"))
    os.replace(files[0].with_name("tmp.wav"), files[0])
    res = melcli("mel", "data", "-o", out, "--checksum")
    assert "updated 1" in res.stderr, res.stderr


EVERY_RESULT = {"MELCLI_CHECKPOINT_SECONDS": "0"}


def test_an_interrupted_runs_work_dropped_for_other_parameters_is_said(
    tmp_path: Path,
) -> None:
    import signal
    import subprocess

    from conftest import melcli_command

    collection(tmp_path / "data")
    out = tmp_path / "feats.h5"

    def run(*args: str, kill: bool = False) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **EVERY_RESULT, **({"MELCLI_KILL_AT": "rename"} if kill else {})}
        return subprocess.run(
            [*melcli_command(), "mel", "data", "-o", str(out), "-j1", *args], cwd=tmp_path,
            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip

    assert run("--n-mels", "64", kill=True).returncode == -signal.SIGKILL
    line = (
        "melcli: warning: the interrupted run in .feats.h5.melcli-work used other parameters "
        "(n_mels (64 -> 128)): its 3 finished entries are dropped"
    )
    dry = run("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert line.replace("are dropped", "would be dropped") in dry.stderr.splitlines()
    res = run()
    assert res.returncode == 0, res.stderr
    assert line in res.stderr.splitlines() and "resumed" not in res.stderr
    assert "added 3" in res.stderr
    assert manifest(out)["params"]["n_mels"] == 128
    # the same parameters resume, without the line
    assert run("--n-fft", "1024", "--overwrite", kill=True).returncode == -signal.SIGKILL
    res = run("--n-fft", "1024", "--overwrite")
    assert "resumed: 3 entries" in res.stderr and "dropped" not in res.stderr, res.stderr
    # every parameter that differs is named, derived ones too
    assert run("--n-fft", "512", "--overwrite", kill=True).returncode == -signal.SIGKILL
    res = run("--overwrite", "--dtype", "float64")
    assert (
        "used other parameters (dtype ('float32' -> 'float64'), hop_length (128 -> 512), "
        "n_fft (512 -> 2048), win_length (512 -> 2048)): its 3 finished entries are dropped"
    ) in res.stderr, res.stderr
