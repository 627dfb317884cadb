"""Shared fixtures: seeded randomness, real audio files, and two ways to run the CLI.

* ``rng``: a seeded ``numpy.random.Generator`` (tests are reproducible).
* ``audio``: an `AudioFactory` writing real WAV / FLAC / OGG files with soundfile
  into ``tmp_path`` (sines, chirps, noise, any rate, mono or stereo).
* ``melcli``: runs the real ``melcli`` executable in a subprocess.
* ``invoke``: runs ``melcli.cli.cli`` in-process through click's ``CliRunner``
  (click >= 8.2 keeps stdout and stderr apart).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from melcli.cli import cli

# librosa.load asks audioread for its backends on every call; the first call
# imports the stdlib ``aifc`` module, deprecated in 3.11 (a DeprecationWarning
# that pyproject's filterwarnings=error would turn into a failure of whichever
# test happens to call librosa.load first). Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioread

    audioread.available_backends()

#: Where tests find the committed real corpus.
SAMPLE_AUDIO = Path(__file__).resolve().parent.parent / "sample_audio"

#: soundfile (format, subtype) for each suffix the factory writes.
FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
}


# ---------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------
def sine(freq: float, sr: int, seconds: float, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    """A pure tone, float32, shape (n,)."""
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def chirp(f0: float, f1: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    """A linear sweep from f0 to f1 Hz, float32, shape (n,)."""
    t = np.arange(int(round(sr * seconds))) / sr
    k = (f1 - f0) / max(seconds, 1e-9)
    return (amp * np.sin(2 * np.pi * (f0 * t + 0.5 * k * t**2))).astype(np.float32)


def noise(rng: np.random.Generator, sr: int, seconds: float, amp: float = 0.2) -> np.ndarray:
    """Uniform white noise in [-amp, amp), float32, shape (n,)."""
    return (amp * rng.uniform(-1, 1, int(round(sr * seconds)))).astype(np.float32)


class AudioFactory:
    """Writes real audio files under a temporary directory.

    Every ``write``-like method takes a path relative to the factory's root
    (sub-directories are created) and returns the absolute `Path`.
    """

    def __init__(self, root: Path, rng: np.random.Generator) -> None:
        self.root = root
        self.rng = rng

    def path(self, name: str) -> Path:
        """Absolute path of ``name`` under the root; parents created."""
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write(self, name: str, y: np.ndarray, sr: int, *, subtype: str | None = None) -> Path:
        """Write ``y`` (shape (n,) or (channels, n)) with the format of ``name``'s suffix."""
        p = self.path(name)
        fmt, default_subtype = FORMATS[p.suffix.lstrip(".").lower()]
        data = np.asarray(y)
        if data.ndim == 2:
            data = data.T  # soundfile wants (frames, channels)
        sf.write(p, data, sr, format=fmt, subtype=subtype or default_subtype)
        return p

    def tone(
        self, name: str, freq: float = 440.0, sr: int = 16000, seconds: float = 0.5,
        channels: int = 1, amp: float = 0.5,
    ) -> Path:  # fmt: skip
        """A sine (each extra channel a different frequency and phase)."""
        chans = [sine(freq * (1 + 0.5 * c), sr, seconds, amp, phase=c) for c in range(channels)]
        return self.write(name, chans[0] if channels == 1 else np.stack(chans), sr)

    def sweep(self, name: str, sr: int = 16000, seconds: float = 0.5, channels: int = 1) -> Path:
        """A chirp from 100 Hz to 0.45 * sr (reversed on channel 2)."""
        up = chirp(100.0, 0.45 * sr, sr, seconds)
        y = up if channels == 1 else np.stack([up, up[::-1]] + [up] * (channels - 2))
        return self.write(name, y, sr)

    def mix(self, name: str, sr: int = 16000, seconds: float = 0.5, channels: int = 1) -> Path:
        """Chirp + noise + a tone per channel: energy in every bin, a known structure too."""
        chans = [
            0.4 * chirp(50.0, 0.49 * sr, sr, seconds)
            + noise(self.rng, sr, seconds, 0.1)
            + sine(1000.0 * (c + 1), sr, seconds, 0.3)
            for c in range(channels)
        ]
        return self.write(name, chans[0] if channels == 1 else np.stack(chans), sr)

    def noise(self, name: str, sr: int = 16000, seconds: float = 0.5, channels: int = 1) -> Path:
        """White noise."""
        chans = [noise(self.rng, sr, seconds) for _ in range(channels)]
        return self.write(name, chans[0] if channels == 1 else np.stack(chans), sr)

    def samples(self, *names: str) -> None:
        """Copy these files of sample_audio/ (real recordings) under the root, same names."""
        for name in names:
            self.path(name).write_bytes((SAMPLE_AUDIO / name).read_bytes())

    def raw(self, name: str, content: bytes) -> Path:
        """A file with arbitrary bytes (not audio, truncated audio, ...)."""
        p = self.path(name)
        p.write_bytes(content)
        return p


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator."""
    return np.random.default_rng(20240521)


@pytest.fixture
def audio(tmp_path: Path, rng: np.random.Generator) -> AudioFactory:
    """An `AudioFactory` writing under ``tmp_path / 'in'``."""
    root = tmp_path / "in"
    root.mkdir()
    return AudioFactory(root, rng)


# ---------------------------------------------------------------------------
# running the CLI
# ---------------------------------------------------------------------------
def melcli_command() -> list[str]:
    """The real ``melcli`` executable: the one installed beside this Python first."""
    beside = Path(sys.executable).parent / "melcli"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("melcli")
    return [found] if found else [sys.executable, "-m", "melcli"]


RunMelcli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def melcli(tmp_path: Path) -> RunMelcli:
    """Run the real executable: ``melcli(*args, input=None, cwd=tmp_path)``.

    Returns the `subprocess.CompletedProcess` (text mode, stdout/stderr captured).
    """
    command = melcli_command()

    def run(
        *args: str | os.PathLike[str], input: str | None = None, cwd: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(
            [*command, *map(str, args)],
            input=input, capture_output=True, text=True, cwd=cwd or tmp_path, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip

    return run


Invoke = Callable[..., Result]


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Run ``melcli.cli.cli`` through ``CliRunner`` with cwd = ``tmp_path``.

    ``invoke(*args, input=None)`` returns click's `Result`; unexpected
    exceptions propagate (``catch_exceptions=False``).
    """
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)

    def run(*args: str | os.PathLike[str], input: str | bytes | None = None) -> Result:
        return runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)

    return run


