"""The per-file job (runs in a worker, never writes) and the choice of executor."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import mmap
import os
import pickle
import signal
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from melcli import audio, features
from melcli.backends import BACKENDS as BACKENDS  # for callers of pipeline.BACKENDS
from melcli.backends import REMOTE, SERIAL, executor_class
from melcli.discover import Source, os_reason, printable
from melcli.errors import DecodeError, WorkerError
from melcli.params import FeatureParams
from melcli.stats import row_sums
from melcli.workdir import fault_point


@dataclass(frozen=True)
class EntryMeta:
    """Everything recorded about one written entry (one manifest record)."""

    key: str
    source: str
    sample_rate: int
    native_sample_rate: int
    channels: int
    n_samples: int
    duration: float
    shape: tuple[int, ...]
    dtype: str
    format: str
    subtype: str
    source_size: int
    source_mtime: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``shape`` as a list)."""
        d = dict(self.__dict__)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class Failure:
    """An input that could not be processed, and why (one line)."""

    key: str
    source: str
    reason: str
    permanent: bool = False  # see `melcli.errors.DecodeError`

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Task:
    """One unit of work: a whole file, or a range of frames of a long one.

    Attributes
    ----------
    source : Source
    part, parts : int
        This task is part ``part`` (0-based) of ``parts``; (0, 1) is a whole file.
    frame_start, frame_stop : int
        The frames this part computes (ignored for a whole file).
    format : str
        The container its header announced ('' if not probed).
    info : AudioInfo, optional
        The header, for the parts of a long file (read once by the parent).
    stream : bool
        Decode, resample and compute the file block by block (`audio.stream`):
        a file that needs resampling and is long before or after it.
    """

    source: Source
    part: int = 0
    parts: int = 1
    frame_start: int = 0
    frame_stop: int = 0
    format: str = ""
    info: audio.AudioInfo | None = None
    stream: bool = False


@dataclass(frozen=True)
class Shards:
    """Where and how the workers write their results themselves (``--shards``).

    Attributes
    ----------
    directory : str
        The run's shard directory (in the output's work directory), seen by the
        workers at the same path.
    format : str
        ``h5``: the results of a task in one HDF5 shard file
        (`melcli.store.write_shard`); ``npy``: each in an .npy file of its own
        (`melcli.store.write_npy_shards`).
    """

    directory: str
    format: str


@dataclass(frozen=True)
class Stored:
    """Where a worker wrote a result's array (``--shards``): a shard file of `Shards`.

    Attributes
    ----------
    shard : str
        The shard file's name (``shard-<hex>.h5`` or ``.npy``), in the run's
        shard directory.
    dataset : str
        The dataset holding the array in an HDF5 shard ('' for an .npy one).
    frames : int
        Frames of the array (its last axis).
    """

    shard: str
    dataset: str
    frames: int


@dataclass(frozen=True)
class Result:
    """What the per-file job returns: features and metadata, or a failure.

    For a part of a long file, ``meta`` describes the whole entry (its full
    shape) and ``data`` holds frames ``task.frame_start`` onwards.
    """

    task: Task
    meta: EntryMeta | None = None
    data: np.ndarray | None = None
    failure: Failure | None = None
    sums: Any = None  # `melcli.stats.row_sums` of ``data``, computed in the worker
    stored: Stored | None = None  # ``data`` is in a shard file instead (then None)
    #: ``data`` is a view of memory its executor reuses once the next results
    #: have been asked for (`ForkExecutor`'s shared memory): copy what you keep.
    borrowed: bool = False

    @property
    def source(self) -> Source:
        """The input this result is about."""
        return self.task.source


def extract(task: Task | Source, params: FeatureParams) -> Result:
    """Compute the features of one file (or one part of it): a pure function.

    Never writes anything and never raises for a bad file: expected problems
    become ``Result.failure``. Runs in worker processes.

    Parameters
    ----------
    task : Task or Source
        A Source is the whole file.
    params : FeatureParams

    Returns
    -------
    Result
    """
    if isinstance(task, Source):
        task = Task(task)
    seed = _begin(task)
    source = task.source
    try:
        st = _stat(source.path)
        if task.stream and task.info is not None:
            info, sr = task.info, params.sr or task.info.sample_rate
            blocks = audio.stream(
                source.path, sr=sr, mono=params.mono, quiet=task.format in ("", "MP3")
            )
            expected = audio.resampled_length(info.frames, info.sample_rate, sr)
            counted = _Counted(blocks)
            data = features.compute_stream(
                counted, sr, params, expected_samples=expected, seed=seed
            )
            return _result(task, st, info, sr, counted.n, data, tuple(data.shape))
        if task.parts == 1:
            y, sr, info = _load(task, params)
            data = features.compute(y, sr, params, seed=seed)
            return _result(task, st, info, sr, y.shape[-1], data, tuple(data.shape))
        # a slice of a long file at its native rate: only that slice is decoded
        info = task.info or audio.probe(source.path)
        sr, n_samples = info.sample_rate, info.frames
        a, b = features.segment_bounds(params, task.frame_start, task.frame_stop)
        y = audio.load_segment(source.path, max(a, 0), min(b, n_samples), mono=params.mono)
        data = features.compute_segment(
            y, sr, params, n_samples=n_samples,
            frame_start=task.frame_start, frame_stop=task.frame_stop, seed=seed,
        )  # fmt: skip
        shape = (*data.shape[:-1], params.n_frames(n_samples))
        return _result(task, st, info, sr, n_samples, data, shape)
    except Exception as exc:
        return _failed(task, exc)


