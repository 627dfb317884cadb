"""The per-file job (runs in a worker, never writes) and the run loop (parent only)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from melcli import audio, features
from melcli.discover import Source
from melcli.errors import DecodeError, ExitCode, MelcliError, OutputError
from melcli.params import FeatureParams


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EntryMeta:
        """Inverse of `to_dict`."""
        return cls(**{**d, "shape": tuple(d["shape"])})


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
class Result:
    """What the per-file job returns: features and metadata, or a failure."""

    source: Source
    meta: EntryMeta | None = None
    data: np.ndarray | None = None
    failure: Failure | None = None


def extract(source: Source, params: FeatureParams) -> Result:
    """Compute the features of one file: a pure function of (source, params).

    Never writes anything and never raises for a bad file: expected problems
    become ``Result.failure``. Runs in worker processes.

    Parameters
    ----------
    source : Source
    params : FeatureParams

    Returns
    -------
    Result
    """
    try:
        try:
            st = os.stat(source.path)
        except OSError as exc:
            raise DecodeError(audio._reason(source.path, exc)) from None
        y, sr, info = audio.load(source.path, sr=params.sr, mono=params.mono)
        data = features.compute(y, sr, params)
    except DecodeError as exc:
        return Result(source, failure=Failure(source.key, source.path, str(exc)))
    except MemoryError:
        return Result(source, failure=Failure(source.key, source.path, "out of memory"))
    except Exception as exc:  # a bug or an exotic file: record it, keep the batch going
        reason = f"internal error: {type(exc).__name__}: {exc}"
        return Result(source, failure=Failure(source.key, source.path, reason))
    meta = EntryMeta(
        key=source.key,
        source=source.path,
        sample_rate=sr,
        native_sample_rate=info.sample_rate,
        channels=info.channels,
        n_samples=int(y.shape[-1]),
        duration=y.shape[-1] / sr,
        shape=tuple(int(n) for n in data.shape),
        dtype=str(data.dtype),
        format=info.format,
        subtype=info.subtype,
        source_size=int(st.st_size),
        source_mtime=st.st_mtime,
    )
    return Result(source, meta=meta, data=data)


def default_jobs() -> int:
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def results(sources: Sequence[Source], params: FeatureParams, *, jobs: int) -> Iterator[Result]:
    """Run `extract` over sources and yield results as they finish.

    This is the one place that chooses the executor: in-process for one job,
    else a joblib pool (the active joblib backend, loky by default) whose
    results stream back unordered, with bounded pre-dispatch.
    """
    if jobs <= 1 or len(sources) <= 1:
        for src in sources:
            yield extract(src, params)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=min(jobs, len(sources)), return_as="generator_unordered")
    yield from parallel(delayed(extract)(src, params) for src in sources)


@dataclass
class RunReport:
    """What a run did; decides the exit code."""

    entries: list[EntryMeta] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def audio_seconds(self) -> float:
        """Total duration of the written entries."""
        return sum(e.duration for e in self.entries)

    @property
    def exit_code(self) -> ExitCode:
        """0 when everything was written, 3 when some inputs failed, 1 when none worked."""
        if not self.entries:
            return ExitCode.FAILED
        return ExitCode.PARTIAL if self.failures else ExitCode.OK


class FailFast(MelcliError):
    """Raised by `run` with ``fail_fast`` at the first failed input."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"stopped at the first failure (--fail-fast): {failure.key}: {failure.reason}")
        self.failure = failure


def run(
    sources: Sequence[Source],
    params: FeatureParams,
    writer: Any,
    *,
    jobs: int,
    fail_fast: bool = False,
    on_result: Callable[[Result], None] | None = None,
) -> RunReport:
    """Extract every source and hand each result to ``writer`` as it arrives.

    The writer is only touched here, in the parent process. On any exception
    (including KeyboardInterrupt) the writer is aborted, so nothing partial is
    left at the output path; the caller commits it.

    Parameters
    ----------
    sources : sequence of Source
    params : FeatureParams
    writer : melcli.writers.Writer
    jobs : int
        1 runs in-process, more uses a worker pool.
    fail_fast : bool
        Stop at the first failure (raises `FailFast`).
    on_result : callable, optional
        Called for every result (progress, logging).

    Returns
    -------
    RunReport
    """
    report = RunReport()
    start = time.perf_counter()
    try:
        for res in results(sources, params, jobs=jobs):
            if res.failure is not None:
                report.failures.append(res.failure)
                if on_result:
                    on_result(res)
                if fail_fast:
                    raise FailFast(res.failure)
                continue
            assert res.meta is not None and res.data is not None
            try:
                writer.add(res.meta, res.data)
            except OutputError:
                raise
            except (ValueError, TypeError) as exc:  # e.g. a key that clashes with a group
                report.failures.append(Failure(res.meta.key, res.meta.source, f"cannot store: {exc}"))
                if on_result:
                    on_result(Result(res.source, failure=report.failures[-1]))
                continue
            report.entries.append(res.meta)
            if on_result:
                on_result(res)
    except BaseException:
        writer.abort()
        raise
    report.entries.sort(key=lambda e: e.key)
    report.failures.sort(key=lambda f: f.key)
    report.seconds = time.perf_counter() - start
    return report

