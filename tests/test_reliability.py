"""Issue 3: crash safety, resume, incremental reruns, the lock, a full disk.

Real subprocesses killed with real signals, real files read back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from melcli import audio, store, workdir
from melcli.cli import cli
from melcli.workdir import ChunkFile, Spool, WorkDir
from tests.conftest import assert_same_manifest, feature_arrays

MELCLI = [sys.executable, "-m", "melcli"]


def write_tone(
    path: Path, seconds: float, sr: int = 16000, freq: float = 440.0, seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y.astype(np.float32), sr, subtype="PCM_16")


def make_corpus(root: Path, n: int = 6, seconds: float = 1.0) -> Path:
    for i in range(n):
        write_tone(root / f"d{i % 2}" / f"f{i:03d}.wav", seconds, freq=200.0 + 50 * i, seed=i)
    return root


def run(
    *args: str | Path, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*MELCLI, *map(str, args)], capture_output=True, text=True, env=full_env, **kw
    )  # type: ignore[call-overload]


def _manifest(path: Path) -> dict[str, object]:
    return json.loads(
        (path.with_suffix(".json") if path.suffix == ".h5" else path / "manifest.json").read_text()
    )


def strip(man: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in man.items() if k not in ("created", "command")}


def content(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Entries (read through melcli.open) and the manifest without run-specific fields."""
    return feature_arrays(path), strip(_manifest(path))


def assert_same(a: Path, b: Path) -> None:
    da, ma = content(a)
    db, mb = content(b)
    assert_same_manifest(ma, mb)
    assert sorted(da) == sorted(db)
    for key in da:
        assert da[key].dtype == db[key].dtype
        assert np.array_equal(da[key], db[key]), key


