"""The per-file job (runs in a worker, never writes) and the choice of executor."""

from __future__ import annotations

import functools
import itertools
import os
import signal
import sys
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from melcli import audio, features
from melcli.discover import Source, os_reason, printable
from melcli.errors import DecodeError, WorkerError
from melcli.params import FeatureParams
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
class Result:
    """What the per-file job returns: features and metadata, or a failure.

    For a part of a long file, ``meta`` describes the whole entry (its full
    shape) and ``data`` holds frames ``task.frame_start`` onwards.
    """

    task: Task
    meta: EntryMeta | None = None
    data: np.ndarray | None = None
    failure: Failure | None = None

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
    _ignore_sigint_in_worker_process()
    keep_freed_memory()
    fault_point("extract")
    source = task.source
    try:
        try:
            st = os.stat(source.path)
        except OSError as exc:
            raise DecodeError(os_reason(source.path, exc)) from None
        if task.stream and task.info is not None and params.sr is not None:
            info, sr = task.info, params.sr
            blocks = audio.stream(
                source.path, sr=sr, mono=params.mono, quiet=task.format in ("", "MP3")
            )
            expected = audio.resampled_length(info.frames, info.sample_rate, sr)
            counted = _Counted(blocks)
            data = features.compute_stream(counted, sr, params, expected_samples=expected)
            n_samples = counted.n
            shape = tuple(int(n) for n in data.shape)
        elif task.parts == 1:
            y, sr, info = audio.load(
                source.path, sr=params.sr, mono=params.mono, quiet=task.format in ("", "MP3")
            )
            n_samples = int(y.shape[-1])
            data = features.compute(y, sr, params)
            shape = tuple(int(n) for n in data.shape)
        else:  # a slice of a long file at its native rate: only that slice is decoded
            info = task.info or audio.probe(source.path)
            sr, n_samples = info.sample_rate, info.frames
            a, b = features.segment_bounds(params, task.frame_start, task.frame_stop)
            y = audio.load_segment(source.path, max(a, 0), min(b, n_samples), mono=params.mono)
            data = features.compute_segment(
                y, sr, params, n_samples=n_samples,
                frame_start=task.frame_start, frame_stop=task.frame_stop,
            )  # fmt: skip
            shape = (*data.shape[:-1], params.n_frames(n_samples))
    except DecodeError as exc:
        return Result(task, failure=Failure(source.key, printable(source.path), str(exc)))
    except MemoryError:
        return Result(task, failure=Failure(source.key, printable(source.path), "out of memory"))
    except Exception as exc:  # a bug or an exotic file: record it, keep the batch going
        reason = f"internal error: {type(exc).__name__}: {exc}"
        return Result(task, failure=Failure(source.key, printable(source.path), reason))
    meta = EntryMeta(
        key=source.key,
        source=printable(source.path),
        sample_rate=sr,
        native_sample_rate=info.sample_rate,
        channels=info.channels,
        n_samples=n_samples,
        duration=n_samples / sr,
        shape=shape,
        dtype=str(data.dtype),
        format=info.format,
        subtype=info.subtype,
        source_size=int(st.st_size),
        source_mtime=st.st_mtime,
    )
    return Result(task, meta=meta, data=data)


