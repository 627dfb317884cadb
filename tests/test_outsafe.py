"""Issue 15 (items 1-3, 6, 7, 17) and 14.2: what melcli may touch at and beside its output.

Real file systems (a small tmpfs for a full disk), real processes, real links.
These tests mount tmpfs and switch users, so they need root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from conftest import melcli_command

MELCLI = melcli_command()


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MELCLI, *map(str, args)], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip


def corpus(root: Path, n: int, samples: int = 1600, sr: int = 16000) -> Path:
    """``n`` short noise files (0.1 s by default): many tiny entries."""
    rng = np.random.default_rng(n)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y = (0.3 * rng.standard_normal(samples)).astype(np.float32)
        sf.write(root / f"f{i:04d}.wav", y, sr, subtype="PCM_16")
    return root


def errors(stderr: str) -> list[str]:
    """Error lines: ``melcli: error: ...`` (exit 1) or Click's ``Error: ...`` (exit 2)."""
    return [line for line in stderr.splitlines() if line.startswith(("melcli: error", "Error: "))]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (remounted to other sizes by the tests that need it)."""
    assert os.geteuid() == 0, "these tests mount a tmpfs and need root (CI runs as root)"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _assert_disk_full(proc: subprocess.CompletedProcess[str], out: Path) -> tuple[float, float]:
    """One error line with real numbers, no traceback, nothing temporary left."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    lines = errors(proc.stderr)
    assert len(lines) == 1, proc.stderr[-2000:]
    m = re.search(
        r"disk full while writing (\S+): needed about ([\d.]+) MB, ([\d.]+) MB free", lines[0]
    )
    assert m and Path(m[1]) == out.absolute(), lines[0]
    _assert_no_temporaries(out)
    return float(m[2]), float(m[3])


def _assert_no_temporaries(out: Path) -> None:
    """Only the lock beside the output, and at most a work directory holding checkpoints
    (a run longer than a checkpoint interval keeps them for the resume)."""
    beside = sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."))
    assert beside in ([f".{out.name}.lock"], [f".{out.name}.lock", f".{out.name}.melcli-work"])
    work = out.parent / f".{out.name}.melcli-work"
    if work.exists():
        names = [p.name for p in work.iterdir()]
        assert all(n == "state.json" or re.fullmatch(r"chunk-\d+\.bin", n) for n in names), names


BACKENDS = [["-j1"], ["-j2", "--backend", "threading"], ["-j2", "--backend", "fork"],
            ["-j2", "--backend", "loky"]]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b[-1])
@pytest.mark.parametrize("name", ["x.h5", "x"])
def test_full_disk_fresh_output(tmp_path: Path, tmpfs: Path, name: str, backend: list[str]) -> None:
    """400 entries whose data (0.8 MB) fits the 1 MB disk by the plan's estimate, but
    not with HDF5's metadata or the npy files' pages: the disk fills up mid-run. This
    segfaulted (HDF5) or said '2048 requested and 2016 written' (npy)."""
    data = corpus(tmp_path / "data", 400)
    out = tmpfs / name
    needed, free = _assert_disk_full(run("mel", data, "-o", out, *backend), out)
    st = os.statvfs(tmpfs)  # what is free once it stopped (checkpoints it kept included)
    assert needed == pytest.approx(0.8, abs=0.05)
    assert free == pytest.approx(st.f_bfree * st.f_frsize / 1e6, abs=0.05)
    assert not out.exists()


@pytest.mark.parametrize("name", ["x.h5", "x"])
def test_full_disk_known_before_computing(tmp_path: Path, tmpfs: Path, name: str) -> None:
    """When the plan's estimate alone exceeds the free space, nothing is computed."""
    data = corpus(tmp_path / "data", 80, samples=16000)
    out = tmpfs / name
    proc = run("mel", data, "-o", out, "-j1", "-v")
    needed, free = _assert_disk_full(proc, out)
    assert needed == pytest.approx(80 * 128 * 32 * 4 / 1e6, abs=0.05) and free > 0.9
    assert "melcli: done" not in proc.stderr


