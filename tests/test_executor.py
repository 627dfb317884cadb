"""Issue 8 (items 2, 3, 4, 6) and issue 15 (items 8, 15): the executors under stress.

Batches sized by work and the resume bound, SIGHUP, a decoder that really
crashes, interrupts at random moments, readers right after a commit, loky
workers that die or outlive their parent. Real processes, real signals.
"""

from __future__ import annotations

import glob
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_reliability import assert_same, leftovers, write_tone

from melcli import audio, pipeline
from melcli.backends import BACKENDS as CHOICES
from melcli.backends import REMOTE
from melcli.discover import Source
from melcli.params import FeatureParams

MELCLI = [sys.executable, "-m", "melcli"]
#: Every --backend but auto: each local entry of melcli.backends.EXECUTORS is tested here.
#: A remote one's workers are not in melcli's process group and trace to their own file:
#: the same properties of the dask backend (kill, stop signals, resume) are in test_dask.py.
BACKENDS = [b for b in CHOICES[1:] if b not in REMOTE]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MELCLI, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env=_env(**env),
    )  # fmt: skip


def _run(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [*MELCLI, *args], cwd=cwd, capture_output=True, text=True, env=_env(**env),
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode, done.stderr


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _wait_group_gone(pgid: int, timeout: float = 5) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("melcli: error")]


# -- item 2: batches sized by work ------------------------------------------------------


HEAVY = FeatureParams(kind="mel", n_fft=4096, hop_length=16)


def test_batches_are_sized_by_work_and_small_files_by_count(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    write_tone(wav, 10.0)
    info = audio.probe(str(wav))
    src = Source("speech.wav", str(wav))
    # 10 s with a 4096-point FFT every 16 samples: ~41 M units, split into parts
    tasks = pipeline.make_tasks(src, info, HEAVY)
    assert len(tasks) > 4
    costs = [pipeline.task_cost(t, info, HEAVY) for t in tasks]
    assert max(costs) <= pipeline.BATCH_WORK + pipeline.TASK_WORK + 4096 * 300
    heavy = costs * 40  # 40 such files
    for batch in pipeline.make_batches(heavy, 2):
        assert len(batch) == 1 or sum(heavy[i] for i in batch) <= pipeline.BATCH_WORK
    # 1000 one-second clips at the default parameters: batched by count, as before
    clip = tmp_path / "clip.wav"
    write_tone(clip, 1.0)
    cinfo = audio.probe(str(clip))
    default = FeatureParams(kind="mel")
    (ctask,) = pipeline.make_tasks(Source("c", str(clip)), cinfo, default)
    batches = pipeline.make_batches([pipeline.task_cost(ctask, cinfo, default)] * 1000, 2)
    assert {len(b) for b in batches[:-1]} == {1000 // 32}


def test_a_heavy_file_split_into_parts_gives_the_same_entry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tone(data / "a.wav", 5.0)
    write_tone(data / "b.wav", 0.5, seed=2)
    args = ["--n-fft", "4096", "--hop-length", "16", "--n-mels", "16", "-v"]
    code, err = _run(["mel", str(data), "-o", "split.h5", "-j", "2", *args], tmp_path)
    assert code == 0, err
    assert "part 2/" in err  # a.wav was computed in parts
    ref = tmp_path / "ref"
    ref.mkdir()
    import librosa

    y, sr = librosa.load(data / "a.wav", sr=None)
    want = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=4096, hop_length=16, n_mels=16, pad_mode="constant"
    )
    with h5py.File(tmp_path / "split.h5") as f:
        got = f["features/a.wav"][()]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))


# -- item 2: the resume bound, per backend ------------------------------------------------


@pytest.fixture(scope="module")
def heavy_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heavy")
    for i in range(32):  # heavy with HEAVY_ARGS: ~0.1 s each
        write_tone(root / f"h{i:02d}.wav", 1.5, freq=200.0 + 11 * i, seed=i)
    for i in range(300):  # and many tiny clips, as in a real corpus (batched by count)
        write_tone(root / "t" / f"t{i:03d}.wav", 0.05, freq=300.0 + i, seed=i)
    return root