#: Whole files of at most this many samples (per channel, after resampling) are
#: transformed together by `extract_batch`.
SHORT_SAMPLES = 1 << 16


@dataclass
class _Decoded:
    """A short file of a batch, decoded and checked, waiting for its transform."""

    index: int
    y: np.ndarray
    n_samples: int
    info: audio.AudioInfo
    st: os.stat_result
    seed: int


def extract_batch(tasks: Sequence[Task], params: FeatureParams) -> list[Result]:
    """`extract` of each task, in order, with the same results.

    The short whole files (`SHORT_SAMPLES`) are decoded one by one, then those
    at one rate are transformed together (`melcli.features.spectrogram_many`):
    for one-second clips the per-call costs of the numpy steps weigh more than
    their arithmetic. Other tasks go through `extract` alone.
    """
    results: list[Result | None] = [None] * len(tasks)
    short: dict[int, list[_Decoded]] = {}  # by rate
    for i, task in enumerate(tasks):
        if task.parts != 1 or task.stream:
            results[i] = extract(task, params)
            continue
        seed = _begin(task)
        try:
            st = _stat(task.source.path)
            y, sr, info = _load(task, params)
            if y.shape[-1] > SHORT_SAMPLES:
                data = features.compute(y, sr, params, seed=seed)
                results[i] = _result(task, st, info, sr, y.shape[-1], data, tuple(data.shape))
                continue
            ready = features.prepared(y, sr, params)
        except Exception as exc:
            results[i] = _failed(task, exc)
            continue
        short.setdefault(sr, []).append(_Decoded(i, ready, y.shape[-1], info, st, seed))
    for sr, group in short.items():
        try:
            specs = features.spectrogram_many(
                [d.y for d in group], sr, params, [d.seed for d in group]
            )
        except Exception:  # not a file's fault: alone, each says whose it is
            for d in group:
                results[d.index] = extract(tasks[d.index], params)
            continue
        for d, spec in zip(group, specs, strict=True):
            task = tasks[d.index]
            try:
                data = features.finish(spec, params, d.n_samples)
            except Exception as exc:
                results[d.index] = _failed(task, exc)
                continue
            results[d.index] = _result(task, d.st, d.info, sr, d.n_samples, data, data.shape)
    done = [r for r in results if r is not None]
    assert len(done) == len(tasks), "every task has its result"
    return done


def _begin(task: Task) -> int:
    """The test hooks of a task's start; returns the entry's seed."""
    fault_point("extract")
    trace_point(task)
    crash_point(task.source.key)
    return features.entry_seed(task.source.key)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise DecodeError(os_reason(path, exc), permanent=False) from None


def _load(task: Task, params: FeatureParams) -> tuple[np.ndarray, int, audio.AudioInfo]:
    return audio.load(
        task.source.path, sr=params.sr, mono=params.mono, quiet=task.format in ("", "MP3")
    )


def _failed(task: Task, exc: Exception) -> Result:
    """The failure `extract` records for an exception raised while computing ``task``."""
    source = task.source
    if isinstance(exc, DecodeError):
        reason, permanent = str(exc), exc.permanent
    elif isinstance(exc, MemoryError):
        reason, permanent = "out of memory", False
    else:  # a bug or an exotic file: record it, keep the batch going
        reason, permanent = f"internal error: {type(exc).__name__}: {exc}", False
    return Result(task, failure=Failure(source.key, printable(source.path), reason, permanent))


def _result(
    task: Task,
    st: os.stat_result,
    info: audio.AudioInfo,
    sr: int,
    n_samples: int,
    data: np.ndarray,
    shape: tuple[int, ...],
) -> Result:
    source = task.source
    meta = EntryMeta(
        key=source.key,
        source=printable(source.path),
        sample_rate=sr,
        native_sample_rate=info.sample_rate,
        channels=info.channels,
        n_samples=int(n_samples),
        duration=n_samples / sr,
        shape=tuple(int(n) for n in shape),
        dtype=str(data.dtype),
        format=info.format,
        subtype=info.subtype,
        source_size=int(st.st_size),
        source_mtime=st.st_mtime,
    )
    sums = None if np.iscomplexobj(data) else row_sums(data)
    return Result(task, meta=meta, data=data, sums=sums)


#: Files longer than this (samples per channel) are split into parts of about
#: `PART_SAMPLES`, computed as separate tasks: memory stays flat on hour-long
#: files and both cores work on one long file.
SPLIT_SAMPLES = 1 << 22
PART_SAMPLES = 1 << 20
#: Containers where libsndfile seeks to an exact sample (compressed lossy
#: formats may not): only these are split.
SEEKABLE_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "AIFF", "CAF", "W64", "RF64", "AU", "NIST"})

