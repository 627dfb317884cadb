"""Console-script entry point: stop signals are handled from the first instant.

Importing the command line (click, melcli's modules) takes a few tenths of a
second, more on a busy machine; a Ctrl-C, SIGTERM or SIGHUP in that time would
print an import traceback (SIGINT) or kill the process without a word. Until
an extraction has loaded its modules and installs the run's handlers (which
raise, to checkpoint and clean up), a stop signal just says so and exits with
its code: nothing has been written yet. Raising earlier would interrupt the
import of a C extension (numpy, h5py) half-way, and a later import of it then
fails with a traceback instead of the one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from melcli.errors import ExitCode  # an enum only: imports in a millisecond

_EARLY: dict[int, tuple[int, str]] = {
    signal.SIGINT: (ExitCode.INTERRUPTED, "interrupted"),
    signal.SIGTERM: (ExitCode.TERMINATED, "terminated"),
    signal.SIGHUP: (ExitCode.HANGUP, "hung up (SIGHUP)"),
}


def _early(signum: int, frame: Any) -> None:
    code, word = _EARLY[signum]
    with contextlib.suppress(OSError):
        os.write(2, f"melcli: error: {word}\n".encode())
    os._exit(int(code))


def install_early_handlers() -> None:
    """A stop signal prints one line and exits at once (nothing to clean up yet)."""
    for sig in _EARLY:
        signal.signal(sig, _early)


def main() -> None:
    """Install the early handlers, then run `melcli.cli.main`."""
    install_early_handlers()
    # Features are computed with one BLAS thread per worker (`pipeline.worker_init`);
    # a pool of OpenBLAS threads (numpy's wheels start one at import) would only spin,
    # in this process and in forked workers: 0.25 CPU-s of 1.45 in a run over 1000
    # one-second clips on 2 cores. Before numpy is imported; a user's setting stands.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from melcli.cli import main as cli_main

    cli_main()
