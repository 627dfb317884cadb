"""The Dask backend: the per-file work on the workers of a ``distributed`` cluster.

``melcli mel DIR -o feats.h5 --scheduler tcp://head:8786`` runs every batch of
tasks (`melcli.pipeline.make_batches`, the same tasks and frame ranges as a
local run) as one Dask task, `run_batch`, and writes the results here as they
come back (`distributed.as_completed`), with at most `IN_FLIGHT_PER_THREAD`
batches per worker thread out at once: the client's memory stays flat however
many files there are. Only this module imports distributed, and only when a
run uses the ``dask`` backend (`melcli.backends.EXECUTORS`).

What a cluster adds to a local run's failures:

* an input a worker cannot read (not on its file system) is a recorded failure
  with the worker's reason, as it would be locally;
* a worker that dies (kill -9, the OOM killer) has its tasks rescheduled by
  the scheduler on the others (results it held and the client had not yet
  fetched too: their futures go from finished to lost and back). A batch
  whose workers keep dying ends in Dask's ``KilledWorker`` (after
  ``distributed.scheduler.allowed-failures`` deaths). Dask counts a death
  against every task the worker held, so its tasks are run again one at a
  time, each alone among this run's tasks: the input that kills its workers
  again is a recorded failure, the others are written (`DaskExecutor.results`).
  At most 2 x (allowed-failures + 1) deaths per input;
* a scheduler that cannot be reached within `CONNECT_TIMEOUT`, or workers without
  melcli or with another version of it, stop the run (`melcli.errors.ClusterError`).

Workers are shared: a task changes no lasting process-wide state. BLAS is held
to one thread while melcli's tasks run in a worker process and put back after
the last (`_blas_one_thread`); malloc tuning and signal dispositions, which a
local worker sets (`melcli.pipeline.worker_init`), are left to the worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from melcli._version import __version__
from melcli.discover import printable
from melcli.errors import ClusterError, WorkerError
from melcli.params import FeatureParams
from melcli.pipeline import (
    BATCH_WORK,
    Executor,
    Failure,
    Result,
    Shards,
    Stored,
    Task,
    extract_batch,
    make_batches,
)

#: Seconds to reach the scheduler before the run fails (one line, exit 1).
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for the scheduler when the run ends (cancelling, closing).
CLOSE_TIMEOUT = 3.0
#: Work in one Dask task (`melcli.pipeline.task_cost` units): larger than a
#: local batch, since each task costs a round trip through the scheduler (3.6 ms
#: measured, docs/scaling.md), but still under a second of one core.
DASK_BATCH_WORK = 4 * BATCH_WORK
#: Batches out per worker thread: one computing, one queued behind it (the
#: scheduler's own queue keeps the rest), so workers never wait for the client
#: and the results waiting to be written stay few.
IN_FLIGHT_PER_THREAD = 2


# -- on the workers ----------------------------------------------------------------------
_blas_lock = threading.Lock()
_blas_users: list[Any] = []  # the limiter of the first task in, once per running task


@contextlib.contextmanager
def _blas_one_thread() -> Iterator[None]:
    """BLAS on one thread while any melcli task runs in this worker process.

    The first task in lowers it (the float32 filterbank sums depend on BLAS's
    thread count, so a cluster's output equals a local run's) and the last one
    out puts back what the worker had: nothing is left set for other clients'
    tasks (a worker with several threads shares the setting while both run).
    """
    from melcli.features import _blas_controller

    with _blas_lock:
        limiter = (
            _blas_users[0] if _blas_users else _blas_controller().limit(limits=1, user_api="blas")
        )
        _blas_users.append(limiter)
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users.pop()
            if not _blas_users:
                limiter.restore_original_limits()


def run_batch(
    batch: Sequence[Task], params: FeatureParams, version: str, shards: Shards | None = None
) -> list[Result]:
    """`melcli.pipeline.extract_batch`: the Dask task, on a worker.

    Parameters
    ----------
    batch : sequence of Task
    params : FeatureParams
    version : str
        The client's melcli version.
    shards : Shards, optional
        ``--shards``: write the batch's arrays into its shard directory (one new
        HDF5 shard file, `melcli.store.write_shard`, or an .npy file each,
        `melcli.store.write_npy_shards`) and return only where they are
        (`Result.stored`, ``data`` None): the client receives records, not arrays.

    Returns
    -------
    list of Result
        In the order of ``batch``.

    Raises
    ------
    ClusterError
        This worker's melcli is not ``version`` (its output could differ).
    """
    if version != __version__:
        raise ClusterError(
            f"a worker has melcli {__version__}, this client {version}: "
            "install the same version on every worker"
        )
    with _blas_one_thread():
        results = extract_batch(batch, params)
    if shards is None:
        return results
    return _to_shards(shards, results)


def _to_shards(shards: Shards, results: list[Result]) -> list[Result]:
    """The results with their arrays written into the shard directory of ``shards``."""
    from melcli.store import write_npy_shards, write_shard

    directory = Path(shards.directory)
    pieces = [(r.task.source.key, r.task.frame_start, r.data) for r in results
              if r.failure is None and r.data is not None]  # fmt: skip
    if not pieces:
        return results
    if shards.format == "npy":
        places = [(name, "") for name in write_npy_shards(directory, [p[2] for p in pieces])]
    else:
        name = write_shard(directory, pieces)
        places = [(name, f"e{n}") for n in range(len(pieces))]
    out, it = [], iter(places)
    for r in results:
        if r.failure is None and r.data is not None:
            shard, dataset = next(it)
            r = dataclasses.replace(
                r, data=None, stored=Stored(shard, dataset, int(r.data.shape[-1]))
            )
        out.append(r)
    return out


# -- on the client -----------------------------------------------------------------------
def connect(address: str | None, *, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A `distributed.Client` of the scheduler at ``address`` (or Dask's configured one).

    Parameters
    ----------
    address : str, optional
        ``tcp://host:port``; None: Dask's ``scheduler-address`` setting
        (``DASK_SCHEDULER_ADDRESS``).
    timeout : float
        Seconds to reach it.

    Returns
    -------
    distributed.Client
        Not made Dask's default client (a library caller keeps its own).

    Raises
    ------
    ClusterError
        No address, or the scheduler does not answer within ``timeout``.
    """
    import dask
    from distributed import Client

    address = address or dask.config.get("scheduler-address", None)
    if not address:
        raise ClusterError(
            "the dask backend needs a scheduler: --scheduler ADDRESS, or DASK_SCHEDULER_ADDRESS"
        )
    try:
        return Client(address, timeout=timeout, set_as_default=False, name="melcli")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {why}") from None