#: Work estimates (`task_cost`) are in units of about 10-30 ns of one core:
#: one decoded sample, or one input sample of one frame's FFT and filterbank.
#: A batch of tasks holds at most `BATCH_WORK` units (~0.1-0.25 s), so results
#: and checkpoints flow continuously whatever the parameters, and a file whose
#: own work is above twice that is split into frame ranges where it can be.
BATCH_WORK = 8_000_000
#: Fixed cost of one task (opening the file, Python work), in the same units.
TASK_WORK = 50_000
#: Per input sample, resampling (soxr HQ) costs about this many decoded samples.
RESAMPLE_WORK = 4


def _splittable(info: audio.AudioInfo, params: FeatureParams) -> bool:
    return (
        info.format in SEEKABLE_FORMATS
        and (params.sr is None or params.sr == info.sample_rate)
        and not params.needs_whole_entry
    )


def _frame_work(params: FeatureParams, channels: int) -> int:
    return (1 if params.mono else channels) * params.n_fft


def task_cost(task: Task, info: audio.AudioInfo, params: FeatureParams) -> int:
    """Estimated work of one task in `BATCH_WORK` units (decode, resample, frames).

    Parameters
    ----------
    task : Task
    info : AudioInfo
        The header of the task's file.
    params : FeatureParams

    Returns
    -------
    int
    """
    resampling = params.sr is not None and params.sr != info.sample_rate
    if task.parts > 1:
        frames = task.frame_stop - task.frame_start
        samples = frames * params.hop_length * info.channels
    else:
        samples = info.frames * info.channels
        n_out = info.frames
        if resampling:
            n_out = int(np.ceil(info.frames * params.sr / info.sample_rate))  # type: ignore[operator]
        frames = params.n_frames(n_out)
        if resampling:
            samples *= 1 + RESAMPLE_WORK
    return TASK_WORK + samples + frames * _frame_work(params, info.channels)


class _Counted:
    """Iterate over signal blocks, counting their samples (per channel)."""

    def __init__(self, blocks: Iterator[np.ndarray]) -> None:
        self._blocks = blocks
        self.n = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self._blocks:
            self.n += block.shape[-1]
            yield block


