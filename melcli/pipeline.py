"""The per-file job (runs in a worker, never writes) and the choice of executor."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from melcli import audio, features
from melcli.discover import Source
from melcli.errors import DecodeError
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