class DaskExecutor(Executor):
    """The workers of a Dask cluster (``--scheduler ADDRESS``, ``--backend dask``).

    `start` connects (`connect`) and batches the tasks by the cluster's size;
    `results` streams each batch's results back as it finishes; `close`
    cancels this run's tasks still out (an error or a stop signal) and
    disconnects. See the module's docstring for the failures a cluster adds.
    """

    client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix = f"melcli-{uuid.uuid4().hex[:12]}"
        self.pending: dict[Any, tuple[int, list[Task]]] = {}
        self.threads = 0

    def start(self) -> None:
        """Connect to the scheduler; batches sized by its worker threads.

        Raises
        ------
        ClusterError
            Unreachable scheduler, or no address.
        """
        self.client = connect(self.address)
        self.threads = max(1, sum(self.client.nthreads().values()))
        if self.n_jobs > 0:
            self.threads = min(self.threads, self.n_jobs)
        if self.costs:
            self.batches = make_batches(self.costs, self.threads, DASK_BATCH_WORK)

    def results(self) -> Iterator[Result]:
        """Each batch's results as it finishes, ``IN_FLIGHT_PER_THREAD`` per thread out.

        Raises
        ------
        ClusterError
            The workers cannot run melcli (not installed, another version).
        WorkerError
            The cluster dropped this run's tasks (the scheduler went away).
        """
        from distributed import KilledWorker, as_completed

        client, pending = self.client, self.pending
        done = as_completed(loop=client.loop)
        todo = iter(enumerate(self.batches))
        parts: dict[int, int] = {}  # batch -> its futures still out
        suspects: list[tuple[int, Task, str]] = []  # tasks of batches whose workers died
        alone: set[Any] = set()  # the future of the suspect running alone

        def submit(b: int, batch: list[Task], key: str) -> Any:
            future = client.submit(
                run_batch, batch, self.params, __version__, self.shards, key=key, pure=False
            )
            pending[future] = (b, batch)
            done.add(future)
            return future

        def top_up() -> None:
            if suspects:  # alone: none of this run's other tasks can die with it
                if not pending:
                    b, task, key = suspects.pop(0)
                    alone.add(submit(b, [task], key))
                return
            room = IN_FLIGHT_PER_THREAD * self.threads - len(pending)
            for b, rng in itertools.islice(todo, max(0, room)):
                parts[b] = 1
                submit(b, self.hand_out(b, rng), f"{self.prefix}-{b}")

        top_up()
        for future in done:
            if future.status in ("lost", "pending"):  # its worker died with the result: recomputed
                done.add(future)
                continue
            b, batch = pending.pop(future)
            out: list[Result] = []
            if future.status == "finished":
                out = future.result()
            elif future.status == "error":
                exc = future.exception()
                if not isinstance(exc, KilledWorker):
                    _raise_remote(exc)
                if future in alone:
                    out = [_killed(batch[0], exc)]
                else:  # Dask counts every task on a dead worker: find the one that kills it
                    parts[b] += len(batch)
                    suspects.extend((b, t, f"{future.key}-{i}") for i, t in enumerate(batch))
            else:
                raise WorkerError(
                    f"the Dask cluster dropped this run's tasks ({future.status}: "
                    "the scheduler restarted or the connection to it was lost)"
                )
            alone.discard(future)
            future.release()
            parts[b] -= 1
            if not parts[b]:
                del parts[b]
                self.log.done(b)
            top_up()
            yield from out

    def close(self, *, ok: bool) -> None:
        """Cancel this run's tasks still out (unless ``ok``) and disconnect.

        Never waits on the scheduler longer than about `CLOSE_TIMEOUT` seconds.
        """
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if self.pending and not ok:
                with contextlib.suppress(Exception):  # a message, sent without waiting
                    client.cancel(list(self.pending), reason="melcli-stopped",
                                  msg="the melcli run was stopped")  # fmt: skip
        finally:
            self.pending.clear()
            with contextlib.suppress(Exception):
                client.close(timeout=CLOSE_TIMEOUT)


def _killed(task: Task, exc: Any) -> Result:
    """The failure of an input whose every worker died running it (`KilledWorker`)."""
    tries = int(getattr(exc, "allowed_failures", 0)) + 1
    reason = (
        f"the Dask workers running it died {tries} times (a crash in a decoder, or out of memory)"
    )
    src = task.source
    return Result(task, failure=Failure(src.key, printable(src.path), reason, permanent=False))


def _raise_remote(exc: BaseException | None) -> None:
    """Stop the run for an error of the task itself (not of an input: `extract` records those)."""
    if isinstance(exc, ClusterError):
        raise ClusterError(str(exc))
    what = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    if isinstance(exc, ImportError):
        raise ClusterError(
            f"the Dask workers cannot run melcli ({what}): install it on every worker"
        )
    raise WorkerError(f"a Dask task failed: {' '.join(what.split())}")
