"""Issue 12: the same extraction on a Dask cluster (``--scheduler``, ``--backend dask``).

Real processes on the loopback interface: a ``dask scheduler`` and two
``dask worker --nworkers 1 --nthreads 1`` (the session's `dask_cluster`, from
tests/conftest.py, stopped by PID), the real ``melcli`` executable, real signals.
A cluster run is compared with a local ``-j 1`` run array for array and its
manifest field for field.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from melcli import cluster, pipeline, store
from melcli.params import FeatureParams
from tests.conftest import (
    CLUSTER_BLAS_THREADS,
    CLUSTER_CRASH_ON,
    AudioFactory,
    DaskCluster,
    RunMelcli,
    assert_no_traceback,
    assert_same_manifest,
    feature_arrays,
    melcli_command,
    stderr_lines,
)

#: Heavy frames (a hop of 8 samples): each 3 s file is a task of ~0.1 s, so a run of
#: 40 lasts long enough to be killed or interrupted half-way.
SLOW_ARGS = ["--n-fft", "2048", "--hop-length", "8", "--n-mels", "8"]


def _manifest(out: Path) -> dict[str, Any]:
    side = out.with_suffix(".json") if out.suffix == ".h5" else out / "manifest.json"
    return json.loads(side.read_text())


def assert_same_output(got: Path, want: Path) -> None:
    """Equal arrays, and equal manifests but for the command line and the time."""
    a, b = feature_arrays(got), feature_arrays(want)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert_same_manifest(_manifest(got), _manifest(want), "command", "created")


def shard_sources(out: Path) -> dict[str, set[str]]:
    """Entry key -> the files its dataset maps (``--shards``; empty: stored in ``out``)."""
    import h5py

    found: dict[str, set[str]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            maps = obj.virtual_sources() if obj.is_virtual else []
            found[name] = {m.file_name for m in maps}

    with h5py.File(out, "r") as f:
        f["features"].visititems(visit)
    return found


def assert_only_mapped_shards(out: Path) -> set[str]:
    """The shard directory holds exactly the shard files the entries map (nothing
    unused, no temporary), all in it; return their names."""
    shards = out.with_name(out.name + ".shards")
    mapped = set().union(*shard_sources(out).values())
    assert {m.rpartition("/")[0] for m in mapped} <= {shards.name}
    names = {m.rpartition("/")[2] for m in mapped}
    held = {p.name for p in shards.iterdir()} if shards.exists() else set()
    assert held == names
    return names


def assert_nothing_unlisted(out: Path) -> None:
    """``out``'s directory holds the output, its lock and, for HDF5, its sidecar and,
    when sharded, its shard directory (`assert_only_mapped_shards`); an npy tree holds
    its manifest and its entries' files: no work directory, no temporary anywhere."""
    listed = {out.name, f".{out.name}.lock"}
    if out.suffix != ".h5":
        assert store.npy_unlisted(out, store.read_manifest(out, "npy")) == []
    else:
        listed.add(out.with_suffix(".json").name)
        if assert_only_mapped_shards(out):
            listed.add(out.name + ".shards")
    assert {p.name for p in out.parent.iterdir()} == listed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixed inputs: rates, stereo, FLAC, a long file split into frame ranges, a bad file."""
    root = tmp_path_factory.mktemp("corpus")
    audio = AudioFactory(root, np.random.default_rng(12))
    for i in range(6):
        audio.mix(f"speech/s{i}.wav", sr=16000, seconds=0.5 + 0.3 * i)
    audio.mix("music/stereo.flac", sr=44100, seconds=2.0, channels=2)
    audio.sweep("music/sweep.wav", sr=22050, seconds=1.5)
    # over pipeline.SPLIT_SAMPLES: split into parts, each a task of its own
    audio.noise("long/hour.wav", sr=8000, seconds=(pipeline.SPLIT_SAMPLES + 300_000) / 8000)
    audio.raw("bad/broken.wav", b"RIFF\x00\x00 not audio at all")
    return root


@pytest.fixture(scope="module")
def slow_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow")
    audio = AudioFactory(root, np.random.default_rng(7))
    for i in range(40):
        audio.mix(f"s{i:02d}.wav", sr=16000, seconds=3.0)
    return root


def _copy(src: Path, dst: Path) -> Path:
    """A copy of the files of ``src`` in the new directory ``dst``."""
    shutil.copytree(src, dst)
    return dst


def _local(melcli: RunMelcli, inputs: Path, out: Path, *args: str) -> None:
    proc = melcli("mel", inputs, "-o", out, "-j", "1", *args)
    assert proc.returncode in (0, 3), proc.stderr


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*melcli_command(), *args], cwd=cwd, text=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env},
    )  # fmt: skip


def _wait_for_trace(cl: DaskCluster, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while cl.trace_lines() < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the cluster started no tasks"
        time.sleep(0.02)


# -- the same output as a local run ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_a_cluster_run_equals_a_local_j1_run(
    corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path, fmt: str
) -> None:
    name = "feats.h5" if fmt == "h5" else "feats"
    want, got = tmp_path / "local" / name, tmp_path / "cluster" / name
    want.parent.mkdir()
    got.parent.mkdir()
    _local(melcli, corpus, want)
    before = dask_cluster.trace_lines()
    proc = melcli("mel", corpus, "-o", got, "--scheduler", dask_cluster.address)
    assert proc.returncode == 3, proc.stderr  # the broken file, as locally
    assert_no_traceback(proc.stderr)
    # the long file went as several frame ranges, all computed by the workers
    assert dask_cluster.trace_lines() - before > len(list(corpus.rglob("*.*")))
    assert stderr_lines(proc.stderr, "melcli: added ") == [
        "melcli: added 9, updated 0, removed 0, unchanged 0, failed 1"
    ]
    assert_same_output(got, want)
    failures = _manifest(got)["failures"]
    assert [f["key"] for f in failures] == ["bad/broken.wav"]


def test_backend_dask_takes_the_address_from_the_environment_and_reruns_incrementally(
    corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path
) -> None:
    src = _copy(corpus / "speech", tmp_path / "src")
    out, want = tmp_path / "feats.h5", tmp_path / "want.h5"
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": dask_cluster.address}
    cmd = [*melcli_command(), "mel", str(src), "-o", str(out), "--backend", "dask"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    (src / "s0.wav").unlink()
    (src / "s9.wav").write_bytes((corpus / "music" / "sweep.wav").read_bytes())
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "melcli: added 1, updated 0, removed 1, unchanged 5, failed 0" in again.stderr
    _local(melcli, src, want)
    assert_same_output(out, want)


# -- shards: the workers write the entries, the client links them -----------------------

_READ_PLAIN = """
import hashlib, json, sys
import h5py
with h5py.File(sys.argv[1], "r") as f:
    print(json.dumps({k: hashlib.sha256(f["features/" + k][()].tobytes()).hexdigest()
                      for k in sys.argv[2:]}))
