"""The executors by name: what ``--backend`` accepts, and where each executor is.

`EXECUTORS` is the one list of executors: a backend name, and the import path
of its class (a `melcli.pipeline.Executor`). The classes are named by path and
imported only when a run uses one (`executor_class`), because they import
numpy (and joblib; Dask's imports distributed) while ``melcli --help`` and
``import melcli.cli`` take the names from here and must stay light (tested).
This module imports nothing from melcli. A new backend is its class and one
entry here; ``--backend`` (`BACKENDS`), `melcli.pipeline.WorkerPool` and the
per-backend tests (tests/test_executor.py) take it from this mapping.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from melcli.pipeline import Executor

#: What ``-j 1`` (or a single task) runs: the work in this process. Not a
#: ``--backend`` choice.
SERIAL = "serial"

#: Backend name -> ``"module:Class"`` of its executor. ``threading``: decoding
#: (libsndfile), the FFT, the matmul and most array work release the GIL, there
#: is no worker start-up and results need no pickling. ``fork``: worker processes
#: forked from this one (ready in milliseconds, nothing re-imported), for many
#: tiny files, whose per-file Python work holds the GIL. ``loky`` (joblib's):
#: fresh worker processes. ``dask``: the workers of a Dask cluster
#: (``--scheduler ADDRESS``; `melcli.cluster`, which alone imports distributed).
EXECUTORS: dict[str, str] = {
    SERIAL: "melcli.pipeline:SerialExecutor",
    "threading": "melcli.pipeline:ThreadingExecutor",
    "fork": "melcli.pipeline:ForkExecutor",
    "loky": "melcli.pipeline:LokyExecutor",
    "dask": "melcli.cluster:DaskExecutor",
}

#: Backends whose workers are elsewhere (a cluster, reached at an address):
#: ``-j`` caps the tasks they compute at once instead of starting workers, and
#: one job does not mean `SERIAL`. ``auto`` never picks one.
REMOTE: frozenset[str] = frozenset({"dask"})

#: What a remote backend needs installed, for the one line that says so.
REMOTE_EXTRAS: dict[str, tuple[str, str]] = {"dask": ("distributed", "melcli[dask]")}

#: The ``--backend`` choices for -j > 1: ``auto`` first, which picks threading or
#: fork by the tasks' length (`melcli.pipeline.resolve_backend`), then every
#: executor but `SERIAL`.
BACKENDS: tuple[str, ...] = ("auto", *(name for name in EXECUTORS if name != SERIAL))


def executor_class(name: str) -> type[Executor]:
    """The executor class of backend ``name``, imported now.

    Parameters
    ----------
    name : str
        A key of `EXECUTORS` (``auto`` already resolved).

    Returns
    -------
    type[Executor]

    Raises
    ------
    ValueError
        ``name`` is not in `EXECUTORS`.
    """
    try:
        module, _, attr = EXECUTORS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown backend {name!r}: one of {', '.join(EXECUTORS)}") from None
    cls: type[Executor] = getattr(importlib.import_module(module), attr)
    return cls