def h5py_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every /features dataset of an HDF5 output, read with h5py alone: key -> array
    (the reference that melcli.open is tested against)."""
    import h5py

    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: object) -> None:  # None: visititems goes on
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f["features"].visititems(visit)
    return out


def feature_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every entry of an output (HDF5 file, npy directory or manifest), read through
    melcli.open: key -> array. The output stores nothing its manifest does not list."""
    import h5py

    import melcli

    with melcli.open(path) as feats:
        arrays = {key: feats[key] for key in feats}
        fmt, root = feats.format, feats.path
    if fmt == "h5":
        names: list[str] = []
        with h5py.File(root, "r") as f:
            f["features"].visititems(
                lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None
            )
    elif fmt == "kaldi":
        lines = (root / "feats.scp").read_bytes().decode("utf-8", "surrogatepass").splitlines()
        names = [line.split(" ", 1)[0] for line in lines]
        assert sorted(p.name for p in root.iterdir()) == ["feats.ark", "feats.scp", "manifest.json"]
    else:
        names = [p.relative_to(root).as_posix()[: -len(".npy")] for p in root.rglob("*.npy")]
    assert sorted(names) == sorted(arrays), "stored entries differ from the manifest's"
    return arrays


def assert_same_manifest(a: dict[str, Any], b: dict[str, Any], *skip: str) -> None:
    """Two manifests are equal (but for ``skip``), their dataset statistics to float64
    accumulation: an incremental run's totals (the old rounded sums, minus what it
    dropped, plus what it added) may differ from a fresh run's in the last bits."""
    sa, sb = a.get("stats"), b.get("stats")
    rest = lambda m: {k: v for k, v in m.items() if k not in (*skip, "stats")}  # noqa: E731
    assert rest(a) == rest(b)
    assert (sa is None) == (sb is None)
    if sa is not None and sb is not None:
        assert sa["count"] == sb["count"]
        for name in ("sum", "sumsq"):
            x, y = np.asarray(sa[name]), np.asarray(sb[name])
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-12 * float(np.abs(y).max() or 1))


