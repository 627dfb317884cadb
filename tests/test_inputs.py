"""Inputs that are not what they seem (issue 8.1, 15.12, 15.14, 15.16).

FIFOs, sockets and devices among the inputs, stdin lists with odd bytes, very
deep trees and very long paths, files that are there but cannot be read. Runs
that could hang go through the real executable in a subprocess with a timeout,
so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import soundfile as sf
from conftest import (
    AudioFactory,
    Invoke,
    RunMelcli,
    assert_no_traceback,
    melcli_command,
    sine,
)

#: Runs the command after it with root's file-permission override dropped, so
#: that file modes apply as they would to any other user.
OBEY_MODES = [
    "setpriv", "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]  # fmt: skip

#: Generous: a run here takes about a second; only a hang reaches it.
TIMEOUT = 90


def write_tone(path: Path, freq: float = 440.0) -> Path:
    """A 0.5 s WAV written through a file object: libsndfile cannot open long or
    non-UTF-8 names itself."""
    with open(path, "wb") as fh:
        sf.write(fh, sine(freq, 16000, 0.5), 16000, format="WAV", subtype="PCM_16")
    return path


def manifest_of(out: Path) -> dict[str, Any]:
    """The manifest of an HDF5 or npy output."""
    side = out.with_suffix(".json") if out.suffix == ".h5" else out / "manifest.json"
    data: dict[str, Any] = json.loads(side.read_text(encoding="utf-8"))
    return data


def reasons(man: dict[str, Any]) -> dict[str, str]:
    """Failure key -> reason."""
    return {f["key"]: f["reason"] for f in man["failures"]}


def special_files(root: Path) -> dict[str, str]:
    """Make one input of every kind that is not a regular file; key -> expected reason."""
    os.mkfifo(root / "fifo.wav")
    (root / "to_fifo.wav").symlink_to(root / "fifo.wav")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.path.relpath(root / "sock.wav"))  # relative: AF_UNIX paths are short
    finally:
        sock.close()
    os.mknod(root / "chr.wav", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
    os.mknod(root / "blk.wav", stat.S_IFBLK | 0o600, os.makedev(7, 0))  # like /dev/loop0
    (root / "to_zero.wav").symlink_to("/dev/zero")
    return {
        "fifo.wav": "not a regular file (FIFO)",
        "to_fifo.wav": "not a regular file (FIFO)",
        "sock.wav": "not a regular file (socket)",
        "chr.wav": "not a regular file (character device)",
        "blk.wav": "not a regular file (block device)",
        "to_zero.wav": "not a regular file (character device)",
    }


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_special_files_in_a_walk_are_failures(
    audio: AudioFactory,
    melcli: RunMelcli,
    tmp_path: Path,
    fmt: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A FIFO, a socket, devices and symlinks to them: recorded failures, never
    opened (a FIFO would block the run forever), the rest written, exit 3; the
    rerun carries the failures over without rewriting the output."""
    audio.tone("a.wav")
    audio.tone("sub/b.wav", freq=880)
    monkeypatch.chdir(tmp_path)
    expected = special_files(audio.root)
    out = tmp_path / ("o.h5" if fmt == "h5" else "o")
    proc = melcli("mel", audio.root, "-o", out, "-j", "2", timeout=TIMEOUT)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 3, proc.stderr
    man = manifest_of(out)
    assert reasons(man) == expected
    assert [e["key"] for e in man["entries"]] == ["a.wav", "sub/b.wav"]
    for key, reason in expected.items():
        assert f"melcli: skipped {key}: {reason}" in proc.stderr
    before = os.stat(out).st_ino
    proc = melcli("mel", audio.root, "-o", out, timeout=TIMEOUT)
    assert proc.returncode == 3, proc.stderr
    assert "up to date" in proc.stderr, proc.stderr
    assert os.stat(out).st_ino == before  # nothing rewritten
    assert reasons(manifest_of(out)) == expected