"""


def test_a_sharded_output_reads_as_one_file_through_h5py_open_and_inspect(
    corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path
) -> None:
    want, got = tmp_path / "local" / "feats.h5", tmp_path / "cluster" / "feats.h5"
    want.parent.mkdir()
    got.parent.mkdir()
    _local(melcli, corpus, want)
    proc = melcli("mel", corpus, "-o", got, "--scheduler", dask_cluster.address, "--shards")
    assert proc.returncode == 3, proc.stderr
    assert_no_traceback(proc.stderr)
    # every entry's data is in the shards, none in the file itself
    sources = shard_sources(got)
    assert sorted(sources) == sorted(feature_arrays(want))
    assert all(sources.values()), sources
    assert len(sources["long/hour.wav"]) > 1  # its frame ranges, from several tasks
    assert_nothing_unlisted(got)
    assert_same_output(got, want)  # melcli.open, and the manifests field for field
    # plain h5py, from other working directories (HDF5 finds the shards beside the file)
    arrays = feature_arrays(want)
    digests = {k: hashlib.sha256(a.tobytes()).hexdigest() for k, a in arrays.items()}
    for cwd, path in ((Path("/"), got), (tmp_path, got.relative_to(tmp_path))):
        read = subprocess.run([sys.executable, "-c", _READ_PLAIN, str(path), *sorted(arrays)],
                              cwd=cwd, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert read.returncode == 0, read.stderr
        assert json.loads(read.stdout) == digests
    # inspect: the summary (its size counts the shards) and an entry's statistics
    summary = melcli("inspect", got, "--json", cwd=Path("/"))
    assert summary.returncode == 0, summary.stderr
    info = json.loads(summary.stdout)
    shards = got.with_name("feats.h5.shards")
    assert info["size_bytes"] == got.stat().st_size + sum(
        p.stat().st_size for p in shards.iterdir()
    )
    for key in ("long/hour.wav", "speech/s2.wav"):
        entry = melcli("inspect", got, "--key", key, "--json")
        local = melcli("inspect", want, "--key", key, "--json")
        assert entry.returncode == 0, entry.stderr
        assert json.loads(entry.stdout)["entry"] == json.loads(local.stdout)["entry"]


def _run_change_rerun(melcli: RunMelcli, args: list[Any], src: Path, corpus: Path) -> set[str]:
    """Run, then remove, change and add an input and run again (checked: one of
    each); return the shard files of the first run's HDF5 output (none for npy)."""
    assert melcli(*args).returncode == 0
    out = Path(args[args.index("-o") + 1])
    first = assert_only_mapped_shards(out) if out.suffix == ".h5" else set()
    (src / "s0.wav").unlink()
    (src / "s1.wav").write_bytes((corpus / "music" / "sweep.wav").read_bytes())
    (src / "s9.wav").write_bytes((corpus / "speech" / "s0.wav").read_bytes())
    again = melcli(*args)
    assert again.returncode == 0, again.stderr
    assert "melcli: added 1, updated 1, removed 1, unchanged 4, failed 0" in again.stderr
    return first