def stderr_lines(text: str, prefix: str) -> list[str]:
    """Lines of ``text`` starting with ``prefix``."""
    return [line for line in text.splitlines() if line.startswith(prefix)]


def assert_no_traceback(*texts: str) -> None:
    """No Python traceback in any of ``texts``."""
    for text in texts:
        assert "Traceback" not in text, text


def sample_files() -> Sequence[Path]:
    """Every committed sample file."""
    return sorted(p for p in SAMPLE_AUDIO.rglob("*") if p.is_file() and p.suffix != ".md")


# ---------------------------------------------------------------------------
# a real Dask cluster on the loopback interface
# ---------------------------------------------------------------------------
#: What the shared cluster's workers are started with: an input whose key holds
#: ``crashme`` makes the worker running it SIGSEGV (`melcli.pipeline.crash_point`),
#: and their BLAS runs two threads (Dask's nanny would set one), so a test sees
#: that melcli's tasks leave it as it was.
CLUSTER_CRASH_ON = "crashme"
CLUSTER_BLAS_THREADS = 2


class DaskCluster:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, stopped by PID.

    Parameters
    ----------
    root : Path
        A directory of its own: scheduler file, logs, the workers' trace file
        (``trace``: one line per melcli task started, `melcli.pipeline.trace_point`).
    workers : int
        ``dask worker --nworkers 1 --nthreads 1`` processes (each a nanny and its worker).
    prefix : sequence of str
        Put before each worker's command (``unshare -m ...``).
    """

    def __init__(self, root: Path, *, workers: int = 2, prefix: Sequence[str] = ()) -> None:
        self.root, self.trace = root, root / "trace"
        self.dask = str(Path(sys.executable).parent / "dask")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "MELCLI_CRASH_ON": CLUSTER_CRASH_ON,
            "MELCLI_TRACE": str(self.trace),
            "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": repr(
                {f"{lib}_NUM_THREADS": CLUSTER_BLAS_THREADS for lib in ("OMP", "OPENBLAS", "MKL")}
            ),
        }
        try:
            self.address = self._scheduler()
            for i in range(workers):
                self.add_worker(f"w{i}", prefix)
            self.wait_for_workers(workers)
        except BaseException:
            self.stop()
            raise

    def _start(self, args: Sequence[str], log: str, prefix: Sequence[str] = ()) -> None:
        with open(self.root / log, "wb") as fh:
            self.procs.append(subprocess.Popen(
                [*prefix, *args], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, env=self.env, start_new_session=True,
            ))  # fmt: skip

    def _scheduler(self) -> str:
        import json
        import time

        info = self.root / "scheduler.json"
        self._start([self.dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info)],
                    "scheduler.log")  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.procs[0].poll() is None, (self.root / "scheduler.log").read_text()
            try:
                return str(json.loads(info.read_text())["address"])
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        raise AssertionError("the Dask scheduler did not start within 60 s")

    def add_worker(self, name: str, prefix: Sequence[str] = ()) -> None:
        """Start one more worker (a nanny and its worker process)."""
        self._start([self.dask, "worker", self.address, "--nworkers", "1", "--nthreads", "1",
                     "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                     "--local-directory", str(self.root / name), "--name", name],
                    f"{name}.log", prefix)  # fmt: skip

    def ask(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` in a fresh Python with ``client`` connected; its stdout."""
        script = (
            "from distributed import Client\n"
            f"client = Client({self.address!r}, timeout=20, set_as_default=False)\n"
            f"{code}\nclient.close()\n"
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def wait_for_workers(self, n: int) -> None:
        """Until ``n`` workers are connected (at most a minute)."""
        self.ask(f"client.wait_for_workers({n}, timeout=60)", timeout=90)

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the nannies), not the nannies."""
        import psutil

        pids = []
        for proc in self.procs[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                pids += [c.pid for c in psutil.Process(proc.pid).children()
                         if "spawn_main" in " ".join(c.cmdline())]  # fmt: skip
        return pids

    def trace_lines(self) -> int:
        """Tasks started on the workers so far."""
        try:
            return len(self.trace.read_bytes().splitlines())
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        """Stop every process by PID (SIGTERM, then SIGKILL what is left of each group)."""
        import signal

        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=3)  # a nanny takes seconds to close: then SIGKILL
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its session: the worker processes too
            proc.wait()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler and two single-threaded workers, shared by the cluster tests."""
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        yield cluster
    finally:
        cluster.stop()
