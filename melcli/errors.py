"""Exception hierarchy and exit codes: the error half of melcli's interface."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit statuses of the ``melcli`` command (documented in the README)."""

    OK = 0
    """Every input was written."""
    FAILED = 1
    """The run failed and wrote nothing new (no audio found, output not writable, ...)."""
    USAGE = 2
    """Bad usage, detected before any work (Click's own code for usage errors)."""
    PARTIAL = 3
    """The output was written, but some inputs failed (they are listed in the manifest)."""
    HANGUP = 129
    """Hung up (SIGHUP: the terminal or ssh session closed); no partial file is left at OUTPUT."""
    INTERRUPTED = 130
    """Interrupted by Ctrl-C (SIGINT); no partial file is left at OUTPUT."""
    TERMINATED = 143
    """Terminated by SIGTERM; no partial file is left at OUTPUT."""


class MelcliError(Exception):
    """Base class of every error melcli raises on purpose."""


_UNSET: Any = object()


class ParameterError(MelcliError, ValueError):
    """An invalid parameter or combination of parameters (a usage error).

    Parameters
    ----------
    problem : str
        What is wrong; with ``value``, said after ``param=value``
        (``n_fft=0 must be a positive integer``), else the whole message.
    param : str, optional
        The parameter's name (``n_fft``), so a front end can name its own option.
    value : optional
        The rejected value.
    """

    def __init__(self, problem: str, *, param: str | None = None, value: Any = _UNSET) -> None:
        self.problem, self.param = problem, param
        self.value = None if value is _UNSET else value
        plain = value is _UNSET or param is None
        super().__init__(problem if plain else f"{param}={value!r} {problem}")


class InputError(MelcliError):
    """The inputs cannot be used as a whole (nothing found, colliding keys, ...)."""


class DecodeError(MelcliError):
    """One input file cannot be decoded or processed; the batch goes on without it.

    ``permanent``: the failure follows from the file's content, type or name and
    the parameters (cannot decode, truncated, too short, NaN, a FIFO, ...), so it
    is carried over by later runs until the file changes; otherwise (permission
    denied, a missing file, out of memory, an internal error) it is retried.
    """

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class OutputError(MelcliError):
    """The output cannot be written (exists, not writable, disk full, ...)."""


class EntryError(OutputError):
    """One entry cannot be stored (its name is too long for the output's file
    system, ...): a failure of that input, the batch goes on."""


class UsageOutputError(OutputError):
    """The output is in the way of the requested command (a usage error, exit 2)."""


class WorkerError(MelcliError):
    """A worker process died (a crash in a decoder, or the OOM killer): exit 1."""


class ClusterError(MelcliError):
    """The Dask cluster cannot be used (scheduler unreachable, workers without
    melcli or with another version): exit 1, before or during the run."""