def test_a_sharded_output_reruns_incrementally(
    corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path
) -> None:
    src = _copy(corpus / "speech", tmp_path / "src")
    out, want, want2 = tmp_path / "out" / "feats.h5", tmp_path / "want.h5", tmp_path / "want2.h5"
    out.parent.mkdir()
    args = ["mel", src, "-o", out, "--scheduler", dask_cluster.address]  # shards: the default
    first = _run_change_rerun(melcli, args, src, corpus)
    assert all(shard_sources(out).values())
    assert assert_only_mapped_shards(out) - first  # the new entries' shards
    assert_nothing_unlisted(out)
    _local(melcli, src, want)
    assert_same_output(out, want)
    # without shards, the changed entry is stored in the file; the kept ones stay mapped
    (src / "s2.wav").write_bytes((corpus / "speech" / "s5.wav").read_bytes())
    third = melcli(*args, "--no-shards")
    assert third.returncode == 0, third.stderr
    assert "melcli: added 0, updated 1, removed 0, unchanged 5, failed 0" in third.stderr
    sources = shard_sources(out)
    assert not sources["s2.wav"] and all(v for k, v in sources.items() if k != "s2.wav")
    assert_nothing_unlisted(out)
    _local(melcli, src, want2)
    assert_same_output(out, want2)
    # rewritten without shards: the shard directory goes with the last entry in it
    last = melcli(*args, "--no-shards", "--overwrite")
    assert last.returncode == 0, last.stderr
    assert not any(shard_sources(out).values())
    assert not out.with_name("feats.h5.shards").exists()
    assert_nothing_unlisted(out)
    assert_same_output(out, want2)


def test_a_sharded_npy_output_reruns_incrementally(
    corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path
) -> None:
    """npy with shards (the default on a cluster): the workers' files are linked into
    the tree; a rerun keeps, replaces and removes entries as a local one does."""
    src = _copy(corpus / "speech", tmp_path / "src")
    out, want = tmp_path / "out" / "feats", tmp_path / "want" / "feats"
    out.parent.mkdir()
    want.parent.mkdir()
    _run_change_rerun(melcli, ["mel", src, "-o", out, "--scheduler", dask_cluster.address],
                      src, corpus)  # fmt: skip
    assert_nothing_unlisted(out)
    _local(melcli, src, want)
    assert_same_output(out, want)