def test_special_files_named_directly_or_on_stdin(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, for inputs named on the command line or listed on stdin; /dev/zero
    and /dev/null given directly fail cleanly too."""
    good = audio.tone("a.wav")
    monkeypatch.chdir(tmp_path)
    expected = special_files(audio.root)
    names = [str(audio.root / k) for k in expected]
    proc = melcli("mel", *names, good, "/dev/zero", "/dev/null", "-o", "d.h5", timeout=TIMEOUT)
    assert proc.returncode == 3, proc.stderr
    assert reasons(manifest_of(tmp_path / "d.h5")) == expected | {
        "zero": "not a regular file (character device)",
        "null": "not a regular file (character device)",
    }
    listing = "\0".join([*names, str(good)]) + "\0"
    proc = melcli("mel", "-", "-0", "-o", "s.h5", input=listing, timeout=TIMEOUT)
    assert proc.returncode == 3, proc.stderr
    assert reasons(manifest_of(tmp_path / "s.h5")) == expected
    proc = melcli("mel", "/dev/zero", "-o", "z.h5", timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stderr
    assert "skipped zero: not a regular file (character device)" in proc.stderr
    assert "no input could be processed" in proc.stderr
    assert_no_traceback(proc.stderr)


def test_checksum_never_reads_special_files(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--checksum (with and without --dry-run) hashes regular files only: a
    symlink to /dev/zero would be hashed forever, a FIFO would block."""
    audio.tone("a.wav")
    monkeypatch.chdir(tmp_path)
    expected = special_files(audio.root)
    proc = melcli("mel", audio.root, "-o", "c.h5", "--checksum", "--dry-run", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "failed 6" in proc.stdout, proc.stdout
    proc = melcli("mel", audio.root, "-o", "c.h5", "--checksum", timeout=TIMEOUT)
    assert proc.returncode == 3, proc.stderr
    man = manifest_of(tmp_path / "c.h5")
    assert reasons(man) == expected
    assert man["entries"][0]["source_hash"].startswith("sha256:")


#: Runs in a subprocess: a regular file is swapped for a FIFO right after melcli's
#: stat and before its open (the window an attacker would aim for).
SWAP_AFTER_STAT = textwrap.dedent(
    """
    import os, sys
    from melcli import audio, plan
    from melcli.errors import DecodeError

    target = sys.argv[1]
    real_stat = os.stat

    def stat_then_swap(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if path == target and not os.path.exists(target + ".swapped"):
            os.unlink(target)
            os.mkfifo(target)
            open(target + ".swapped", "w").close()
        return st

    os.stat = stat_then_swap
    try:
        audio.probe(target)
    except DecodeError as exc:
        print("probe:", exc)
    os.unlink(target + ".swapped")
    os.unlink(target)
    open(target, "wb").write(b"RIFF")
    state = plan.source_state(target, checksum=True)
    print("hash:", state.hash, state.special)
    """
)


def test_fifo_swapped_in_after_the_check_does_not_block(tmp_path: Path) -> None:
    """Between the stat and the open a FIFO replaces the file: the open does not
    block (O_NONBLOCK) and the descriptor's own type is checked."""
    target = tmp_path / "x.wav"
    target.write_bytes(b"RIFF")
    proc = subprocess.run(
        [sys.executable, "-c", SWAP_AFTER_STAT, str(target)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "probe: not a regular file (FIFO)",
        "hash: None not a regular file (FIFO)",
    ]


def long_path_dir(base: Path, total: int) -> Path:
    """A directory under ``base`` whose absolute path is at least ``total`` bytes."""
    d = base
    while len(os.fsencode(d)) < total:
        d = d / ("d" * 200)
    d.mkdir(parents=True)
    return d


def test_path_longer_than_libsndfile_allows(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """libsndfile refuses names over 1023 bytes ('Supplied filename too long'):
    melcli opens the file itself and hands libsndfile the descriptor."""
    deep = long_path_dir(audio.root, 1500)
    wav = write_tone(deep / "a.wav")
    assert len(os.fsencode(wav)) > 1500
    proc = melcli("mel", audio.root, "-o", "l.h5", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    man = manifest_of(tmp_path / "l.h5")
    assert man["failures"] == []
    key = str(wav.relative_to(audio.root))
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert f[f"features/{key}"].shape == tuple(man["entries"][0]["shape"])
    proc = melcli("inspect", wav, "--json", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["errors"] == []


def obey_modes(*args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real executable as a root that file modes apply to."""
    return subprocess.run(
        [*OBEY_MODES, *melcli_command(), *map(str, args)], cwd=cwd, capture_output=True,
        text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT,
    )  # fmt: skip


def test_unreadable_file_fails_then_is_retried(audio: AudioFactory, tmp_path: Path) -> None:
    """A file that cannot be opened is a failure for now, not for good: once it
    can be read the next run adds it."""
    audio.tone("a.wav")
    locked = audio.tone("locked.wav", freq=880)
    locked.chmod(0)
    proc = obey_modes("mel", audio.root, "-o", "u.h5", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert reasons(manifest_of(tmp_path / "u.h5")) == {"locked.wav": "permission denied"}
    locked.chmod(0o644)
    proc = obey_modes("mel", audio.root, "-o", "u.h5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "added 1, updated 0, removed 0, unchanged 1, failed 0" in proc.stderr


@pytest.mark.parametrize("how", ["checksum", "unsearchable"])
def test_unchanged_entries_of_unreadable_files_are_kept(
    audio: AudioFactory, tmp_path: Path, how: str
) -> None:
    """Files that were read before and cannot be read now (--checksum must read
    them; a directory that can be listed but not searched hides them) keep
    their entries, with one line each, instead of losing them to a failure."""
    audio.tone("a.wav")
    audio.tone("sub/b.wav", freq=880)
    audio.tone("sub/c.wav", freq=660)
    flags = ["--checksum"] if how == "checksum" else []
    proc = obey_modes("mel", audio.root, "-o", "k.h5", *flags, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = manifest_of(tmp_path / "k.h5")["entries"]
    sub = audio.root / "sub"
    if how == "checksum":
        for name in ("b.wav", "c.wav"):
            (sub / name).chmod(0)
    else:
        sub.chmod(0o644)  # r--: names can be listed, files cannot be reached
    try:
        proc = obey_modes("mel", audio.root, "-o", "k.h5", *flags, "-q", cwd=tmp_path)
    finally:
        sub.chmod(0o755)
        for name in ("b.wav", "c.wav"):
            (sub / name).chmod(0o644)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    man = manifest_of(tmp_path / "k.h5")
    assert man["entries"] == before and man["failures"] == []
    for key in ("sub/b.wav", "sub/c.wav"):
        assert f"melcli: skipped {key}: permission denied; its entry is kept" in proc.stderr


def test_stdin_names_are_bytes_whatever_the_locale(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """A name that is not valid UTF-8, listed with -0 while stdin's encoding is
    strict UTF-8 (as under en_US.UTF-8), is read as it is."""
    odd = os.fsdecode(b"caf\xe9.wav")
    write_tone(audio.root / odd)
    listing = os.fsencode(audio.root / odd) + b"\0"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(
        [*melcli_command(), "mel", "-", "-0", "-o", "b.h5"], input=listing, cwd=tmp_path,
        capture_output=True, timeout=TIMEOUT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [e["key"] for e in manifest_of(tmp_path / "b.h5")["entries"]] == ["caf\\xe9.wav"]


def test_stdin_newline_lists_split_on_newline_only(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    """Names holding \\r, U+0085 or U+2028 survive a newline-separated list; blank
    lines are skipped."""
    names = ["cr\r.wav", "nel\u0085.wav", "ls\u2028.wav", "plain.wav"]
    for i, name in enumerate(names):
        audio.tone(name, freq=300 + 100 * i)
    listing = "\n".join(f"in/{n}" for n in names) + "\n\n"
    res = invoke("mel", "-", "-o", "n.h5", input=listing.encode())
    assert res.exit_code == 0, res.stderr
    keys = [e["key"] for e in manifest_of(tmp_path / "n.h5")["entries"]]
    assert keys == sorted(f"in/{n}" for n in names)


def test_stdin_nul_in_a_newline_list(audio: AudioFactory, melcli: RunMelcli) -> None:
    """A NUL byte in a newline-separated list (find -print0 without -0): one line,
    exit 2, never a ValueError traceback."""
    audio.tone("a.wav")
    proc = melcli("mel", "-", "-o", "x.h5", input="in/a.wav\0in/b.wav\n")
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 2
    assert "line 1 of the list on standard input contains a NUL byte" in proc.stderr
    assert "-0" in proc.stderr


@pytest.fixture
def deep_cleanup(tmp_path: Path) -> Iterator[None]:
    """Remove the test's trees without recursion afterwards: pytest's own cleanup
    of old temporary directories (shutil.rmtree) would hit the recursion limit."""
    yield
    from melcli.store import remove_tree

    remove_tree(tmp_path)


@pytest.mark.usefixtures("deep_cleanup")
def test_very_deep_tree(audio: AudioFactory, melcli: RunMelcli, tmp_path: Path) -> None:
    """A tree 1000 levels deep is walked (no RecursionError), in the same order as
    a shallow one, and its files are read and written in both formats."""
    deep = audio.root
    for _ in range(1000):  # os.makedirs and Path.mkdir(parents=True) recurse
        deep = deep / "d"
        deep.mkdir()
    write_tone(deep / "z.wav")
    audio.tone("d/a.wav", freq=880)
    audio.tone("m.wav", freq=660)
    deep_key = "d/" * 1000 + "z.wav"
    for out in ("t.h5", "t"):
        proc = melcli("mel", audio.root, "-o", out, timeout=TIMEOUT)
        assert_no_traceback(proc.stderr)
        assert proc.returncode == 0, proc.stderr
        man = manifest_of(tmp_path / out)
        assert [e["key"] for e in man["entries"]] == sorted(["d/a.wav", deep_key, "m.wav"])
    data = np.load(tmp_path / "t" / f"{deep_key}.npy")
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert np.array_equal(f[f"features/{deep_key}"][()], data)
    proc = melcli("inspect", "t", timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    # an incremental rerun checks the npy tree for files melcli did not write: any depth
    audio.tone("m.wav", freq=770)
    proc = melcli("mel", audio.root, "-o", "t", timeout=TIMEOUT)
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 0 and "updated 1" in proc.stderr, proc.stderr


def test_walk_order_is_unchanged(audio: AudioFactory) -> None:
    """The iterative walk yields what the recursive one did: depth first, names
    sorted within each directory, hidden names skipped, symlinked directories
    followed once."""
    from melcli.discover import discover

    for name in ("b/x.wav", "a.wav", "b/a/y.flac", "c.wav", ".h/z.wav", "b/.q.wav", "b/n.txt"):
        audio.tone(name) if name.endswith((".wav", ".flac")) else audio.raw(name, b"x")
    (audio.root / "b" / "loop").symlink_to(audio.root / "b")
    (audio.root / "link").symlink_to(audio.root / "b" / "a")
    found = discover([str(audio.root)])
    assert [s.key for s in found.sources] == ["a.wav", "b/a/y.flac", "b/x.wav", "c.wav"]
    assert len(found.warnings) == 2  # b/loop and link: directories already walked


@pytest.mark.parametrize("output", ["/", "//", "..", "sub/.."])
def test_output_that_names_nothing(audio: AudioFactory, invoke: Invoke, output: str) -> None:
    """-o / (or ..): one usage line, exit 2, never a ValueError traceback."""
    audio.tone("a.wav")
    (audio.root.parent / "sub").mkdir()
    res = invoke("mel", "in", "-o", output)
    assert res.exit_code == 2, res.stderr
    assert f"--output {output} names no file or directory" in res.stderr


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split files above 20 000 samples into parts of about 8 000."""
    from melcli import pipeline

    monkeypatch.setattr(pipeline, "SPLIT_SAMPLES", 20_000)
    monkeypatch.setattr(pipeline, "PART_SAMPLES", 8_000)


@pytest.mark.usefixtures("small_parts")
@pytest.mark.parametrize("seconds", [0.5, 3.0], ids=["whole", "in-parts"])
def test_name_too_long_for_npy_is_one_failure(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, seconds: float
) -> None:
    """A 251-byte name + .wav is a valid input name, but + .npy is too long for
    the file system: a failure of that input (exit 3), not of the run; HDF5 stores
    it; the rerun carries the failure over without rewriting anything."""
    long_name = "x" * 251 + ".wav"
    audio.tone(long_name, seconds=seconds)
    audio.tone("sub/" + long_name, seconds=seconds, freq=880)
    audio.tone("a.wav", seconds=seconds, freq=660)
    res = invoke("mel", "in", "-o", "np", "-j", "1")
    assert res.exit_code == 3, res.stderr
    man = manifest_of(tmp_path / "np")
    why = "cannot store: name too long for the output's file system"
    assert reasons(man) == {long_name: why, "sub/" + long_name: why}
    assert [e["key"] for e in man["entries"]] == ["a.wav"]
    assert sorted(p.name for p in (tmp_path / "np").iterdir()) == ["a.wav.npy", "manifest.json"]
    assert not list(tmp_path.glob(".np.*tmp*"))
    res = invoke("mel", "in", "-o", "np", "-j", "1")
    assert res.exit_code == 3 and "up to date" in res.stderr, res.stderr
    res = invoke("mel", "in", "-o", "o.h5", "-j", "1")
    assert res.exit_code == 0, res.stderr
    assert len(manifest_of(tmp_path / "o.h5")["entries"]) == 3