def make_tasks(source: Source, info: audio.AudioInfo, params: FeatureParams) -> list[Task]:
    """One task per file, or several frame ranges for a long or heavy file.

    A file is split when it is long (more than `SPLIT_SAMPLES`) or its frames
    are more than twice `BATCH_WORK` of work (a tiny hop with a large FFT), and
    it is seekable sample-exactly, needs no resampling and no ``top_db`` (which
    needs the whole entry's maximum). Parts hold at most `PART_SAMPLES` and
    `BATCH_WORK`. A long file that needs resampling is one task that streams
    (`Task.stream`): the resampler's state carries from block to block, so its
    parts could not be computed apart and give the same samples.
    """
    n = info.frames
    stream = [Task(source, format=info.format, info=info, stream=True)]
    resampled = params.sr is not None and params.sr != info.sample_rate
    if resampled and params.sr is not None:
        long = max(n, audio.resampled_length(n, info.sample_rate, params.sr)) > SPLIT_SAMPLES
        return stream if long else [Task(source, format=info.format)]
    whole = [Task(source, format=info.format)]
    if not _splittable(info, params):
        # a long file that cannot be split (its last stage needs the whole entry, or
        # its format does not seek exactly) is decoded in blocks, never held whole
        return stream if n > SPLIT_SAMPLES else whole
    total = params.n_frames(n)
    per_frame = _frame_work(params, info.channels)
    if n <= SPLIT_SAMPLES and total * per_frame <= 2 * BATCH_WORK:
        return whole
    # every part spans more than n_fft samples, so the centre padding at either
    # end of the signal can be rebuilt from the part's own samples
    least = params.n_fft // params.hop_length + 2
    step = max(least, min(PART_SAMPLES // params.hop_length, BATCH_WORK // per_frame))
    starts = list(range(0, total, step))
    if len(starts) > 1 and total - starts[-1] < least:
        starts.pop()  # the last part takes the short remainder
    if len(starts) < 2:
        return whole
    stops = [*starts[1:], total]
    return [
        Task(source, i, len(starts), start, stop, info.format, info)
        for i, (start, stop) in enumerate(zip(starts, stops, strict=True))
    ]


def make_batches(costs: Sequence[int], n_jobs: int, work_limit: int = BATCH_WORK) -> list[range]:
    """Consecutive batches of tasks, sized by count and by estimated work.

    At most 64 tasks and at most 1/16 of a worker's share (tiny files: the
    dispatch of each batch costs ~0.1 ms, and 16 batches per worker still
    balance the load), and at most ``work_limit`` of work (heavy files: a batch
    returns, and its results are checkpointed, within a fraction of a second).
    A task heavier than ``work_limit`` is a batch of its own. A cluster
    (`melcli.cluster`) gives a larger ``work_limit``: each of its tasks costs
    the scheduler and the network more than a local dispatch.
    """
    limit = max(1, min(64, len(costs) // (max(1, n_jobs) * 16)))
    batches: list[range] = []
    start, work = 0, 0
    for i, cost in enumerate(costs):
        if i > start and (i - start >= limit or work + cost > work_limit):
            batches.append(range(start, i))
            start, work = i, 0
        work += cost
    if start < len(costs):
        batches.append(range(start, len(costs)))
    return batches


def worker_init() -> None:
    """Process-wide settings for computing features, in one place: malloc keeps
    freed blocks (`keep_freed_memory`) and BLAS runs one thread
    (`melcli.features.single_threaded_blas`). Each executor applies it once where
    its work runs (a forked or loky worker process, or the parent before its
    threads or an in-process run start); `extract` itself changes nothing
    process-wide, so a library caller or a shared (Dask) worker keeps its settings."""
    keep_freed_memory()
    features.single_threaded_blas()


@functools.cache
def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed blocks for reuse instead of unmapping them.

    By default every array over 128 KB (a block of frames, its FFT, a result)
    is a fresh mmap, and each of its pages faults on first touch; with the
    blocks reused, 200 x 10 s speech files take 0.69 s instead of 0.88 s and
    1000 one-second clips (stft) 0.86 s instead of 0.98 s (whole runs, 2 cores).
    Memory stays bounded: blocks are reused, not accumulated. A no-op off glibc.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
    mallopt(m_trim_threshold, 256 << 20)


def default_jobs() -> int:
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: With ``auto``, tasks shorter than this on average (samples, all channels) go to
#: forked processes. Measured on 2 cores (docs/benchmarks.md): 1000 x 1 s clips,
#: mel: compute 0.50 s in processes vs 0.75 s in threads; 200 x 10 s speech
#: files: whole run 0.96 s in processes vs 0.64 s in threads.
FORK_BELOW_SAMPLES = 1 << 16


def resolve_backend(backend: str, mean_samples: float) -> str:
    """The executor ``backend`` means for tasks of ``mean_samples`` samples on average.

    Parameters
    ----------
    backend : str
        A ``--backend`` choice (`melcli.backends.BACKENDS`).
    mean_samples : float
        The tasks' mean length (samples, all channels).

    Returns
    -------
    str
        ``backend``, or for ``auto`` fork or threading (`FORK_BELOW_SAMPLES`).
    """
    if backend != "auto":
        return backend
    if mean_samples < FORK_BELOW_SAMPLES and sys.platform.startswith("linux"):
        return "fork"
    return "threading"


#: Signals of a crash inside a C library (a decoder, the resampler): the input
#: being decoded is the likely cause, and the same input will crash again.
CRASH_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL}
)


def death_reason(status: int) -> str:
    """Why a worker process with wait status ``status`` ended, as a failure reason.

    ``decoder crashed (SIGSEGV)`` for a crash (a content failure: permanent
    until the file changes); otherwise the signal or exit status (retried).
    """
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig in CRASH_SIGNALS:
            return f"decoder crashed ({name})"
        return f"worker process killed by {name} (out of memory?)"
    return f"worker process exited with status {os.waitstatus_to_exitcode(status)}"


def crash_point(key: str) -> None:
    """Test-only fault injection: really crash this process on one input.

    ``MELCLI_CRASH_ON=<substring>[:abort]`` sends SIGSEGV to this process (or
    calls ``os.abort()``) when it starts on an input whose key contains
    ``<substring>``, as a decoder crashing inside C code would. A no-op otherwise.
    """
    spec = os.environ.get("MELCLI_CRASH_ON")
    if not spec:
        return
    target, _, how = spec.rpartition(":") if spec.endswith(":abort") else (spec, "", "")
    if target and target in key:
        sys.stderr.flush()
        if how == "abort":
            os.abort()
        os.kill(os.getpid(), signal.SIGSEGV)


def trace_point(task: Task) -> None:
    """Test-only: ``MELCLI_TRACE=<file>`` appends ``<key>\\t<part>`` as each task starts.

    Lets the tests count the work a killed run had started (one ``write`` with
    O_APPEND per task, from any worker process or thread).
    """
    path = os.environ.get("MELCLI_TRACE")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{task.source.key}\t{task.part}\n".encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


class InflightLog:
    """Which batches are in the workers' hands, in ``inflight.log`` of the work directory.

    One line is appended when a batch is handed out and one when its results
    are back (no fsync: a write in the page cache survives a crash of this
    process, which is what the log is for). When a run dies with batches
    still out, the next run finds them with `read` and decodes those inputs in
    an isolated process first (`isolated_results`): a decoder that crashes on
    an input costs that input, not every run. The log is compacted to the
    batches still out every `COMPACT_LINES` lines.
    """

    COMPACT_LINES = 4096

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._out: dict[int, str] = {}  # batch -> its line
        self._lines = 0

    def submit(self, batch: int, tasks: Sequence[Task]) -> None:
        """Note that ``tasks`` (batch number ``batch``) go to a worker now."""
        line = json.dumps({"b": batch, "t": [[t.source.key, t.part] for t in tasks]}) + "\n"
        self._out[batch] = line
        self._append(line)

    def done(self, batch: int) -> None:
        """Note that batch ``batch`` came back (results or failures)."""
        self._out.pop(batch, None)
        if self._lines >= self.COMPACT_LINES:
            self._compact()
        else:
            self._append(json.dumps({"d": batch}) + "\n")

    def _append(self, line: str) -> None:
        if self.path is None:
            return
        try:
            if self._fd is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
                self._fd = os.open(self.path, flags, 0o644)
                self._lines = 0
            os.write(self._fd, line.encode("utf-8"))
            self._lines += 1
        except OSError:
            pass  # best effort: without it, a crash is found again by crashing

    def _compact(self) -> None:
        self.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        for line in list(self._out.values()):
            self._append(line)

    def close(self) -> None:
        """Close the file (it stays, for the next run to read)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def clear(self) -> None:
        """Forget everything: no batch was out when the run stopped (no crash)."""
        self.close()
        self._out.clear()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()

    @staticmethod
    def read(path: Path) -> set[tuple[str, int]]:
        """The (key, part) of every task handed out and not returned, per the log at ``path``."""
        out: dict[int, list[tuple[str, int]]] = {}
        try:
            with open(path, "rb") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return set()
        for raw in lines:
            try:
                rec = json.loads(raw)
                if "d" in rec:
                    out.pop(int(rec["d"]), None)
                else:
                    out[int(rec["b"])] = [(str(k), int(p)) for k, p in rec["t"]]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
        return {task for tasks in out.values() for task in tasks}


#: Signals only the parent handles (a terminal sends them to the whole group).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread while workers are created.

    A new worker inherits the mask, so a Ctrl-C to the process group before it
    has set its own dispositions cannot make it print a KeyboardInterrupt
    traceback or die; the parent gets any such signal once unblocked.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _child_setup(keep: Sequence[int]) -> None:
    """In a forked worker: leave signals to the parent, die with it, drop inherited files.

    Only the parent handles Ctrl-C, SIGTERM and SIGHUP (sent to the whole
    process group by a terminal); it stops workers with SIGKILL. Descriptors
    inherited from the parent (the output being written, its HDF5 file lock,
    the run's lock) are closed, so no worker holds them after a commit.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if 0 < soft < (1 << 20) else (1 << 20)


def _die_with_parent(parent: int | None = None) -> None:
    """PR_SET_PDEATHSIG: the kernel SIGKILLs this worker when its parent dies."""
    parent = os.getppid() if parent is None else parent
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _loky_worker_init(parent: int) -> None:
    # started with the stop signals blocked (`LokyExecutor.start`): ignore them for good
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _die_with_parent(parent)
    worker_init()


def _extract_batch(batch: Sequence[Task], params: FeatureParams) -> list[Result]:
    return extract_batch(batch, params)


#: Capacity asked for a fork worker's result pipe (Linux's default is 64 KB; 1 MB is
#: what an unprivileged process may ask for, /proc/sys/fs/pipe-max-size).
RESULT_PIPE_BYTES = 1 << 20


def _fork(
    tasks: Sequence[Task], params: FeatureParams, serve: Any, *extra: Any
) -> tuple[int, Any, Any]:
    """Fork a worker running ``serve(tasks, params, inbox, outbox, *extra)``;
    returns (pid, to, from)."""
    from multiprocessing.connection import Connection

    task_r, task_w = os.pipe()
    res_r, res_w = os.pipe()
    with contextlib.suppress(OSError, AttributeError):  # Linux: results in fewer, larger reads
        import fcntl

        fcntl.fcntl(res_w, fcntl.F_SETPIPE_SZ, RESULT_PIPE_BYTES)
    with stop_signals_blocked():
        pid = os.fork()
        # The worker never returns into the parent's stack, not even to leave this
        # block: that would unblock the stop signals before it ignores them, and a
        # SIGTERM in between ran the parent's handler here (a second error line).
        if pid == 0:
            code = 0
            try:
                os.close(task_w)
                os.close(res_r)
                _child_setup((task_r, res_w))
                worker_init()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                serve(tasks, params, Connection(task_r, writable=False),
                      Connection(res_w, readable=False), *extra)  # fmt: skip
            except BaseException:
                code = 1
            finally:
                os._exit(code)
    os.close(task_r)
    os.close(res_w)
    return pid, Connection(task_w, readable=False), Connection(res_r, writable=False)


#: Shared memory of a fork worker for its results (`ForkExecutor`): two halves,
#: one per batch in flight; what does not fit goes through the pipe.
ARENA_BYTES = 64 << 20


def _serve_batches(
    tasks: Sequence[Task], params: FeatureParams, inbox: Any, outbox: Any, arena: mmap.mmap
) -> None:
    half = len(arena) // 2
    for n in itertools.count():
        try:
            batch, start, stop = inbox.recv()
        except EOFError:
            return
        results = extract_batch(tasks[start:stop], params)
        placed = _to_arena(results, arena, (n % 2) * half, half)
        send_arrays(outbox.fileno(), (batch, results, placed))


def _to_arena(
    results: list[Result], arena: mmap.mmap, base: int, size: int
) -> list[tuple[int, int, str, tuple[int, ...]]]:
    """Copy the arrays of ``results`` into ``arena[base:base + size]`` while they fit
    (their ``data`` becomes None); returns (index, offset, dtype, shape) of each."""
    placed = []
    pos = 0
    for i, res in enumerate(results):
        data = res.data
        if data is None or not data.nbytes or pos + data.nbytes > size:
            continue
        np.ndarray(data.shape, data.dtype, buffer=arena, offset=base + pos)[...] = data
        placed.append((i, base + pos, data.dtype.str, data.shape))
        results[i] = dataclasses.replace(res, data=None)
        pos += -(-data.nbytes // 64) * 64
    return placed


_FRAME = struct.Struct("<QI")  # pickle length, number of out-of-band buffers


def send_arrays(fd: int, obj: Any) -> None:
    """Write ``obj`` to the pipe ``fd`` as a pickle whose arrays' bytes follow it raw
    (pickle protocol 5 out-of-band buffers), for `recv_arrays`: the receiver reads
    them straight into their final memory, with no copy through a message buffer."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws: list[memoryview] = [b.raw() for b in buffers]
    sizes = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    for view in (memoryview(_FRAME.pack(len(head), len(raws)) + sizes + head), *raws):
        while view.nbytes:
            view = view[os.write(fd, view) :]


def recv_arrays(fd: int) -> Any:
    """Read one object `send_arrays` wrote to the pipe ``fd``.

    Raises
    ------
    EOFError
        The writer closed the pipe (or died) before a whole object arrived.
    """
    head_len, n = _FRAME.unpack(_read_exact(fd, _FRAME.size))
    sizes = struct.unpack(f"<{n}Q", _read_exact(fd, 8 * n)) if n else ()
    head = _read_exact(fd, head_len)
    buffers = [np.empty(size, dtype=np.uint8) for size in sizes]
    for buf in buffers:
        _read_into(fd, buf.data)
    return pickle.loads(head, buffers=buffers)


def _read_exact(fd: int, n: int) -> bytes:
    buf = bytearray(n)
    _read_into(fd, memoryview(buf))
    return bytes(buf)


def _read_into(fd: int, view: memoryview) -> None:
    while view.nbytes:
        got = os.readv(fd, [view])
        if got == 0:
            raise EOFError
        view = view[got:]


def _serve_in_order(tasks: Sequence[Task], params: FeatureParams, inbox: Any, outbox: Any) -> None:
    inbox.close()
    for task in tasks:
        outbox.send(extract(task, params))


def _reap(pid: int, kill: bool) -> int:
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def isolated_results(tasks: Sequence[Task], params: FeatureParams) -> Iterator[Result]:
    """`extract` each task in turn in a forked process; a crash costs only its task.

    When the process dies (a decoder's SIGSEGV or abort), the task it was on
    becomes a failure (`death_reason`) and a new process goes on with the rest.
    Used for inputs that were in flight when an earlier run died, and for the
    batch of a fork worker that crashed.
    """
    i = 0
    while i < len(tasks):
        pid, inbox, outbox = _fork(tasks[i:], params, _serve_in_order)
        inbox.close()
        finished = False
        try:
            while i < len(tasks):
                try:
                    res = outbox.recv()
                except EOFError:
                    break
                i += 1
                yield res
            finished = True
        finally:
            outbox.close()
            status = _reap(pid, kill=not finished or i < len(tasks))
        if i < len(tasks):
            src = tasks[i].source
            reason = death_reason(status)
            failure = Failure(src.key, printable(src.path), reason, reason.startswith("decoder"))
            yield Result(tasks[i], failure=failure)
            i += 1


class WorkerPool:
    """The executor of one run: batches sized by work, streamed back as they finish.

    Start it (`start`) before the output is opened, so no worker inherits it;
    iterate `results`; `close` stops it: on success workers are reaped before
    the commit, on an error or interrupt they are killed (SIGKILL, never
    waited for mid-batch). ``jobs <= 1`` runs in this process. The batches in
    the workers' hands are kept in ``log`` (`InflightLog`). The work itself is
    done by the `Executor` of ``backend`` (`melcli.backends.EXECUTORS`).

    Parameters
    ----------
    tasks : sequence of Task
        In the order to hand them out.
    costs : sequence of int
        `task_cost` of each task.
    params : FeatureParams
    jobs : int
    backend : str
        A name in `melcli.backends.EXECUTORS` (``auto`` resolved, see
        `resolve_backend`); with one job, ``serial`` whatever it says.
    log : InflightLog, optional
    address : str, optional
        Where a remote backend's workers are (`melcli.backends.REMOTE`: the
        Dask scheduler); there ``jobs`` caps the tasks computing at once (0:
        every worker thread of the cluster), and one job is not serial.
    shards : Shards, optional
        Where the workers write their results (``--shards``, remote backends
        only: `Executor`).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        costs: Sequence[int],
        params: FeatureParams,
        *,
        jobs: int,
        backend: str,
        log: InflightLog | None = None,
        address: str | None = None,
        shards: Shards | None = None,
    ) -> None:
        self.tasks, self.params = tasks, params
        remote = backend in REMOTE and len(tasks) > 0
        self.n_jobs = max(0, jobs) if remote else max(1, min(jobs, len(tasks)))
        self.backend = backend if remote or self.n_jobs > 1 else SERIAL
        self.batches = make_batches(costs, self.n_jobs)
        self.log = log or InflightLog(None)
        factory = executor_class(self.backend)
        self.executor = factory(
            tasks, params, self.batches, n_jobs=self.n_jobs, log=self.log,
            costs=costs, address=address, shards=shards,
        )  # fmt: skip
        self._closed = False

    def start(self) -> WorkerPool:
        """Create the workers now (forked workers hold no descriptor of the output)."""
        self.executor.start()
        return self

    def results(self) -> Iterator[Result]:
        """Results as batches finish (unordered across batches).

        A result whose ``borrowed`` is set holds a view of memory the executor
        reuses two batches later: copy its ``data`` to keep it past the next
        results asked for.

        Raises
        ------
        WorkerError
            A worker process died other than by a crash (killed, out of memory),
            or a loky worker died.
        """
        return self.executor.results()

    def close(self, *, ok: bool, keep_log: bool = False) -> None:
        """Stop the workers: reap idle ones (``ok``) or kill them; close the log.

        ``keep_log``: leave the in-flight log for the next run (a worker died).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.executor.close(ok=ok)
        finally:
            if keep_log:
                self.log.close()
            else:
                self.log.clear()


class Executor:
    """Computes the batches of one run, somewhere: the interface of every backend.

    A backend is a subclass and its entry in `melcli.backends.EXECUTORS`;
    `WorkerPool` makes the batches and the log, and calls `start`, `results`
    and `close` in that order (`close` possibly without the others).

    Parameters
    ----------
    tasks : sequence of Task
    params : FeatureParams
    batches : sequence of range
        Indices into ``tasks`` (`make_batches`), in the order to hand them out.
    n_jobs : int
        Workers to run (more than one except for `SerialExecutor`; a remote
        backend's cap on tasks computing at once, 0 for none).
    log : InflightLog
        Every batch is noted in it when handed out (`hand_out`) and when back.
    costs : sequence of int, optional
        `task_cost` of each task (a backend that batches them otherwise).
    address : str, optional
        Where a remote backend's workers are (the Dask scheduler); ignored by
        the local ones.
    shards : Shards, optional
        Where the workers write their results themselves (``--shards``):
        results then come back as `Stored` records. Only the Dask backend takes it.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        params: FeatureParams,
        batches: Sequence[range],
        *,
        n_jobs: int,
        log: InflightLog,
        costs: Sequence[int] = (),
        address: str | None = None,
        shards: Shards | None = None,
    ) -> None:
        self.tasks, self.params, self.batches = tasks, params, batches
        self.n_jobs, self.log = n_jobs, log
        self.costs, self.address, self.shards = costs, address, shards

    def start(self) -> None:
        """Create the workers, and apply `worker_init` where the work will run.

        Called before the output is opened, so no worker process inherits it.
        """

    def results(self) -> Iterator[Result]:
        """Each batch's results as it finishes; at most two batches per worker out.

        At most two: results wait in memory until the writer takes them, so
        this bounds memory, and the work lost when the run is killed.

        Raises
        ------
        WorkerError
            A worker died in a way that costs the run (see each backend).
        """
        raise NotImplementedError

    def close(self, *, ok: bool) -> None:
        """Stop the workers: on success (``ok``) wait for idle ones, else kill them.

        Called once, also when `start` was not or `results` not to the end.
        """

    def hand_out(self, b: int, rng: range) -> list[Task]:
        """The tasks of batch ``b`` (indices ``rng``), noted in the log as out now."""
        batch = [self.tasks[i] for i in rng]
        self.log.submit(b, batch)
        return batch


class SerialExecutor(Executor):
    """Every batch in turn in this process (``-j 1``, or a single task)."""

    def start(self) -> None:
        """Apply `worker_init` to this process: the work runs here."""
        worker_init()

    def results(self) -> Iterator[Result]:
        """Each batch's results as it is computed, here."""
        for b, rng in enumerate(self.batches):
            batch = self.hand_out(b, rng)
            yield from _extract_batch(batch, self.params)
            self.log.done(b)


class _FuturesExecutor(Executor):
    """A `concurrent.futures` executor (``self.pool``) computes the batches."""

    pool: Any = None  # made by `start`

    def results(self) -> Iterator[Result]:
        """Each batch's results as its future completes.

        Raises
        ------
        WorkerError
            The executor broke (a loky worker died).
        """
        from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait

        todo = iter(enumerate(self.batches))
        pending: dict[Future[list[Result]], int] = {}

        def submit(n: int) -> None:
            for b, rng in itertools.islice(todo, n):
                batch = self.hand_out(b, rng)
                pending[self.pool.submit(_extract_batch, batch, self.params)] = b

        submit(2 * self.n_jobs)
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    b = pending.pop(future)
                    out = future.result()
                    submit(1)
                    self.log.done(b)
                    yield from out
        except BrokenExecutor:  # loky's BrokenProcessPool and TerminatedWorkerError too
            raise WorkerError(
                "a worker process died unexpectedly (killed, out of memory, or a crash)"
            ) from None


class ThreadingExecutor(_FuturesExecutor):
    """Threads of this process (``--backend threading``).

    A crash of a decoder kills the process: the next run finds the input in
    the in-flight log and decodes it in an isolated process first.
    """

    def start(self) -> None:
        """`worker_init` here, then the threads."""
        from concurrent.futures import ThreadPoolExecutor

        # once, before any thread computes (threadpoolctl's first use is not
        # thread-safe, and the float32 filterbank sums depend on BLAS threads)
        worker_init()
        self.pool = ThreadPoolExecutor(self.n_jobs, thread_name_prefix="melcli")

    def close(self, *, ok: bool) -> None:
        """Wait for the threads (``ok``), or drop the batches not started."""
        if self.pool is not None:
            self.pool.shutdown(wait=ok, cancel_futures=True)


class LokyExecutor(_FuturesExecutor):
    """Fresh worker processes of joblib's loky (``--backend loky``).

    They ignore the stop signals and die with the parent (`_loky_worker_init`);
    one that dies (a crash included) stops the run with a `WorkerError`.
    """

    def start(self) -> None:
        """Spawn the workers now, with the stop signals blocked meanwhile."""
        from joblib.externals.loky.process_executor import ProcessPoolExecutor

        with stop_signals_blocked():  # its workers and resource trackers spawn now
            import multiprocessing.resource_tracker as mp_tracker

            from joblib.externals.loky.backend import resource_tracker as loky_tracker

            # starting a tracker unblocks SIGINT and SIGTERM: start them first
            loky_tracker.ensure_running()
            mp_tracker.ensure_running()
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            self.pool = ProcessPoolExecutor(
                self.n_jobs, initializer=_loky_worker_init, initargs=(os.getpid(),)
            )
            self.pool.submit(int)  # spawns the workers, synchronously

    def close(self, *, ok: bool) -> None:
        """Wait for the workers (``ok``), or kill them."""
        if self.pool is not None:
            if not ok:
                _quiet_loky_manager()
            self.pool.shutdown(wait=ok, kill_workers=not ok)


def _quiet_loky_manager() -> None:
    """Drop the KeyError loky's manager thread may raise once its pool is killed with
    work pending (it looks up a work item the kill removed): a traceback on stderr
    after Ctrl-C, about nothing the user can act on. Any other thread exception is
    reported as before."""
    import threading

    previous = threading.excepthook
    if getattr(previous, "melcli_loky", False):
        return

    def hook(args: Any) -> None:
        if args.exc_type is KeyError and getattr(args.thread, "name", "") == (
            "ExecutorManagerThread"
        ):
            return
        previous(args)

    hook.melcli_loky = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class ForkExecutor(Executor):
    """Worker processes forked from this one (``--backend fork``), fed by pipes.

    A worker that crashes (`CRASH_SIGNALS`) costs the input it crashed on:
    its batches are redone one input at a time in isolated processes and a
    new worker takes its place. Any other death stops the run (`WorkerError`).
    """

    #: The live workers, made by `start` (none before: `close` then has nothing to do).
    workers: Sequence[_ForkWorker] = ()

    def start(self) -> None:
        """Fork the workers (each applies `worker_init` to itself)."""
        self.workers = [_ForkWorker(self.tasks, self.params) for _ in range(self.n_jobs)]

    def results(self) -> Iterator[Result]:
        """Each batch's results as its worker sends them, their arrays borrowed from
        its shared memory (`Result.borrowed`).

        Raises
        ------
        WorkerError
            A worker died other than by a crash (killed, out of memory).
        """
        from multiprocessing.connection import wait

        todo = iter(enumerate(self.batches))
        while True:
            for w in self.workers:  # keep two batches per worker out
                for b, rng in itertools.islice(todo, 2 - len(w.out)):
                    self.hand_out(b, rng)
                    w.give(b, rng)
            busy = {w.outbox: w for w in self.workers if w.out}
            if not busy:
                return
            for conn in wait(list(busy)):
                w = busy[conn]  # type: ignore[index]
                try:
                    b, out, placed = recv_arrays(w.outbox.fileno())
                except EOFError:  # the worker died
                    yield from self._replace(w)
                    continue
                for i, offset, dtype, shape in placed:
                    data = np.ndarray(shape, dtype, buffer=w.arena, offset=offset)
                    out[i] = dataclasses.replace(out[i], data=data, borrowed=True)
                w.out.pop(0)
                self.log.done(b)
                # the worker reuses this batch's half of its arena for the batch after
                # next, handed out once these results have all been taken
                yield from out

    def _replace(self, w: _ForkWorker) -> Iterator[Result]:
        status = w.stop(kill=True)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) in CRASH_SIGNALS):
            raise WorkerError(
                "a worker process died unexpectedly (killed, out of memory, or a crash): "
                + death_reason(status)
            )
        # A crash (a decoder's SIGSEGV or abort): redo its batches one input at a
        # time in isolated processes; the input that crashes again is a failure.
        lost = [self.tasks[i] for _, rng in w.out for i in rng]
        fresh = _ForkWorker(self.tasks, self.params)
        self.workers = [fresh if x is w else x for x in self.workers]
        yield from isolated_results(lost, self.params)
        for b, _ in w.out:
            self.log.done(b)

    def close(self, *, ok: bool) -> None:
        """Reap the workers once idle (``ok``), or kill them."""
        for w in self.workers:
            w.stop(kill=not ok)


class _ForkWorker:
    """One forked worker process and the batches it holds (see `ForkExecutor`)."""

    def __init__(self, tasks: Sequence[Task], params: FeatureParams) -> None:
        self.arena = mmap.mmap(-1, ARENA_BYTES)  # shared with the child (MAP_SHARED)
        self.pid, self.inbox, self.outbox = _fork(tasks, params, _serve_batches, self.arena)
        self.out: list[tuple[int, range]] = []
        self.status: int | None = None

    def give(self, batch: int, rng: range) -> None:
        self.out.append((batch, rng))
        with contextlib.suppress(OSError):  # a dead worker: its outbox says so
            self.inbox.send((batch, rng.start, rng.stop))

    def stop(self, *, kill: bool) -> int:
        if self.status is None:
            self.inbox.close()  # an idle worker exits at end of input
            self.status = _reap(self.pid, kill)
            self.outbox.close()
        return self.status