@pytest.mark.parametrize("name", ["x.h5", "x"])
def test_full_disk_incremental_keeps_the_output(tmp_path: Path, tmpfs: Path, name: str) -> None:
    """An incremental run onto a nearly full disk: the HDF5 copy of kept entries
    (h5py raises RuntimeError there) or the npy manifest runs out of space."""
    subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)
    data = corpus(tmp_path / "data", 300)
    out = tmpfs / name
    assert run("mel", data, "-o", out, "-j1").returncode == 0
    before = snapshot(out)
    corpus(tmp_path / "more", 1)
    os.replace(tmp_path / "more" / "f0000.wav", data / "new.wav")
    plan = run("mel", data, "-o", out, "--dry-run").stdout
    size, unit = re.search(r"estimated output size ([\d.]+) (\w+)", plan).groups()  # type: ignore[union-attr]
    estimate = float(size) * {"B": 1, "KB": 1024, "MB": 1024**2}[unit]
    if name == "x":
        estimate = 4096.0  # kept entries are hard links: only the new file needs space
    filler = tmpfs / "filler"
    free = os.statvfs(tmpfs).f_bfree * os.statvfs(tmpfs).f_frsize
    filler.write_bytes(b"\0" * int(free - estimate - 16384))
    proc = run("mel", data, "-o", out, "-j1")
    _assert_disk_full_beside(proc, out, filler)
    assert snapshot(out) == before
    filler.unlink()
    again = run("mel", data, "-o", out, "-j1")
    assert again.returncode == 0 and "added 1," in again.stderr, again.stderr


def _assert_disk_full_beside(
    proc: subprocess.CompletedProcess[str], out: Path, filler: Path
) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    lines = errors(proc.stderr)
    assert len(lines) == 1 and "disk full while writing" in lines[0], proc.stderr[-2000:]
    assert "needed about 0.0 MB" not in lines[0] or out.suffix != ".h5"
    _assert_no_temporaries(out)
    assert filler.exists()


# -- 15.2 / 14.2: files that are not melcli's are never replaced ---------------------------------


def test_user_files_in_an_npy_output_are_never_deleted(tmp_path: Path) -> None:
    """A rerun (or --overwrite) of an npy output holding files melcli did not write
    is refused with one line naming them; they and the output stay as they were."""
    data = corpus(tmp_path / "data", 3)
    out = tmp_path / "np1"
    assert run("mel", data, "-o", out, "-j1").returncode == 0
    (out / "README.txt").write_text("notes")
    (out / "mine").mkdir()
    (out / "mine" / "labels.csv").write_text("x")
    before = snapshot(out)
    os.utime(data / "f0001.wav", (1, 1))  # changed: a rerun has work to do
    for extra in ([], ["--overwrite"]):
        proc = run("mel", data, "-o", out, "-j1", *extra)
        assert proc.returncode == 2, proc.stderr
        line = errors(proc.stderr)
        assert len(line) == 1 and "README.txt" in line[0] and "mine/" in line[0], proc.stderr
        assert snapshot(out) == before
    (out / "README.txt").unlink()
    (out / "mine" / "labels.csv").unlink()
    (out / "mine").rmdir()
    assert run("mel", data, "-o", out, "-j1").returncode == 0


def test_a_copied_manifest_does_not_make_a_folder_melcli_s(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data", 2)
    assert run("mel", data, "-o", tmp_path / "real", "-j1").returncode == 0
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "thesis.tex").write_text("years of work")
    (proj / "src" / "main.py").write_text("print()")
    (proj / "manifest.json").write_bytes((tmp_path / "real" / "manifest.json").read_bytes())
    before = snapshot(proj)
    proc = run("mel", data, "-o", proj, "-j1", "--overwrite")
    assert proc.returncode == 2 and "thesis.tex" in errors(proc.stderr)[0], proc.stderr
    assert snapshot(proj) == before