@pytest.mark.parametrize(("fmt", "checkpoints"), [("h5", "0"), ("h5", "5"), ("npy", "0")])
def test_a_client_killed_while_committing_shards_finishes_on_the_rerun(
    corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path,
    fmt: str, checkpoints: str,
) -> None:  # fmt: skip
    """Killed right before renaming the new output into place (HDF5: after moving
    its shards beside it): the old output (none here) is untouched; the rerun
    resumes from checkpoints naming the shards the workers wrote (``0``: one after
    every result), or computes again and removes the shards no entry maps (``5``:
    none written)."""
    name = "feats.h5" if fmt == "h5" else "feats"
    out, want = tmp_path / "out" / name, tmp_path / "want" / name
    out.parent.mkdir()
    args = ["mel", str(corpus / "speech"), "-o", str(out), "--scheduler", dask_cluster.address]
    env = {"MELCLI_CHECKPOINT_SECONDS": checkpoints}
    proc = _start(args, tmp_path, MELCLI_KILL_AT="rename", **env)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    # the workers wrote the entries: an HDF5 shard per task, an .npy file per entry
    shards = (out.with_name("feats.h5.shards") if fmt == "h5"
              else out.with_name(".feats.melcli-work") / "shards")  # fmt: skip
    written = sorted(p.suffix for p in shards.iterdir())
    assert written and set(written) == {f".{fmt}"}
    assert fmt == "h5" or len(written) == 6
    want.parent.mkdir()
    again = _start(args, tmp_path, **env)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    resumed = int(err.split("resumed: ")[1].split()[0]) if "resumed: " in err else 0
    assert (resumed == 6) if checkpoints == "0" else (resumed == 0), err
    assert_nothing_unlisted(out)
    _local(melcli, corpus / "speech", want)
    assert_same_output(out, want)


# -- failures on the workers ---------------------------------------------------------------


def test_a_worker_killed_mid_run_costs_nothing(
    slow_corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path
) -> None:
    want, out = tmp_path / "want.h5", tmp_path / "feats.h5"
    _local(melcli, slow_corpus, want, *SLOW_ARGS)
    victim = dask_cluster.worker_pids()[0]
    start = dask_cluster.trace_lines()
    proc = _start(["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS,
                   "--scheduler", dask_cluster.address], tmp_path)  # fmt: skip
    _wait_for_trace(dask_cluster, start + 8, proc)
    os.kill(victim, signal.SIGKILL)  # as the OOM killer would
    killed_at = dask_cluster.trace_lines()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_no_traceback(err)
    assert killed_at - start < 40  # it was mid-run
    assert "added 40, updated 0, removed 0, unchanged 0, failed 0" in err
    assert_same_output(out, want)
    assert all(shard_sources(out).values())  # in shards, by default
    assert_only_mapped_shards(out)  # none from the dead worker's lost tasks
    dask_cluster.wait_for_workers(2)  # its nanny starts it again, for the next tests
    assert victim not in dask_cluster.worker_pids()


def test_an_input_that_kills_every_worker_is_a_recorded_failure(
    corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path
) -> None:
    src = _copy(corpus / "speech", tmp_path / "src")
    (src / f"{CLUSTER_CRASH_ON}.wav").write_bytes((src / "s1.wav").read_bytes())
    out = tmp_path / "feats.h5"
    started = time.monotonic()
    proc = melcli("mel", src, "-o", out, "--scheduler", dask_cluster.address, timeout=180)
    assert proc.returncode == 3, proc.stderr
    assert_no_traceback(proc.stderr)
    assert time.monotonic() - started < 120
    failures = _manifest(out)["failures"]
    assert [f["key"] for f in failures] == [f"{CLUSTER_CRASH_ON}.wav"]
    assert failures[0]["reason"].startswith("the Dask workers running it died ")
    assert failures[0]["permanent"] is False  # an OOM kill looks the same: retried next run
    assert sorted(feature_arrays(out)) == sorted(p.name for p in src.glob("s*.wav"))
    dask_cluster.wait_for_workers(2)