HEAVY_ARGS = ["--n-fft", "2048", "--hop-length", "16", "--n-mels", "8", "-j", "2"]


@pytest.fixture(scope="module")
def heavy_reference(heavy_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("heavyref") / "ref.h5"
    code, err = _run(["mel", str(heavy_corpus), "-o", str(ref), *HEAVY_ARGS], ref.parent)
    assert code == 0, err
    return ref


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


#: Measured (entries started by the killed run and computed again by the rerun,
#: tasks in flight at the kill) per backend, printed at the end (pytest -s).
MEASURED: dict[str, list[tuple[int, int]]] = {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_bound_after_sigkill_at_several_points(
    heavy_corpus: Path, heavy_reference: Path, tmp_path: Path, backend: str
) -> None:
    """A kill -9 of the process group loses only the work in flight (+ one checkpoint).

    Every task appends its key to a trace file as it starts (MELCLI_TRACE);
    checkpoints follow every result (MELCLI_CHECKPOINT_SECONDS=0). After the
    kill, the work started and lost is the started tasks that the rerun did
    not resume: at most two batches per worker (what is in flight) plus the
    result being written, and by estimated work, at most 2 x jobs x BATCH_WORK
    plus one task.
    """
    files = sorted(heavy_corpus.rglob("*.wav"))
    params = FeatureParams(kind="mel", n_fft=2048, hop_length=16, n_mels=8)
    info = audio.probe(str(files[0]))
    cost = pipeline.task_cost(pipeline.make_tasks(Source("x", str(files[0])), info, params)[0],
                              info, params)  # fmt: skip
    # heavy files come first (largest first): batches of at most BATCH_WORK of them
    per_batch = max(1, pipeline.BATCH_WORK // cost)
    for point in (5, 14, 23):
        out = tmp_path / f"k{point}.h5"
        trace = tmp_path / f"trace{point}"
        args = ["mel", str(heavy_corpus), "-o", str(out), *HEAVY_ARGS, "--backend", backend]
        proc = _start([*args, "-v"], tmp_path, MELCLI_TRACE=str(trace),
                      MELCLI_CHECKPOINT_SECONDS="0")  # fmt: skip
        deadline = time.monotonic() + 60
        while len(_lines(trace)) < point:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        _, killed_err = proc.communicate()
        started = {line.split("\t")[0] for line in _lines(trace)}
        reported = sum(line.startswith("melcli: done ") for line in killed_err.splitlines())
        in_flight = len(started) - reported  # started, not yet reported done
        code, err = _run([*args, "-v"], tmp_path)
        assert code == 0, err
        resumed = int(err.split("resumed: ")[1].split()[0]) if "resumed: " in err else 0
        redone = {line.split()[2] for line in err.splitlines() if line.startswith("melcli: done ")}
        assert len(redone) == len(files) - resumed
        lost = started & redone  # started by the killed run, computed again
        MEASURED.setdefault(backend, []).append((len(lost), in_flight))
        assert len(lost) <= in_flight  # every result reported done was checkpointed
        assert in_flight <= 2 * 2 * per_batch + 1, (point, in_flight, per_batch)
        assert len(lost) * cost <= 2 * 2 * pipeline.BATCH_WORK + cost
        assert_same(out, heavy_reference)
    print(f"\nresume bound {backend}: (lost, in flight at kill) = {MEASURED[backend]}")


# -- item 3: SIGHUP --------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slowx")
    for i in range(40):
        write_tone(root / f"s{i:02d}.wav", 3.0, freq=300.0 + 7 * i, seed=i)
    return root


SLOW_ARGS = ["--n-fft", "2048", "--hop-length", "8", "--n-mels", "8", "-j", "2"]


def _wait_for(proc: subprocess.Popen[str], what: Path) -> None:
    deadline = time.monotonic() + 60
    while not glob.glob(glob.escape(str(what.parent)) + os.sep + what.name):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{what} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sighup_checkpoints_says_one_line_and_exits_129(
    slow_corpus: Path, tmp_path: Path, backend: str
) -> None:
    out = tmp_path / "feats.h5"
    args = ["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS, "--backend", backend]
    proc = _start(args, tmp_path, MELCLI_CHECKPOINT_SECONDS="0")
    _wait_for(proc, tmp_path / ".feats.h5.melcli-work" / "chunk-*.bin")
    os.killpg(proc.pid, signal.SIGHUP)  # an ssh session that drops: the whole group
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 129, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "hung up" in lines[0] and "rerun the same command" in lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert not _wait_group_gone(proc.pid)
    # the temporary output is gone; the work directory holds the checkpoint
    assert leftovers(tmp_path, out) == [".feats.h5.melcli-work"]
    code, err = _run(args, tmp_path)
    assert code == 0, err
    assert "resumed: " in err
    assert leftovers(tmp_path, out) == []


# -- item 4: a decoder that crashes --------------------------------------------------------


@pytest.fixture(scope="module")
def crash_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    for i in range(60):
        write_tone(root / f"c{i:02d}.wav", 0.3, freq=200.0 + 13 * i, seed=i)
    return root


@pytest.mark.parametrize(
    ("jobs", "backend", "how"),
    [("1", "auto", "segv"), ("2", "threading", "abort"), ("2", "fork", "segv"),
     ("2", "loky", "segv"), ("2", "threading", "segv")],
)  # fmt: skip
def test_a_crashing_decoder_costs_one_file(
    crash_corpus: Path, tmp_path: Path, jobs: str, backend: str, how: str
) -> None:
    ref = tmp_path / "ref.h5"
    code, err = _run(["mel", str(crash_corpus), "-o", str(ref), "-j", "1"], tmp_path)
    assert code == 0, err
    out = tmp_path / "feats.h5"
    args = ["mel", str(crash_corpus), "-o", str(out), "-j", jobs, "--backend", backend]
    crash = {"MELCLI_CRASH_ON": "c37" + (":abort" if how == "abort" else "")}
    first, err1 = _run(args, tmp_path, **crash)
    if backend == "fork":  # a crashed fork worker costs its batch only, within the run
        assert first == 3, err1
    else:  # the process (or a loky worker) died: the run stops here
        assert first in (-signal.SIGSEGV, -signal.SIGABRT, 1), err1
        assert not out.exists()
        second, err2 = _run(args, tmp_path, **crash)
        assert second == 3, err2
        assert "checking them in a separate process first" in err2
        assert "Traceback" not in err2
    with h5py.File(out) as f, h5py.File(ref) as r:
        man = __import__("json").loads(f["manifest"][()])
        reason = "decoder crashed (SIGABRT)" if how == "abort" else "decoder crashed (SIGSEGV)"
        assert [(x["key"], x["reason"]) for x in man["failures"]] == [("c37.wav", reason)]
        assert sorted(f["features"]) == sorted(k for k in r["features"] if k != "c37.wav")
        for key in f["features"]:
            assert np.array_equal(f["features"][key][()], r["features"][key][()]), key
    # permanent until the file changes: the next run does not try it again
    code, err = _run(args, tmp_path, **crash)
    assert code == 3 and "up to date" in err, err
    assert leftovers(tmp_path, out) == []


# -- item 6: interrupts at random moments ----------------------------------------------------


@pytest.fixture(scope="module")
def resample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resample")
    for i in range(30):
        write_tone(root / f"r{i:02d}.wav", 4.0, sr=44100, freq=300.0 + 5 * i, seed=i)
    for i in range(200):
        write_tone(root / "clips" / f"c{i:03d}.wav", 0.2, sr=48000, freq=200.0 + i, seed=i)
    return root


@pytest.mark.parametrize("backend", [*BACKENDS, "j1"])
def test_interrupts_at_random_moments_end_cleanly(
    resample_corpus: Path, tmp_path: Path, backend: str
) -> None:
    rnd = random.Random(f"interrupts-{backend}")
    codes = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
    words = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}
    jobs = ["-j", "1"] if backend == "j1" else ["-j", "2", "--backend", backend]
    tally: dict[str, int] = {}
    # Moments are drawn over the length of an uninterrupted run, measured here: the
    # same test on an idle and on a busy machine (a fixed range of seconds is not).
    args = ["mel", str(resample_corpus), "-o", str(tmp_path / "whole.h5"), "--sr", "16000", *jobs]
    proc = _start(args, tmp_path)
    _wait_for_handlers(proc)
    began = time.monotonic()
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    length = time.monotonic() - began
    for n in range(24):
        sig = rnd.choice(list(codes))
        out = tmp_path / f"i{n}.h5"
        args = ["mel", str(resample_corpus), "-o", str(out), "--sr", "16000", *jobs]
        proc = _start(args, tmp_path)
        _wait_for_handlers(proc)  # before that, the interpreter itself is starting
        time.sleep(rnd.uniform(0.0, 0.95 * length))  # imports, probing, computing, committing
        if proc.poll() is not None:  # finished before the signal: fine, but count it
            tally["finished"] = tally.get("finished", 0) + 1
            proc.communicate()
            continue
        to_group = rnd.random() < 0.5
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"run {n} ({sig!r}, group={to_group}) hung") from None
        if proc.returncode == 0 and "melcli: wrote" in err:  # the signal came after the end
            tally["finished"] = tally.get("finished", 0) + 1
            continue
        assert proc.returncode == codes[sig], (n, sig, err)
        lines = _error_lines(err)
        assert len(lines) == 1 and words[sig] in lines[0], (n, err)
        assert "Traceback" not in err and "terminate called" not in err, err
        assert not _wait_group_gone(proc.pid), f"run {n}: workers left behind"
        tally[sig.name] = tally.get(sig.name, 0) + 1
    assert sum(v for k, v in tally.items() if k != "finished") >= 16, tally


def _wait_for_handlers(proc: subprocess.Popen[str]) -> None:
    """Wait until melcli catches SIGHUP (its first statement), per /proc/PID/status."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = int(status.split("SigCgt:")[1].split()[0], 16)
        if caught & (1 << (signal.SIGHUP - 1)):
            return
        time.sleep(0.005)


def test_fail_fast_with_a_nan_file_first_does_not_hang(tmp_path: Path) -> None:
    data = tmp_path / "data"
    import soundfile as sf

    bad = np.zeros(48000, dtype=np.float32)
    bad[100] = np.nan
    data.mkdir()
    sf.write(data / "a000.wav", bad, 48000, subtype="FLOAT")
    for i in range(400):
        write_tone(data / f"f{i:03d}.wav", 0.25, sr=48000, freq=200.0 + i, seed=i)
    for attempt in range(6):
        proc = _start(["stft", str(data), "-o", f"x{attempt}.h5", "--fail-fast"], tmp_path)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("--fail-fast hung") from None
        assert proc.returncode == 1, err
        assert len(_error_lines(err)) == 1 and "--fail-fast" in err
        assert not _wait_group_gone(proc.pid)


# -- issue 15 item 8: readers right after a commit ---------------------------------------------


READER = r"""
import sys, time, h5py
path, stop = sys.argv[1], sys.argv[2]
import os
fails = opens = 0
while not os.path.exists(stop):
    try:
        with h5py.File(path, "r") as f:
            f["manifest"][()]
        opens += 1
    except FileNotFoundError:
        pass
    except OSError as exc:
        if "lock" in str(exc):
            fails += 1
            print(exc, file=sys.stderr)
print(opens, fails)
"""


def test_a_reader_can_open_the_output_right_after_each_commit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(120):
        write_tone(data / f"t{i:03d}.wav", 0.1, freq=200.0 + i, seed=i)
    out = tmp_path / "feats.h5"
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(out), str(stop)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(12):
            code, err = _run(
                ["mel", str(data), "-o", str(out), "--overwrite", "--backend", "fork", "-j", "2"],
                tmp_path,
            )
            assert code == 0, err
    finally:
        stop.touch()
        res, errs = reader.communicate(timeout=30)
    opens, fails = map(int, res.split())
    assert opens > 0
    assert fails == 0, errs


def test_an_output_held_open_for_writing_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(3):
        write_tone(data / f"t{i}.wav", 0.2, seed=i)
    out = tmp_path / "feats.h5"
    assert _run(["mel", str(data), "-o", str(out)], tmp_path)[0] == 0
    write_tone(data / "t9.wav", 0.2, seed=9)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, h5py; f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); "
         "sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        code, err = _run(["mel", str(data), "-o", str(out)], tmp_path)
    finally:
        holder.communicate("")
    assert code == 1, err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert f"pid {holder.pid}" in lines[0] and "--overwrite" not in lines[0], lines[0]


# -- issue 15 item 15: loky workers ------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _loky_workers(pid: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [c for c in _children(pid) if "popen_loky" in _cmdline(c)]
        if workers:
            return workers
        time.sleep(0.05)
    raise AssertionError("no loky worker started")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def test_kill_9_of_a_loky_worker_is_one_clean_line(slow_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    args = ["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS, "--backend", "loky"]
    proc = _start(args, tmp_path)
    worker = _loky_workers(proc.pid)[0]
    time.sleep(0.5)
    os.kill(worker, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # stop it here, and say what it had said
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"hung after a worker was killed: {proc.communicate()[1]}") from None
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "TerminatedWorkerError" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("melcli:")]
    assert len(lines) == 1 and "worker process died" in lines[0], err
    assert not _wait_group_gone(proc.pid)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_loky_workers_die_with_their_parent(slow_corpus: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "feats.h5"
    args = ["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS, "--backend", "loky"]
    proc = _start(args, tmp_path)
    workers = _loky_workers(proc.pid)
    time.sleep(0.5)
    os.kill(proc.pid, sig)  # the parent alone
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:
        os.kill(w, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert not survivors


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_fork_results_travel_out_of_band_and_a_cut_pipe_is_eof() -> None:
    """A fork worker's results: pickle head, then each array's bytes read straight into
    their final memory (`pipeline.send_arrays` / `recv_arrays`), through a real pipe."""
    import threading

    from melcli.pipeline import recv_arrays, send_arrays

    rng = np.random.default_rng(0)
    big = rng.random((1025, 700), dtype=np.float32)  # 2.9 MB: more than the pipe holds
    obj = (7, [{"a": big, "b": rng.random((3, 4))[:, ::2], "c": np.arange(5, dtype=np.complex64)},
               None, "text"])  # fmt: skip
    r, w = os.pipe()
    writer = threading.Thread(target=send_arrays, args=(w, obj))
    writer.start()
    got = recv_arrays(r)
    writer.join()
    assert got[0] == 7 and got[1][1:] == [None, "text"]
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(got[1][0][name], obj[1][0][name])  # type: ignore[index]
        assert got[1][0][name].dtype == obj[1][0][name].dtype  # type: ignore[index]
    assert got[1][0]["a"].flags.writeable
    # a writer that dies mid-message: the reader sees the end of the pipe, not a hang
    rr, ww = os.pipe()
    send_arrays(ww, (1, [np.ones(10)]))
    os.close(ww)
    whole = os.read(rr, 1 << 16)
    r2, w2 = os.pipe()
    os.write(w2, whole[:-8])  # all but the array's last bytes
    os.close(w2)
    with pytest.raises(EOFError):
        recv_arrays(r2)
    for fd in (rr, r2, r, w):
        os.close(fd)


#: Runs melcli with the fork workers' shared memory cut to the size given first.
SMALL_ARENA = (
    "import sys; from melcli import pipeline; pipeline.ARENA_BYTES = int(sys.argv.pop(1)); "
    "from melcli._entry import main; sys.argv[0] = 'melcli'; main()"
)


def test_fork_results_through_shared_memory_and_the_pipe_resume_exactly(tmp_path: Path) -> None:
    """Fork workers place results in shared memory whose halves are reused every other
    batch; what does not fit goes through the pipe. With room for one clip per batch
    (the rest piped), a complete run and a run killed after checkpointing each result,
    then resumed, equal ``-j 1``."""
    from test_reliability import make_corpus

    data = make_corpus(tmp_path / "data", n=40)  # one-second clips: 131 KB of STFT each
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    assert _run(["stft", str(data), "-o", str(ref), "-j", "1"], tmp_path)[0] == 0
    small = [sys.executable, "-c", SMALL_ARENA, str(2 * 140_000)]
    args = ["stft", str(data), "-o", str(out), "--backend", "fork", "-j", "2"]
    whole = subprocess.run([*small, *args], capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    assert_same(out, ref)
    out.unlink()
    out.with_suffix(".json").unlink()
    env = _env(MELCLI_KILL_AT="write:25", MELCLI_CHECKPOINT_SECONDS="0")
    killed = subprocess.run([*small, *args], capture_output=True, text=True, timeout=120, env=env)
    assert killed.returncode == -signal.SIGKILL
    again = subprocess.run([*small, *args], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resum" in again.stderr
    assert_same(out, ref)


def test_arena_placement_fills_halves_and_leaves_the_rest_to_the_pipe() -> None:
    """`_to_arena` copies what fits into the half it is given (64-byte aligned), in order,
    and leaves the rest (and results without data) as they were."""
    import mmap

    from melcli.pipeline import Result, Task, _to_arena

    rng = np.random.default_rng(0)
    arrays = [rng.random((10, 30), dtype=np.float32) for _ in range(3)]  # 1200 bytes each
    task = Task(Source("a", "a.wav"))
    results = [Result(task, data=arrays[0]), Result(task), Result(task, data=arrays[1]),
               Result(task, data=arrays[2])]  # fmt: skip
    arena = mmap.mmap(-1, 8192)
    placed = _to_arena(results, arena, 4096, 2600)  # the second half, room for two
    assert [(i, off) for i, off, _, _ in placed] == [(0, 4096), (2, 4096 + 1216)]
    for i, off, dtype, shape in placed:
        assert results[i].data is None
        view = np.ndarray(shape, dtype, buffer=arena, offset=off)
        np.testing.assert_array_equal(view, arrays[0 if i == 0 else 1])
    assert results[1].data is None and results[3].data is arrays[2]  # for the pipe
    assert arena[:4096] == bytes(4096)  # the other half untouched


def test_a_checkpoint_keeps_a_copy_of_borrowed_results(tmp_path: Path) -> None:
    """A result in memory its executor reuses (`Result.borrowed`) is copied by the spool:
    the checkpoint holds its values even after that memory was overwritten."""
    from melcli.workdir import ChunkFile, Spool, WorkDir

    work = WorkDir(tmp_path / "feats.h5")
    work.start({"params": {}, "format": "h5"}, keep=False)
    spool = Spool(work)
    shared = np.arange(40, dtype=np.float32).reshape(4, 10)
    expect = shared.copy()
    rec = {"key": "a.wav", "source": "a.wav", "dtype": "float32", "shape": [4, 10],
           "sample_rate": 16000, "n_samples": 4608, "duration": 0.288, "channels": 1}  # fmt: skip
    spool.add_entry(rec, shared, borrowed=True)
    shared[...] = -1  # the worker's next batch lands there
    spool.flush()
    (record,) = list(work.records())
    ((chunk, member, _frame, _shard, _raw),) = record.pieces
    with ChunkFile(chunk) as cf:
        np.testing.assert_array_equal(cf.read(member), expect)