def test_overwrite_never_replaces_a_file_that_is_not_melcli_s(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data", 2)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    proc = run("mel", data, "-o", notes, "-j1", "--overwrite")  # an npy directory by its suffix
    assert proc.returncode == 2 and "not a melcli" in proc.stderr, proc.stderr
    assert notes.is_file() and notes.read_text() == "my notes"
    important = tmp_path / "important.h5"
    with h5py.File(important, "w") as f:
        f["mine"] = np.arange(3)
    (tmp_path / "important.json").write_text('{"labels": [1, 2]}')
    before = snapshot(important), snapshot(tmp_path / "important.json")
    proc = run("mel", data, "-o", important, "-j1", "--overwrite")
    assert proc.returncode == 2 and len(errors(proc.stderr)) == 1, proc.stderr
    assert (snapshot(important), snapshot(tmp_path / "important.json")) == before


def test_a_users_json_beside_the_output_is_never_replaced(tmp_path: Path) -> None:
    """14.2: `-o train.h5` with the user's own train.json: refused even with --overwrite,
    and the message offers --manifest, which puts the sidecar elsewhere (recorded)."""
    data = corpus(tmp_path / "data", 2)
    labels = tmp_path / "train.json"
    labels.write_text('{"f0000.wav": "cat"}')
    out = tmp_path / "train.h5"
    for extra in ([], ["--overwrite"]):
        proc = run("mel", data, "-o", out, "-j1", *extra)
        assert proc.returncode == 2 and "--manifest" in errors(proc.stderr)[0], proc.stderr
        assert labels.read_text() == '{"f0000.wav": "cat"}' and not out.exists()
    side = tmp_path / "meta" / "train.manifest.json"
    side.parent.mkdir()
    proc = run("mel", data, "-o", out, "-j1", "--manifest", side)
    assert proc.returncode == 0, proc.stderr
    assert labels.read_text() == '{"f0000.wav": "cat"}'
    man = json.loads(side.read_text())
    assert man["sidecar"] == "meta/train.manifest.json" and man["output"] == "../train.h5"
    with h5py.File(out) as f:
        assert json.loads(f["manifest"][()]) == man
    # later runs keep it there without being told; a crash's stale copy is repaired
    side.write_text(json.dumps(man | {"totals": {}}))  # a stale copy (a crash at the commit)
    os.utime(data / "f0001.wav", (1, 1))
    proc = run("mel", data, "-o", out, "-j1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(side.read_text())["totals"]["entries"] == 2
    assert labels.read_text() == '{"f0000.wav": "cat"}'
    shown = run("inspect", side, "--json")
    assert json.loads(shown.stdout)["size_bytes"] == out.stat().st_size


def test_two_hdf5_outputs_of_one_stem_do_not_share_a_manifest(tmp_path: Path) -> None:
    """17: a.h5 and a.hdf5 would both write a.json; the second is refused."""
    data = corpus(tmp_path / "data", 2)
    assert run("mel", data, "-o", tmp_path / "a.h5", "-j1").returncode == 0
    before = (tmp_path / "a.json").read_text()
    for extra in ([], ["--overwrite"]):
        proc = run("mel", data, "-o", tmp_path / "a.hdf5", "-j1", "--n-mels", "40", *extra)
        assert proc.returncode == 2 and "a.h5" in errors(proc.stderr)[0], proc.stderr
        assert "--manifest" in proc.stderr and (tmp_path / "a.json").read_text() == before
    side = tmp_path / "a.hdf5.json"
    proc = run("mel", data, "-o", tmp_path / "a.hdf5", "-j1", "--n-mels", "40", "--manifest", side)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.json").read_text() == before
    for path, mels in ((tmp_path / "a.json", 128), (side, 40)):
        info = json.loads(run("inspect", path, "--json").stdout)
        assert info["params"]["n_mels"] == mels
        h5 = tmp_path / ("a.h5" if mels == 128 else "a.hdf5")
        assert info["size_bytes"] == h5.stat().st_size


def test_a_directory_in_place_of_the_sidecar_is_a_warning(tmp_path: Path) -> None:
    """17: when s.json is a directory, runs still succeed (the HDF5 file holds the manifest)."""
    data = corpus(tmp_path / "data", 2)
    out = tmp_path / "s.h5"
    assert run("mel", data, "-o", out, "-j1").returncode == 0
    (tmp_path / "s.json").unlink()
    (tmp_path / "s.json").mkdir()
    for touch in (False, True):
        if touch:
            os.utime(data / "f0001.wav", (1, 1))
        proc = run("mel", data, "-o", out, "-j1")
        assert proc.returncode == 0, proc.stderr
        assert "warning" in proc.stderr and "s.json" in proc.stderr
    assert (tmp_path / "s.json").is_dir()


# -- 15.3: one output's cleanup never touches another's ----------------------------------------


def _start(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MELCLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_for(pattern: str, where: Path, proc: subprocess.Popen[str]) -> None:
    while not list(where.glob(pattern)):
        assert proc.poll() is None, proc.communicate()


def test_runs_on_outputs_with_prefix_names_leave_each_other_alone(tmp_path: Path) -> None:
    """`-o feats.old-v1.h5` is stopped mid-run (it has a checkpoint and a half-built
    output); runs on `feats` (fresh, then --overwrite) must not delete its work or
    move its lock, and a third run on feats.old-v1.h5 is still locked out."""
    slow = corpus(tmp_path / "slow", 300, samples=16000)
    data = corpus(tmp_path / "data", 2)
    first = tmp_path / "feats.old-v1.h5"
    work = tmp_path / ".feats.old-v1.h5.melcli-work"
    proc = _start("mel", slow, "-o", first, "-j1", env={"MELCLI_CHECKPOINT_SECONDS": "0"})
    try:
        _wait_for("chunk-*.bin", work, proc)
        proc.send_signal(signal.SIGSTOP)
        held = [
            p
            for p in tmp_path.rglob("*")
            if p.relative_to(tmp_path).parts[0].startswith(".feats.old-v1.h5")
        ]  # its lock, checkpoint and half-built output, wherever they are
        assert any(".tmp-" in p.name or p.name.startswith("new-") for p in held)
        for extra in ([], ["--overwrite"], ["--overwrite"]):
            other = run("mel", data, "-o", tmp_path / "feats", "-j1", *extra)
            assert other.returncode == 0, other.stderr
        assert (tmp_path / "feats").is_dir() and (tmp_path / ".feats.old-v1.h5.lock").is_file()
        assert [p for p in held if not p.exists()] == []
        third = run("mel", data, "-o", first, "-j1")
        assert third.returncode == 1 and "another melcli" in third.stderr
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    with h5py.File(first) as f:
        assert len(f["features"]) == 300


def test_a_half_deleted_old_tree_is_never_put_back(tmp_path: Path) -> None:
    """A tree being deleted after a swap (trash-*) is never resurrected as the output;
    a stray `.kn.old-123` beside it (another name's business) is left alone."""
    data = corpus(tmp_path / "data", 3)
    out = tmp_path / "kn"
    assert run("mel", data, "-o", out, "-j1").returncode == 0
    work = tmp_path / ".kn.melcli-work"
    work.mkdir()
    out.rename(work / "trash-123")
    (work / "trash-123" / "f0000.wav.npy").unlink()  # cut while it was being deleted
    stray = tmp_path / ".kn.old-123"
    stray.mkdir()
    (stray / "mine.txt").write_text("x")
    proc = run("mel", data, "-o", out, "-j1")
    assert proc.returncode == 0 and "added 3," in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "f0000.wav.npy", "f0001.wav.npy", "f0002.wav.npy", "manifest.json"]  # fmt: skip
    assert (stray / "mine.txt").read_text() == "x" and not work.exists()


# -- 15.6: planted symlinks ----------------------------------------------------------------------


def test_planted_links_beside_the_output_are_not_followed(tmp_path: Path) -> None:
    assert Path("/proc/sys/fs/protected_symlinks").read_text().strip() == "0"
    data = corpus(tmp_path / "data", 2)
    sl = tmp_path / "sl"
    sl.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = sl / ".feats.h5.lock"
    lock.symlink_to(victim)
    proc = run("mel", data, "-o", sl / "feats.h5", "-j1")
    assert proc.returncode == 1 and "symbolic link" in errors(proc.stderr)[0], proc.stderr
    assert victim.read_text() == "precious" and not (sl / "feats.h5").exists()
    lock.unlink()
    os.link(victim, lock)  # a hard link: truncating it would truncate the victim
    proc = run("mel", data, "-o", sl / "feats.h5", "-j1")
    assert proc.returncode == 1 and "hard link" in errors(proc.stderr)[0], proc.stderr
    assert victim.read_text() == "precious"
    lock.unlink()
    vd = tmp_path / "vd"
    vd.mkdir()
    (vd / "keep.tmp").write_text("mine")
    (vd / "state.json").write_text("{}")
    (sl / ".feats.h5.melcli-work").symlink_to("../vd")
    before = snapshot(vd)
    proc = run("mel", data, "-o", sl / "feats.h5", "-j1")
    assert proc.returncode == 1 and "symbolic link" in errors(proc.stderr)[0], proc.stderr
    assert snapshot(vd) == before and sorted(p.name for p in vd.iterdir()) == [
        "keep.tmp",
        "state.json",
    ]


def test_a_work_directory_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data", 2)
    planted = tmp_path / ".feats.h5.melcli-work"
    planted.mkdir()
    os.chown(planted, 65534, 65534)  # made by nobody, who can write in a shared directory
    proc = run("mel", data, "-o", tmp_path / "feats.h5", "-j1")
    assert proc.returncode == 1 and "another user" in errors(proc.stderr)[0], proc.stderr
    assert planted.is_dir() and not (tmp_path / "feats.h5").exists()


# -- 15.7: a symlinked output is followed -------------------------------------------------------


@pytest.mark.parametrize("name", ["real.h5", "real"])
def test_a_symlinked_output_is_followed(tmp_path: Path, name: str) -> None:
    data = corpus(tmp_path / "data", 2)
    big = tmp_path / "big"
    big.mkdir()
    real = big / name
    assert run("mel", data, "-o", real, "-j1").returncode == 0
    link = tmp_path / ("feats.h5" if name.endswith(".h5") else "feats")
    link.symlink_to(real)
    corpus(tmp_path / "more", 1)
    os.replace(tmp_path / "more" / "f0000.wav", data / "new.wav")
    proc = run("mel", data, "-o", link, "-j1")
    assert proc.returncode == 0 and "added 1," in proc.stderr, proc.stderr
    assert link.is_symlink() and link.resolve() == real
    if name.endswith(".h5"):
        with h5py.File(real) as f:
            assert sorted(f["features"]) == ["f0000.wav", "f0001.wav", "new.wav"]
    else:
        assert (real / "new.wav.npy").is_file()
    # one lock for both names, beside the real output; nothing temporary beside the link
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in big.iterdir() if p.name.startswith(".")) == [f".{name}.lock"]


# -- 15.17: smaller --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kt.h5", "kt"])
def test_sigterm_just_after_the_rename_says_what_is_true(tmp_path: Path, name: str) -> None:
    data = corpus(tmp_path / "data", 2)
    out = tmp_path / name
    assert run("mel", data, "-o", out, "-j1").returncode == 0
    os.utime(data / "f0001.wav", (1, 1))
    proc = run("mel", data, "-o", out, "-j1", env={"MELCLI_KILL_AT": "after-rename:1:TERM"})
    assert proc.returncode == 143, proc.stderr
    assert "untouched" not in proc.stderr and "in place" in errors(proc.stderr)[0], proc.stderr
    again = run("mel", data, "-o", out, "-j1")
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr


def test_a_closed_stdout_after_the_work_is_not_a_failure(tmp_path: Path) -> None:
    """`melcli mel ... | true`: the reader is gone when the path is printed."""
    data = corpus(tmp_path / "data", 2)
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run([*MELCLI, "mel", str(data), "-o", str(tmp_path / "o.h5"), "-j1"],
                          stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr


def test_escaped_names_never_collide(tmp_path: Path) -> None:
    """A file literally named `x\\xff.wav` and a non-UTF-8 `x<0xff>.wav` get two keys."""
    data = corpus(tmp_path / "data", 1)
    os.rename(data / "f0000.wav", os.path.join(os.fsencode(data), b"x\xff.wav"))
    corpus(tmp_path / "more", 1)
    os.rename(tmp_path / "more" / "f0000.wav", data / "x\\xff.wav")
    out = tmp_path / "k.h5"
    proc = run("mel", data, "-o", out, "-j1")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out) as f:
        assert sorted(f["features"]) == sorted(["x\\xff.wav", "x\\\\xff.wav"])


def test_a_long_file_part_on_a_full_disk_is_an_error_not_sigbus(tmpfs: Path) -> None:
    """An npy entry written in parts is memory-mapped; on a full disk its space must be
    reserved first, or writing into the map kills the process with SIGBUS."""
    subprocess.run(["mount", "-o", "remount,size=64k", str(tmpfs)], check=True)
    code = f"""
import numpy as np
from pathlib import Path
from melcli import store
from melcli.workdir import WorkDir, WriteFailed, is_disk_full
out = Path({str(tmpfs / "feats")!r})
work = WorkDir(out)
work.create()
w = store.open_writer(out, "npy", work)
rec = {{"key": "long.wav", "shape": [128, 1000], "dtype": "float32"}}
try:
    w.write_piece(rec, 0, np.ones((128, 10), np.float32))
except WriteFailed as exc:
    print("full" if is_disk_full(exc) else exc)
w.abort()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "full", (proc.returncode, proc.stderr)


def test_a_background_flush_error_is_raised_by_the_next_write_and_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writeback flushes in a thread while writing goes on; its error must still stop
    the run (the next `wrote`) or the commit (`close`), never be lost."""
    import errno as errno_mod

    from melcli import store

    target = tmp_path / "out.h5"
    target.write_bytes(b"x" * 100)

    def failing(fd: int) -> None:
        raise OSError(errno_mod.EIO, "Input/output error")

    monkeypatch.setattr(store.os, "fdatasync", failing)
    wb = store.Writeback(target)
    wb.wrote(store.WRITEBACK_BYTES)  # starts the failing flush in the background
    with pytest.raises(OSError, match="Input/output error"):
        wb.wrote(store.WRITEBACK_BYTES)  # waits for it: its error
    wb.wrote(store.WRITEBACK_BYTES)
    with pytest.raises(OSError, match="Input/output error"):
        wb.close()
    wb.close()  # closed once: nothing left to raise