def leftovers(directory: Path, output: Path) -> list[str]:
    """Temporaries beside ``output`` (the lock file is allowed to stay)."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name.startswith(f".{output.name}") and p.name != f".{output.name}.lock"
    )


# -- fault injection at the worst moments ------------------------------------------------


#: Tests that need finished work in the work dir checkpoint after every result.
EVERY_RESULT = {"MELCLI_CHECKPOINT_SECONDS": "0"}


@pytest.mark.parametrize(
    ("fmt", "point"),
    [
        *((fmt, point) for fmt in ("h5", "npy", "kaldi")
          for point in ("write:2", "chunk-write", "assemble:3", "rename", "after-rename")),
        ("kaldi", "ark:4"),  # while the ark is written from the run's .npy files
    ],
)  # fmt: skip
def test_kill_at_worst_moments_keeps_old_output_and_resumes(
    tmp_path: Path, fmt: str, point: str
) -> None:
    data = make_corpus(tmp_path / "data")
    out = tmp_path / ("feats.h5" if fmt == "h5" else "feats")
    fmt_args = ("--format", fmt)
    assert run("mel", data, "-o", out, "-j", "1", *fmt_args).returncode == 0
    before = content(out)
    # grow and change the data set, then die at `point` while updating the output
    write_tone(data / "d0" / "new1.wav", 1.0, freq=900)
    write_tone(data / "d1" / "new2.wav", 1.5, freq=950)
    write_tone(data / "d0" / "f000.wav", 2.0, freq=1000)
    env = {"MELCLI_KILL_AT": point, **EVERY_RESULT}
    killed = run("mel", data, "-o", out, "-j", "1", *fmt_args, env=env)
    assert killed.returncode == -signal.SIGKILL
    after_kill = content(out)  # readable by h5py / numpy at every instant
    if point == "after-rename":
        assert sorted(after_kill[0]) != sorted(before[0])  # the new output was already in place
    else:
        assert after_kill[1] == before[1]
        assert sorted(after_kill[0]) == sorted(before[0])
    # rerun the same command: completes, and equals a run that was never interrupted
    again = run("mel", data, "-o", out, "-j", "1", *fmt_args)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    ref = tmp_path / ("ref.h5" if fmt == "h5" else "ref")
    assert run("mel", data, "-o", ref, "-j", "1", *fmt_args).returncode == 0
    assert_same(out, ref)
    assert leftovers(tmp_path, out) == []
    if fmt == "h5":  # the sidecar agrees with the manifest inside the file
        with h5py.File(out, "r") as f:
            inside = json.loads(f["manifest"][()])
        assert json.loads(out.with_suffix(".json").read_text()) == inside


def test_kill_during_first_run_leaves_no_output(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data")
    out = tmp_path / "feats.h5"
    env = {"MELCLI_KILL_AT": "rename", **EVERY_RESULT}
    killed = run("mel", data, "-o", out, "-j", "1", env=env)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and not out.with_suffix(".json").exists()
    again = run("mel", data, "-o", out, "-j", "1")
    assert again.returncode == 0
    # everything had been computed and checkpointed before the kill: nothing is recomputed
    assert "resumed: 6 entries" in again.stderr
    assert leftovers(tmp_path, out) == []


def test_run_shorter_than_a_checkpoint_writes_features_once(tmp_path: Path) -> None:
    """Before the first checkpoint (5 s) features go only into the new output."""
    data = make_corpus(tmp_path / "data")
    out = tmp_path / "feats.h5"
    killed = run("mel", data, "-o", out, "-j", "1", env={"MELCLI_KILL_AT": "rename"})
    assert killed.returncode == -signal.SIGKILL
    work = tmp_path / ".feats.h5.melcli-work"
    assert (work / "state.json").is_file() and not list(work.glob("chunk-*"))
    temp = list(work.glob("new-*.h5"))  # the new output is built inside the work directory
    assert len(temp) == 1 and len(feature_arrays(temp[0])) == 6  # complete, just not renamed
    again = run("mel", data, "-o", out, "-j", "1")
    assert again.returncode == 0, again.stderr
    assert "resumed" not in again.stderr
    assert leftovers(tmp_path, out) == []


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_checkpoint_reads_back_entries_it_no_longer_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Past FLUSH_BYTES in memory, a checkpoint copies entries from the output being built."""
    monkeypatch.setattr(workdir, "FLUSH_BYTES", 100)
    out = tmp_path / ("feats.h5" if fmt == "h5" else "feats")
    work = WorkDir(out)
    work.start({"params": {}, "format": fmt}, keep=False)
    writer = store.open_writer(out, fmt, work)  # builds the output inside the work dir
    read: list[tuple[str, int, int]] = []

    def read_back(key: str, frame: int, n_frames: int) -> np.ndarray:
        read.append((key, frame, n_frames))
        return writer.read_piece(key, frame, n_frames)

    spool = Spool(work, read_back=read_back)
    rng = np.random.default_rng(0)
    whole, long = rng.random((4, 10), dtype=np.float32), rng.random((4, 10), dtype=np.float32)
    base = {"dtype": "float32", "shape": [4, 10], "sample_rate": 16000, "n_samples": 4608,
            "duration": 0.288, "channels": 1}  # fmt: skip
    a = {**base, "key": "a.wav", "source": "a.wav"}
    b = {**base, "key": "d/b.wav", "source": "d/b.wav"}
    writer.write_piece(a, 0, whole)
    spool.add_entry(a, whole)
    for part, (start, stop) in [(1, (6, 10)), (0, (0, 6))]:  # parts in any order
        writer.write_piece(b, start, long[:, start:stop])
        spool.add_entry({**b, "part": part, "parts": 2, "frame_start": start}, long[:, start:stop])
    spool.flush()
    assert sorted(read) == [("a.wav", 0, 10), ("d/b.wav", 0, 6), ("d/b.wav", 6, 4)]
    writer.abort()  # the output being built is gone: the chunks alone hold the work
    records = {r.record["key"]: r for r in work.records()}
    assert sorted(records) == ["a.wav", "d/b.wav"]
    for key, expect in [("a.wav", whole), ("d/b.wav", long)]:
        got = []
        for chunk, member, _frame, shard, _raw in records[key].pieces:
            assert shard is None  # written by this process, not into a shard
            with ChunkFile(chunk) as cf:
                got.append(cf.read(member))
        np.testing.assert_array_equal(np.concatenate(got, axis=-1), expect)


# -- real signals to the real process group ---------------------------------------------------