@pytest.fixture
def namespaced_cluster(tmp_path: Path) -> Any:
    """A scheduler and one worker in a mount namespace where ``hidden/`` is an empty tmpfs."""
    hidden = tmp_path / "data" / "hidden"
    hidden.mkdir(parents=True)
    root = tmp_path / "cluster"
    root.mkdir()
    # util-linux unshare makes the new namespace's mounts private: the tmpfs is the worker's alone
    mount = f'mount -t tmpfs none "{hidden}" && exec "$@"'
    prefix = ["unshare", "--mount", "--", "sh", "-c", mount, "sh"]
    cl = DaskCluster(root, workers=1, prefix=prefix)
    try:
        yield cl, hidden
    finally:
        cl.stop()


def test_an_input_the_workers_cannot_see_is_a_recorded_failure(
    namespaced_cluster: tuple[DaskCluster, Path], corpus: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    cl, hidden = namespaced_cluster
    seen = hidden.parent / "seen"
    seen.mkdir()
    for p in sorted((corpus / "speech").iterdir())[:3]:
        (seen / p.name).write_bytes(p.read_bytes())
        (hidden / p.name).write_bytes(p.read_bytes())  # only the client sees these
    out = tmp_path / "feats.h5"
    proc = melcli("mel", hidden.parent, "-o", out, "--scheduler", cl.address)
    assert proc.returncode == 3, proc.stderr
    assert_no_traceback(proc.stderr)
    failures = _manifest(out)["failures"]
    assert sorted(f["key"] for f in failures) == sorted(
        f"hidden/{p.name}" for p in hidden.iterdir()
    )
    assert {f["reason"] for f in failures} == {"file not found"}
    assert sorted(feature_arrays(out)) == sorted(f"seen/{p.name}" for p in seen.iterdir())
    # not on the worker's file system is not a property of the file: the next run retries it
    assert not any(f["permanent"] for f in failures)


def test_melcli_leaves_the_workers_blas_threads_as_they_were(
    corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path
) -> None:
    probe = (
        "from threadpoolctl import threadpool_info\n"
        "def blas():\n"
        "    info = threadpool_info()\n"
        "    return sorted({i['num_threads'] for i in info if i['user_api'] == 'blas'})\n"
        "import json\nprint(json.dumps(sorted(client.run(blas).values())))\n"
    )
    expected = [[CLUSTER_BLAS_THREADS]] * 2
    assert json.loads(dask_cluster.ask(probe)) == expected  # what the workers were given
    proc = melcli("mel", corpus / "speech", "-o", tmp_path / "f.h5",
                  "--scheduler", dask_cluster.address)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(dask_cluster.ask(probe)) == expected


def test_run_batch_refuses_another_melcli_version() -> None:
    with pytest.raises(cluster.ClusterError, match="a worker has melcli .* this client 0.0.0"):
        cluster.run_batch([], FeatureParams(kind="mel"), "0.0.0")


# -- the client ----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_scheduler_is_one_line_within_10_seconds(
    corpus: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    out = tmp_path / "feats.h5"
    started = time.monotonic()
    proc = melcli("mel", corpus / "speech", "-o", out,
                  "--scheduler", f"tcp://127.0.0.1:{_closed_port()}")  # fmt: skip
    took = time.monotonic() - started
    assert proc.returncode == 1
    assert took < 10, took
    assert_no_traceback(proc.stderr)
    errors = stderr_lines(proc.stderr, "melcli: error:")
    assert len(errors) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:" in errors[0]
    assert errors[0].endswith(f"nothing new written to {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".feats.h5.lock"]  # no work dir


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--backend", "dask"], {}, "--backend dask needs a scheduler: --scheduler ADDRESS"),
        (["--scheduler", "tcp://h:1", "--backend", "fork"], {}, "not with --backend fork"),
        (["--scheduler", " "], {}, "--scheduler needs an address"),
        (["--shards", "-j", "2"], {}, "--shards is for a Dask cluster (--scheduler ADDRESS)"),
        (["--scheduler", "tcp://h:1", "--shards", "--format", "kaldi"], {}, "--shards: not with"),
    ],
)
def test_cluster_usage_errors(
    args: list[str], env: dict[str, str], message: str, corpus: Path, tmp_path: Path
) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    proc = subprocess.run([*melcli_command(), "mel", str(corpus), "-o", "f.h5", *args],
                          env={**environ, **env}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "f.h5").exists()