#: Files longer than this (samples per channel) are split into parts of about
#: `PART_SAMPLES`, computed as separate tasks: memory stays flat on hour-long
#: files and both cores work on one long file.
SPLIT_SAMPLES = 1 << 22
PART_SAMPLES = 1 << 20
#: Containers where libsndfile seeks to an exact sample (compressed lossy
#: formats may not): only these are split.
SEEKABLE_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "AIFF", "CAF", "W64", "RF64", "AU", "NIST"})


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
    """One task per file, or several frame ranges for a long file.

    A file is split when it is long, seekable sample-exactly, needs no
    resampling and no ``top_db`` (which needs the whole entry's maximum). A
    long file that needs resampling is one task that streams (`Task.stream`):
    the resampler's state carries from block to block, so its parts could not
    be computed apart and give the same samples.
    """
    n = info.frames
    resampled = params.sr is not None and params.sr != info.sample_rate
    if resampled and params.sr is not None:
        if max(n, audio.resampled_length(n, info.sample_rate, params.sr)) > SPLIT_SAMPLES:
            return [Task(source, format=info.format, info=info, stream=True)]
        return [Task(source, format=info.format)]
    if n <= SPLIT_SAMPLES or info.format not in SEEKABLE_FORMATS or params.top_db is not None:
        return [Task(source, format=info.format)]
    total = params.n_frames(n)
    # every part spans more than n_fft samples, so the centre padding at either
    # end of the signal can be rebuilt from the part's own samples
    least = params.n_fft // params.hop_length + 2
    step = max(least, PART_SAMPLES // params.hop_length)
    starts = list(range(0, total, step))
    if len(starts) > 1 and total - starts[-1] < least:
        starts.pop()  # the last part takes the short remainder
    stops = [*starts[1:], total]
    return [
        Task(source, i, len(starts), start, stop, info.format, info)
        for i, (start, stop) in enumerate(zip(starts, stops, strict=True))
    ]


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


_PARENT_ENV = "MELCLI_PARENT_PID"


@functools.cache
def _ignore_sigint_in_worker_process() -> None:
    """Worker processes leave Ctrl-C to the parent, which cancels them quietly.

    Without this a loky worker hit by the terminal's SIGINT prints its own
    KeyboardInterrupt traceback.
    """
    parent = os.environ.get(_PARENT_ENV)
    if parent and parent != str(os.getpid()):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_jobs() -> int:
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Executors for -j > 1 (``--backend``). ``threading`` (joblib): decoding
#: (libsndfile), the FFT, the matmul and most array work release the GIL, there
#: is no worker start-up and results need no pickling. ``fork``: worker processes
#: forked from this one (ready in milliseconds, nothing re-imported), for many
#: tiny files, whose per-file Python work holds the GIL. ``loky`` (joblib):
#: fresh worker processes. ``auto`` picks threading or fork (`resolve_backend`).
BACKENDS = ("auto", "threading", "fork", "loky")

#: With ``auto``, tasks shorter than this on average (samples, all channels) go to
#: forked processes. Measured on 2 cores (docs/benchmarks.md): 1000 x 1 s clips,
#: mel: compute 0.50 s in processes vs 0.75 s in threads; 200 x 10 s speech
#: files: whole run 0.96 s in processes vs 0.64 s in threads.
FORK_BELOW_SAMPLES = 1 << 16


def resolve_backend(backend: str, mean_samples: float) -> str:
    """The executor ``backend`` means for tasks of ``mean_samples`` samples on average."""
    if backend != "auto":
        return backend
    if mean_samples < FORK_BELOW_SAMPLES and sys.platform.startswith("linux"):
        return "fork"
    return "threading"


def results(
    tasks: Sequence[Task], params: FeatureParams, *, jobs: int, backend: str = "threading"
) -> Generator[Result, None, None]:
    """Run `extract` over tasks and yield results as they finish.

    This is the one place that chooses the executor: in-process for one job,
    else a pool of ``backend`` (see `BACKENDS`; resolve ``auto`` first) whose
    results stream back unordered, with bounded pre-dispatch (memory stays flat
    however many files there are).

    Raises
    ------
    WorkerError
        A worker process died (``fork``).
    """
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield extract(task, params)
        return
    n_jobs = min(jobs, len(tasks))
    # Fixed batches: joblib's "auto" sizing left 1 s clips at ~0.1 ms of dispatch
    # per task (measured: 1000 clips, -j2 1.12 s unbatched, 0.99 s in batches of
    # 16-64); 16 batches per worker still balance the load.
    batch = max(1, min(64, len(tasks) // (n_jobs * 16)))
    if backend == "fork":
        yield from _forked(tasks, params, n_jobs, batch)
        return
    from joblib import Parallel, delayed

    os.environ[_PARENT_ENV] = str(os.getpid())  # inherited by worker processes
    parallel = Parallel(
        n_jobs=n_jobs, backend=backend, return_as="generator_unordered", batch_size=batch
    )
    yield from parallel(delayed(extract)(task, params) for task in tasks)


def _extract_batch(batch: Sequence[Task], params: FeatureParams) -> list[Result]:
    return [extract(task, params) for task in batch]


def _forked_worker_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent's SIGTERM handler raises; a worker told to stop just stops.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:  # die with the parent, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _forked(
    tasks: Sequence[Task], params: FeatureParams, n_jobs: int, batch: int
) -> Iterator[Result]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ours = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        n_jobs,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_forked_worker_init,
        initargs=(os.getpid(),),
    )
    batches = (tasks[i : i + batch] for i in range(0, len(tasks), batch))
    pending: set[Future[list[Result]]] = set()
    try:
        # At most two batches per worker in flight: finished results wait in the
        # parent's memory until the writer takes them, so this bounds memory.
        for chunk in itertools.islice(batches, 2 * n_jobs):
            pending.add(pool.submit(_extract_batch, chunk, params))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                for chunk in itertools.islice(batches, 1):
                    pending.add(pool.submit(_extract_batch, chunk, params))
                yield from future.result()
    except BrokenProcessPool:
        raise WorkerError(
            "a worker process died unexpectedly (killed, out of memory, or a crash while decoding)"
        ) from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in set(multiprocessing.active_children()) - ours:
            child.terminate()  # workers stop now, not after their current batch