@pytest.fixture(scope="module")
def slow_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small files that take seconds to process with a tiny hop (many frames)."""
    root = tmp_path_factory.mktemp("slow")
    for i in range(96):
        write_tone(root / f"s{i:02d}.wav", 6.0, freq=300.0 + 7 * i, seed=i)
    return root


# ~12 s of work on 2 cores, so that the first checkpoint (after 5 s) lands mid-run
SLOW_ARGS = ["--n-fft", "2048", "--hop-length", "2", "--n-mels", "8", "-j", "2"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MELCLI, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _wait_for_chunk(work: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not list(work.glob("chunk-*.bin")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no chunk was ever written"
        time.sleep(0.05)


def _chunk_keys(work: Path) -> set[str]:
    """Keys of the entries complete in the chunks (a heavy file is split into parts)."""
    parts: dict[str, set[int]] = {}
    total: dict[str, int] = {}
    for chunk in work.glob("chunk-*.bin"):
        with ChunkFile(chunk) as cf:
            for e in cf.meta["entries"]:
                parts.setdefault(e["key"], set()).add(int(e.get("part", 0)))
                total[e["key"]] = int(e.get("parts", 1))
    return {key for key, got in parts.items() if len(got) == total[key]}


@pytest.fixture(scope="module")
def slow_reference(slow_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("ref") / "ref.h5"
    done = run("mel", slow_corpus, "-o", ref, *SLOW_ARGS)
    assert done.returncode == 0, done.stderr
    return ref


def test_sigkill_of_process_group_then_resume(
    slow_corpus: Path, slow_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats.h5"
    proc = _start(["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS], tmp_path)
    work = tmp_path / ".feats.h5.melcli-work"
    _wait_for_chunk(work, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # power loss: parent and workers at once
    proc.communicate()
    assert not out.exists()
    finished = _chunk_keys(work)
    assert finished
    again = run("mel", slow_corpus, "-o", out, *SLOW_ARGS)
    assert again.returncode == 0, again.stderr
    assert f"resumed: {len(finished)} entries" in again.stderr
    assert_same(out, slow_reference)
    assert not work.exists()


def _group_alive(pgid: int) -> bool:
    ps = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True)
    return bool(ps.stdout.strip())


@pytest.mark.parametrize("backend", ["threading", "fork"])
@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_ctrl_c_and_sigterm_keep_progress(
    slow_corpus: Path,
    slow_reference: Path,
    tmp_path: Path,
    sig: int,
    code: int,
    word: str,
    backend: str,
) -> None:
    out = tmp_path / "feats.h5"
    args = ["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS, "--backend", backend]
    proc = _start(args, tmp_path)
    work = tmp_path / ".feats.h5.melcli-work"
    _wait_for_chunk(work, proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    stopped = time.monotonic() - sent
    assert proc.returncode == code
    assert stopped < 10  # "promptly": workers are stopped, not waited for
    lines = [line for line in err.splitlines() if line.startswith("melcli: error")]
    assert len(lines) == 1 and word in lines[0] and "rerun the same command to resume" in lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    kept = _chunk_keys(work)
    assert kept
    # workers stop within a few seconds of their parent
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid)
    again = run("mel", slow_corpus, "-o", out, *SLOW_ARGS)
    assert again.returncode == 0
    assert f"resumed: {len(kept)} entries" in again.stderr
    assert_same(out, slow_reference)


def test_workers_die_with_a_sigkilled_parent(slow_corpus: Path, tmp_path: Path) -> None:
    """Forked workers must not outlive a parent killed alone (e.g. by the OOM killer)."""
    out = tmp_path / "feats.h5"
    args = ["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS, "--backend", "fork"]
    proc = _start(args, tmp_path)
    _wait_for_chunk(tmp_path / ".feats.h5.melcli-work", proc)
    assert _group_alive(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only
    proc.wait(timeout=10)  # not communicate(): surviving workers would hold its pipes open
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    survived = _group_alive(proc.pid)
    if survived:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert not survived


def test_a_dead_worker_process_is_one_error_line_and_resumable(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data")
    out = tmp_path / "feats.h5"
    args = ["mel", str(data), "-o", str(out), "-j", "2", "--backend", "fork"]
    env = {**os.environ, "MELCLI_KILL_AT": "extract:2"}  # a worker SIGKILLs itself
    proc = subprocess.Popen(
        [*MELCLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("melcli:")]
    assert len(lines) == 1, err
    assert "a worker process died unexpectedly" in lines[0]
    assert "rerun the same command to resume" in lines[0]
    assert not out.exists()
    time.sleep(0.5)
    assert not _group_alive(proc.pid)  # the other worker was stopped too
    again = run(*args)
    assert again.returncode == 0, again.stderr
    ref = tmp_path / "ref.h5"
    assert run("mel", data, "-o", ref, "-j", "1").returncode == 0
    assert_same(out, ref)
    assert leftovers(tmp_path, out) == []


def test_many_tiny_npy_entries_under_a_low_open_file_limit(tmp_path: Path) -> None:
    """No descriptor stays open per file written (cron and systemd limits are often low)."""
    import resource

    data = tmp_path / "data"
    for i in range(300):
        write_tone(data / f"c{i:03d}.wav", 0.05, freq=200.0 + i, seed=i)
    out = tmp_path / "feats"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    done = subprocess.run(
        [*MELCLI, "mel", str(data), "-o", str(out)], capture_output=True, text=True,
        preexec_fn=low_limit,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("*.npy"))) == 300


# -- incremental reruns ---------------------------------------------------------------------------


def _cli(*args: str | Path, input: str | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize("fmt", ["h5", "npy", "kaldi"])
def test_incremental_rerun_adds_updates_removes_only_what_changed(tmp_path: Path, fmt: str) -> None:
    data = make_corpus(tmp_path / "data", n=8)
    out = tmp_path / ("feats.h5" if fmt == "h5" else "feats")
    assert _cli("mel", data, "-o", out, "-j", "1", "--format", fmt)[0] == 0
    before, _ = content(out)
    write_tone(data / "d0" / "added1.wav", 1.0, freq=700)
    write_tone(data / "d1" / "added2.wav", 1.0, freq=710)
    write_tone(data / "d1" / "added3.wav", 1.0, freq=720)
    write_tone(data / "d0" / "f002.wav", 1.2, freq=730)  # updated
    (data / "d1" / "f001.wav").unlink()
    (data / "d0" / "f004.wav").unlink()
    code, stdout, stderr = _cli("mel", data, "-o", out, "-j", "1", "--format", fmt)
    assert code == 0, stderr
    assert "added 3, updated 1, removed 2, unchanged 5, failed 0" in stderr
    after, man = content(out)
    assert sorted(after) == sorted(
        ["d0/f000.wav", "d0/f002.wav", "d0/f006.wav", "d1/f003.wav", "d1/f005.wav", "d1/f007.wav",
         "d0/added1.wav", "d1/added2.wav", "d1/added3.wav"]
    )  # fmt: skip
    for key in ("d0/f000.wav", "d0/f006.wav", "d1/f003.wav", "d1/f005.wav", "d1/f007.wav"):
        assert after[key].tobytes() == before[key].tobytes()
    assert after["d0/f002.wav"].shape != before["d0/f002.wav"].shape
    assert [e["key"] for e in man["entries"]] == sorted(after)  # type: ignore[index]
    assert leftovers(tmp_path, out) == []


def test_rerun_with_nothing_to_do_decodes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_corpus(tmp_path / "data")
    out = tmp_path / "feats.h5"
    assert _cli("mel", data, "-o", out, "-j", "1")[0] == 0
    stamp = out.stat().st_mtime_ns

    def no_decoding(*a: object, **k: object) -> None:
        raise AssertionError("decoded on a rerun with nothing to do")

    monkeypatch.setattr("melcli.audio.load", no_decoding)
    monkeypatch.setattr("melcli.audio.probe", no_decoding)
    code, stdout, stderr = _cli("mel", data, "-o", out, "-j", "1")
    assert code == 0, stderr
    assert "added 0, updated 0, removed 0, unchanged 6, failed 0" in stderr
    assert out.stat().st_mtime_ns == stamp  # not rewritten
    assert stdout.strip() == str(out)


def test_different_parameters_refuse_and_name_them(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data", n=2)
    out = tmp_path / "feats.h5"
    assert _cli("mel", data, "-o", out, "-j", "1")[0] == 0
    code, _, stderr = _cli(
        "mel", data, "-o", out, "-j", "1", "--n-mels", "64", "--hop-length", "256"
    )
    assert code == 2
    assert "n_mels (128 -> 64)" in stderr and "hop_length (512 -> 256)" in stderr
    assert "--overwrite" in stderr
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1", "--n-mels", "64", "--overwrite")
    assert code == 0, stderr
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["params"])["n_mels"] == 64


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data", n=4)
    out = tmp_path / "feats.h5"
    code, stdout, _ = _cli("mel", data, "-o", out, "--dry-run")
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert "would add 4, update 0, remove 0, keep 0 unchanged" in stdout
    assert "estimated output size" in stdout
    assert _cli("mel", data, "-o", out, "-j", "1")[0] == 0
    write_tone(data / "d0" / "extra.wav", 2.0)
    (data / "d1" / "f001.wav").unlink()
    listing = sorted(os.listdir(tmp_path))
    stamp = out.stat().st_mtime_ns
    code, stdout, _ = _cli("mel", data, "-o", out, "--dry-run")
    assert code == 0
    assert "add d0/extra.wav" in stdout.splitlines()
    assert "remove d1/f001.wav" in stdout.splitlines()
    assert "would add 1, update 0, remove 1, keep 3 unchanged" in stdout
    assert sorted(os.listdir(tmp_path)) == listing and out.stat().st_mtime_ns == stamp


def test_checksum_ignores_touch_but_sees_content(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data", n=3)
    out = tmp_path / "feats.h5"
    assert _cli("mel", data, "-o", out, "-j", "1", "--checksum")[0] == 0
    target = data / "d0" / "f000.wav"
    os.utime(target, (time.time() + 100, time.time() + 100))
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1", "--checksum")
    assert "added 0, updated 0, removed 0, unchanged 3, failed 0" in stderr
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")  # size + mtime: touched = changed
    assert "updated 1" in stderr
    write_tone(target, 1.0, freq=1234)  # same size, new content
    os.utime(target, (1_000_000_000, 1_000_000_000))
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1", "--checksum")
    assert "updated 1" in stderr
    man = json.loads(out.with_suffix(".json").read_text())
    assert all(e["source_hash"].startswith("sha256:") for e in man["entries"])


def test_broken_file_is_not_retried_until_it_changes(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data", n=2)
    (data / "bad.wav").write_bytes(b"not audio at all")
    out = tmp_path / "feats.h5"
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")
    assert code == 3 and "melcli: skipped bad.wav:" in stderr
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")
    assert code == 3  # still listed as failed, not decoded again
    assert "skipped" not in stderr and "unchanged 2, failed 1" in stderr
    write_tone(data / "bad.wav", 1.0)
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")
    assert code == 0 and "added 1, updated 0, removed 0, unchanged 2, failed 0" in stderr


# -- one writer at a time -------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from melcli.workdir import OutputLock
lock = OutputLock(Path(sys.argv[1]))
lock.acquire("melcli mel holder")
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_exits_naming_the_first_and_dead_lock_does_not_block(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data", n=2)
    out = tmp_path / "feats.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        second = run("mel", data, "-o", out, "-j", "1")
        assert second.returncode == 1
        assert f"pid {holder.pid}" in second.stderr and "another melcli" in second.stderr
        assert not out.exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock
        holder.communicate()
    third = run("mel", data, "-o", out, "-j", "1")
    assert third.returncode == 0, third.stderr


# -- the disk fills up ----------------------------------------------------------------------------


def _assert_disk_full(
    code: int, stderr: str, out: Path, before: tuple[dict[str, np.ndarray], dict[str, object]]
) -> None:
    assert code == 1
    line = [x for x in stderr.splitlines() if x.startswith("melcli: error")]
    assert len(line) == 1 and "disk full" in line[0] and "MB" in line[0]
    assert "Traceback" not in stderr
    now = content(out)
    assert now[1] == before[1] and sorted(now[0]) == sorted(before[0])
    assert not [p for p in out.parent.rglob("*") if ".tmp" in p.name]


def test_disk_full_on_a_real_tiny_filesystem(tmp_path: Path) -> None:
    """A 700 KB tmpfs (CI runs as root, so it can mount one)."""
    assert os.geteuid() == 0, "this test mounts a tmpfs and needs root (CI runs as root)"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)], check=True)
    try:
        data = make_corpus(tmp_path / "data", n=2, seconds=0.5)
        out = mnt / "feats.h5"
        assert run("mel", data, "-o", out, "-j", "1").returncode == 0
        before = content(out)
        big = run("stft", data, "-o", out, "-j", "1", "--overwrite", "--hop-length", "16")
        _assert_disk_full(big.returncode, big.stderr, out, before)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_injected_while_assembling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_corpus(tmp_path / "data", n=3)
    out = tmp_path / "feats.h5"
    assert _cli("mel", data, "-o", out, "-j", "1")[0] == 0
    before = content(out)
    write_tone(data / "d0" / "more.wav", 1.0)

    def full(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    monkeypatch.setenv("MELCLI_CHECKPOINT_SECONDS", "0")
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")
    _assert_disk_full(code, stderr, out, before)
    monkeypatch.undo()
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")
    assert code == 0 and "resumed: 1 entries" in stderr


# -- found in review ------------------------------------------------------------------------------


def test_sigterm_in_process_run_is_not_a_file_failure(slow_corpus: Path, tmp_path: Path) -> None:
    """-j 1 computes in the parent: SIGTERM must stop the run (143), not fail a file."""
    out = tmp_path / "feats.h5"
    args = ["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS[:-2], "-j", "1"]
    proc = _start(args, tmp_path)
    _wait_for_chunk(tmp_path / ".feats.h5.melcli-work", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "skipped" not in err and "internal error" not in err


def test_resume_after_the_input_changed_uses_the_new_version(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data", n=3)
    out = tmp_path / "feats.h5"
    env = {"MELCLI_KILL_AT": "rename", **EVERY_RESULT}
    killed = run("mel", data, "-o", out, "-j", "1", env=env)
    assert killed.returncode == -signal.SIGKILL  # every entry is in the work dir
    write_tone(data / "d0" / "f000.wav", 3.0, freq=999)  # changed before the resume
    again = run("mel", data, "-o", out, "-j", "1")
    assert again.returncode == 0, again.stderr
    assert "resumed: 2 entries" in again.stderr
    ref = tmp_path / "ref.h5"
    assert run("mel", data, "-o", ref, "-j", "1").returncode == 0
    assert_same(out, ref)


def test_checksum_on_an_output_made_without_it_trusts_size_and_mtime_once(tmp_path: Path) -> None:
    """Issue 14.15: turning --checksum on hashes the inputs and keeps the entries whose
    size and mtime match (as the runs that made them did); the hashes count from then on."""
    data = make_corpus(tmp_path / "data", n=2)
    out = tmp_path / "feats.h5"
    assert _cli("mel", data, "-o", out, "-j", "1")[0] == 0
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1", "--checksum")
    assert code == 0 and "unchanged 2" in stderr, stderr
    target = data / "d0" / "f000.wav"
    st = target.stat()
    write_tone(target, 1.0, freq=1234)  # same size, new content, old mtime
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1", "--checksum")
    assert code == 0 and "updated 1" in stderr and "unchanged 1" in stderr, stderr


def test_permission_failures_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_corpus(tmp_path / "data", n=2)
    out = tmp_path / "feats.h5"
    real = audio.open_regular

    def denied(path: str) -> tuple[int, os.stat_result]:
        if path.endswith("f000.wav"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(audio, "open_regular", denied)  # the open melcli does
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")
    assert code == 3 and "permission denied" in stderr
    monkeypatch.undo()
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")  # same size and mtime
    assert code == 0 and "added 1" in stderr and "failed 0" in stderr


def test_dry_run_changes_nothing_not_even_a_stale_sidecar(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data", n=2)
    out = tmp_path / "feats.h5"
    assert _cli("mel", data, "-o", out, "-j", "1")[0] == 0
    side = out.with_suffix(".json")
    stale = json.loads(side.read_text()) | {"totals": {}}  # a melcli manifest, out of date
    side.write_text(json.dumps(stale))
    assert _cli("mel", data, "-o", out, "--dry-run")[0] == 0
    assert json.loads(side.read_text()) == stale
    assert _cli("mel", data, "-o", out, "-j", "1")[0] == 0  # a real run repairs it
    assert json.loads(side.read_text())["totals"]["entries"] == 2


def test_directory_swap_cut_between_renames_is_undone(tmp_path: Path) -> None:
    """Without RENAME_EXCHANGE the npy swap is two renames; a kill between them leaves
    the previous tree at .<name>.melcli-work/old-<pid>: the next run puts it back first."""
    data = make_corpus(tmp_path / "data", n=2)
    out = tmp_path / "feats"
    assert _cli("mel", data, "-o", out, "-j", "1")[0] == 0
    before = content(out)
    (tmp_path / ".feats.melcli-work").mkdir()
    out.rename(tmp_path / ".feats.melcli-work" / "old-12345")
    code, _, stderr = _cli("mel", data, "-o", out, "-j", "1")
    assert code == 0 and "unchanged 2" in stderr
    assert content(out)[1] == before[1]
    assert leftovers(tmp_path, out) == []


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"),
     (signal.SIGHUP, 129, "hung up")],
)  # fmt: skip
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_stop_signal_from_the_first_instant_is_one_line_and_its_code(
    tmp_path: Path, sig: int, code: int, word: str, delay: float
) -> None:
    """From melcli's first line on (its handlers are in place: seen in /proc), while it
    is still importing or already running: one error line, the documented exit status,
    no traceback, nothing at OUTPUT. (Before that the interpreter is starting up, and a
    signal has the kernel's or Python's default effect.)"""
    from tests.conftest import melcli_command

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        sf.write(src / f"a{i}.wav", np.zeros(16000, np.float32), 16000)
    out = tmp_path / "o.h5"
    proc = subprocess.Popen([*melcli_command(), "mel", str(src), "-o", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_handlers(proc.pid)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the signal: nothing to test this time
        assert out.exists()
        return
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.startswith("melcli: error:")]
    assert len(lines) == 1 and word in lines[0], err
    assert "Traceback" not in err
    # a signal after the rename says that the new output is in place (and complete)
    assert out.exists() == ("was in place" in lines[0]), err


def _wait_for_handlers(pid: int) -> None:
    """Until the process catches SIGTERM and SIGHUP (melcli._entry's first act)."""
    want = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return  # already gone
        caught = int(next(line.split()[1] for line in status.splitlines()
                          if line.startswith("SigCgt:")), 16)  # fmt: skip
        if caught & want == want:
            return
        time.sleep(0.001)
    raise AssertionError("melcli never installed its stop handlers")


def test_hdf5_checkpoints_point_into_the_output_instead_of_copying(tmp_path: Path) -> None:
    """An HDF5 run's checkpoints hold no feature bytes: they point at the entries in the
    output being built (kept by a hard link, `RawPiece`), so a long run writes its
    features once. Killed, the run resumes from them; with that file deleted by hand,
    the rerun computes those entries again. Both equal a run never interrupted."""
    data = make_corpus(tmp_path / "data", n=8)
    ref, out = tmp_path / "ref.h5", tmp_path / "feats.h5"
    assert run("stft", data, "-o", ref, "-j", "1").returncode == 0
    work = tmp_path / ".feats.h5.melcli-work"
    for lose_it in (False, True):
        env = {"MELCLI_KILL_AT": "write:6", **EVERY_RESULT}
        assert run("stft", data, "-o", out, "-j", "1", env=env).returncode == -signal.SIGKILL
        chunks = sorted(work.glob("chunk-*.bin"))
        raw = sorted(work.glob("raw-*.h5"))
        assert len(chunks) == 5 and len(raw) == 1  # the sixth entry was being written
        assert sum(c.stat().st_size for c in chunks) < 5 * 4096  # records only
        assert raw[0].stat().st_size > 5 * 1025 * 32 * 4  # 5 STFTs of one second
        if lose_it:
            raw[0].unlink()
        again = run("stft", data, "-o", out, "-j", "1")
        assert again.returncode == 0, again.stderr
        assert ("resumed: 5 entries" in again.stderr) != lose_it
        assert "Traceback" not in again.stderr and "error" not in again.stderr
        assert_same(out, ref)
        assert not work.exists()
        out.unlink()
        out.with_suffix(".json").unlink()