def test_without_dask_the_scheduler_option_says_what_to_install(
    corpus: Path, tmp_path: Path
) -> None:
    code = (
        "import sys\nsys.modules['distributed'] = None  # as if not installed\n"
        "sys.argv = ['melcli', 'mel', sys.argv[1], '-o', 'f.h5', '--scheduler', 'tcp://h:1']\n"
        "from melcli._entry import main\nmain()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(corpus)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "pip install 'melcli[dask]'" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("sig", "code", "word", "shards", "name"),
    [
        (signal.SIGINT, 130, "interrupted", "--shards", "feats.h5"),
        (signal.SIGTERM, 143, "terminated", "--shards", "feats.h5"),
        (signal.SIGINT, 130, "interrupted", "--no-shards", "feats.h5"),
        (signal.SIGINT, 130, "interrupted", "--shards", "feats"),
    ],
)
def test_a_stopped_client_cancels_its_tasks_and_resumes(
    slow_corpus: Path, dask_cluster: DaskCluster, melcli: RunMelcli, tmp_path: Path,
    sig: int, code: int, word: str, shards: str, name: str,
) -> None:  # fmt: skip
    out, want = tmp_path / "out" / name, tmp_path / "want" / name
    out.parent.mkdir()
    want.parent.mkdir()
    args = ["mel", str(slow_corpus), "-o", str(out), *SLOW_ARGS, "--scheduler",
            dask_cluster.address, shards]  # fmt: skip
    proc = _start(args, tmp_path)
    _wait_for_trace(dask_cluster, dask_cluster.trace_lines() + 10, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert_no_traceback(err)
    lines = stderr_lines(err, "melcli: error")
    assert len(lines) == 1 and word in lines[0] and "rerun the same command to resume" in lines[0]
    assert not out.exists()
    # its tasks are cancelled: the workers start no more of them
    time.sleep(1.0)
    settled = dask_cluster.trace_lines()
    time.sleep(1.5)
    assert dask_cluster.trace_lines() == settled
    again = melcli(*args)
    assert again.returncode == 0, again.stderr
    resumed = int(again.stderr.split("resumed: ")[1].split()[0])
    assert 0 < resumed < 40
    _local(melcli, slow_corpus, want, *SLOW_ARGS)
    assert_same_output(out, want)
    if name == "feats.h5":
        assert all(shard_sources(out).values()) == (shards == "--shards")
    assert_nothing_unlisted(out)


def _peak_rss_kb(args: list[str], cwd: Path) -> int:
    """The peak RSS (VmHWM, kB) of ``melcli *args``, from the Python that waits for it.

    Checkpoints after every result (MELCLI_CHECKPOINT_SECONDS=0): the spool
    otherwise keeps up to `melcli.workdir.FLUSH_BYTES` of results for its next
    checkpoint, by design, in a local run as in a cluster run.
    """
    code = (
        "import resource, subprocess, sys\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "assert proc.returncode == 0, proc.stderr\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *melcli_command(), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MELCLI_CHECKPOINT_SECONDS": "0"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def test_the_clients_memory_stays_flat_over_many_files(
    dask_cluster: DaskCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Four times the files through the client cost it no more than a local run's own
    growth (its manifest records, HDF5's metadata), not the results themselves."""
    root = tmp_path_factory.mktemp("many")
    audio = AudioFactory(root, np.random.default_rng(3))
    template = audio.mix("t.wav", sr=16000, seconds=2.0).read_bytes()
    peaks: dict[tuple[str, int], int] = {}
    for n in (100, 400):
        src = root / f"in{n}"
        src.mkdir()
        for i in range(n):
            (src / f"f{i:04d}.wav").write_bytes(template)
        for how in ("-j 1", f"--scheduler {dask_cluster.address}"):
            # stft: 258 KB of features per file, 77 MB more for the 300 more files
            out = root / f"o{n}{how[:2]}.h5"
            peaks[how[:2], n] = _peak_rss_kb(["stft", str(src), "-o", str(out), "-q",
                                              *how.split()], root)  # fmt: skip
    local = peaks["-j", 400] - peaks["-j", 100]
    remote = peaks["--", 400] - peaks["--", 100]
    assert remote - local < 10_000, peaks
