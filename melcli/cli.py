"""Click commands: options -> parameters -> pipeline -> exit code. No maths here.

Heavy modules (numpy, librosa, joblib, h5py) are imported inside the commands
that need them, so ``melcli --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from melcli import presets
from melcli._version import __version__
from melcli.backends import BACKENDS, REMOTE, REMOTE_EXTRAS  # numpy-free, for --help
from melcli.discover import AUDIO_EXTENSIONS
from melcli.errors import (
    ClusterError,
    ExitCode,
    InputError,
    MelcliError,
    OutputError,
    ParameterError,
    UsageOutputError,
    WorkerError,
)
from melcli.kinds import KINDS, kind_class, kind_classes
from melcli.params import COMPRESSIONS, STAGES, Declared, FeatureParams, declared

if TYPE_CHECKING:  # numpy-heavy modules: imported by the commands that run
    from melcli.discover import Source, UnreadableDir
    from melcli.runner import RunOptions, RunReport

DEFAULT_EXTS = ",".join(AUDIO_EXTENSIONS)


def _choice(values: Any) -> click.Choice:
    """A choice matched in any case (``--scale dB``); the canonical spelling is passed on."""
    return click.Choice(values, case_sensitive=False)


class Terminated(BaseException):
    """Raised in the parent when SIGTERM arrives (a BaseException, like
    KeyboardInterrupt, so no ``except Exception`` on the way swallows it)."""


class HungUp(BaseException):
    """Raised in the parent when SIGHUP arrives (the terminal or ssh session closed)."""


class MelcliGroup(click.Group):
    """Remembers the argument list, so the manifest can record the command."""

    invoked_args: list[str] = []

    def main(self, args: Any = None, *a: Any, **kw: Any) -> Any:  # noqa: D102
        self.invoked_args = list(sys.argv[1:] if args is None else args)
        return super().main(args, *a, **kw)


def _command_line() -> str:
    root = click.get_current_context().find_root().command
    return shlex.join(["melcli", *getattr(root, "invoked_args", [])])


def _fail(code: ExitCode, message: str) -> NoReturn:
    _say(f"melcli: error: {message}")
    sys.exit(int(code))


@contextlib.contextmanager
def _best_effort(fd: int = 2) -> Iterator[None]:
    """Report without failing: a closed or broken stderr (or stdout) must not stop a run.

    After a failed write (a pipe whose reader is gone) the descriptor is pointed
    at /dev/null, so later messages, the C libraries' and the interpreter's own
    flush at exit are quietly dropped too.
    """
    from melcli.audio import STDERR_LOCK  # decoding threads may redirect fd 2

    try:
        yield
    except (OSError, ValueError):
        with STDERR_LOCK:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)


def _say(text: str) -> None:
    """One line on stderr, best effort (see `_best_effort`)."""
    with _best_effort():
        click.echo(text, err=True)


def _open_standard_fds() -> None:
    """Put /dev/null on a closed fd 0, 1 or 2 (``2>&-``).

    Otherwise the next file melcli opens (the output, a chunk) gets that number,
    and whatever a C library prints to "stderr" would land in it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd
            if opened != fd:
                os.close(opened)


def _usage(message: str) -> NoReturn:
    raise click.UsageError(message)


@click.group(cls=MelcliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="melcli")
def cli() -> None:
    """Batch STFT / mel / MFCC / Kaldi fbank extraction, equal to the references.

    Walks directories of audio (or reads a file list on stdin), computes the
    features in parallel and writes one HDF5 file or a tree of .npy files plus
    a JSON manifest of every parameter and every entry's shape.

    \b
    Exit status: 0 all inputs written; 3 written but some inputs failed;
    1 nothing written (no audio, output not writable, ...); 2 bad usage;
    129 hung up (SIGHUP); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
    """


#: --help sections of each kind's command, in order after the kind's own options:
#: every option is in exactly one (tested), positional arguments in "Input". The
#: feature parameters' sections come from their declarations (`Setting.stage`).
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "Input": ("inputs", "null", "exts", "root", "like", "preset"),
    **{stage: () for stage in STAGES if stage != "Input"},
    "Output": ("output", "fmt", "compression", "manifest", "overwrite", "prune", "checksum"),
    "Run": (
        "jobs",
        "backend",
        "scheduler",
        "shards",
        "dry_run",
        "fail_fast",
        "progress",
        "quiet",
        "verbose",
        "help",
    ),  # fmt: skip
}
for _d in declared(FeatureParams):
    OPTION_GROUPS[str(_d.setting.stage)] += (_d.name,)


def offered(name: str) -> list[Declared]:
    """The parameters the command of kind ``name`` offers: those of each of its
    classes (`kind_classes`: its front ends), each once, the default's first."""
    seen: dict[str, Declared] = {}
    for cls in kind_classes(name):
        for d in declared(cls):
            seen.setdefault(d.name, d)
    return list(seen.values())


def _own_sections(name: str) -> list[tuple[str, tuple[str, ...]]]:
    out: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for cls in kind_classes(name):
        own = tuple(d.name for d in declared(cls) if d.setting.stage is None and d.name not in seen)
        seen.update(d.name for d in declared(cls))
        if own:
            out.append((cls.TITLE, own))
    return out


#: Each kind's own options, shown first: kind -> [(section title, option names)], one
#: section per front end (the options only it has).
KIND_GROUPS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    name: _own_sections(name) for name in KINDS
}
_INPUTS_HELP = (
    "Directories (walked recursively, sorted, hidden entries skipped), audio files, "
    "and '-' (paths on stdin, one per line; -0 for NUL-separated)."
)


class ExtractCommand(click.Command):
    """``mel`` / ``stft``: options in sections by stage (`OPTION_GROUPS`), the
    kind's own first, and unknown options answered with the ones they begin
    (``--hop`` -> ``--hop-length``)."""

    def __init__(self, *args: Any, kind: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def sections(self, ctx: click.Context) -> list[tuple[str, list[click.Parameter]]]:
        """(title, parameters) of each --help section, in order; ungrouped ones last."""
        by_name = {p.name: p for p in self.get_params(ctx)}
        help_option = self.get_help_option(ctx)
        if help_option is not None:  # click names it after a private constant
            by_name["help"] = by_name.pop(str(help_option.name), help_option)
        out = [(title, [by_name[n] for n in own if n in by_name])
               for title, own in KIND_GROUPS[self.kind]]  # fmt: skip
        out += [(t, [by_name[n] for n in names if n in by_name])
                for t, names in OPTION_GROUPS.items()]  # fmt: skip
        grouped = {p.name for _, params in out for p in params}
        rest = [p for p in by_name.values() if p.name not in grouped]
        return out + ([("Other options", rest)] if rest else [])

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, params in self.sections(ctx):
            rows = []
            for p in params:
                if isinstance(p, click.Argument):
                    rows.append((f"{p.make_metavar(ctx)}", _INPUTS_HELP))
                else:
                    record = p.get_help_record(ctx)
                    if record is not None:
                        rows.append(record)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            names = sorted({o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts)
                            if o.startswith("--")})  # fmt: skip
            found = [n for n in names if n.startswith(exc.option_name)]
            if found:  # click keeps only difflib's close matches: --hop is not one
                setattr(exc, "possibilities", found)  # noqa: B010
            raise


#: The options of every extract command that are not feature parameters.
RUN_OPTIONS: list[Callable[..., Any]] = [
    click.argument("inputs", nargs=-1, required=True),
    click.option("-o", "--output", required=True, type=click.Path(dir_okay=True),
                 help="*.h5 / *.hdf5 / *.hdf: one HDF5 file (+ <stem>.json manifest); "
                      "anything else: a directory of .npy files + manifest.json "
                      "(a warning if it has another suffix)."),
    click.option("--format", "fmt", type=_choice(["h5", "npy", "kaldi"]),
                 help="Output format; overrides the guess from --output's suffix. kaldi: "
                      "a directory with feats.ark + feats.scp (entries as Kaldi's "
                      "(frames, rows) matrices, key order) + manifest.json; mono float32/64 "
                      "only, keys without whitespace."),
    click.option("-0", "--null", is_flag=True,
                 help="The file list on stdin ('-') is NUL-separated (find -print0)."),
    click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                 help="Parallel workers; 1 runs in-process. With --scheduler: at most "
                      "this many tasks of the run computing at once.  [default: usable "
                      "CPUs; with --scheduler, every worker thread of the cluster]"),
    click.option("--backend", type=_choice(BACKENDS), default="auto",
                 show_default=True,
                 help="Executor for -j > 1: threading (decoding and FFTs release the "
                      "GIL; no pickling), fork (forked worker processes: fastest for "
                      "many files of a few seconds or less), loky (joblib's fresh "
                      "worker processes), dask (the workers of a Dask cluster: "
                      "--scheduler, or DASK_SCHEDULER_ADDRESS); auto picks fork on Linux "
                      "when the files average under 65536 samples (all channels), "
                      "else threading."),
    click.option("--scheduler", metavar="ADDRESS", default=None,
                 help="Run the work on the Dask cluster of this scheduler "
                      "(tcp://host:8786; implies --backend dask). Its workers must see the "
                      "inputs at the same paths and have the same melcli installed; this "
                      "process writes the output. Needs pip install 'melcli[dask]'."),
    click.option("--shards/--no-shards", default=None,
                 help="With --scheduler: the workers write the entries themselves and this "
                      "process only links them into the output, which reads as usual "
                      "(HDF5: shard files in OUTPUT.shards/ beside it; npy: the same tree of "
                      "files), so it no longer receives every byte (docs/scaling.md); not "
                      "with --format kaldi.  [default: on with --scheduler, but for kaldi]"),
    click.option("--ext", "exts", default=DEFAULT_EXTS, show_default=True,
                 help="Suffixes counted as audio in a directory walk "
                      "(files named explicitly are always tried)."),
    click.option("--compression", type=_choice(COMPRESSIONS), default="none",
                 show_default=True,
                 help="HDF5 output: store entries compressed (h5py's filters), in chunks "
                      "of about 64 KB along time so reading a span of frames stays cheap. "
                      "gzip: smallest, slowest; lzf: fast, less compression. "
                      "An npy output is never compressed."),
    click.option("--like", type=click.Path(exists=True), default=None,
                 help="Take every feature parameter (--sr, --n-fft, ..., --n-mels) from "
                      "this melcli output (an HDF5 file, npy directory or manifest); "
                      "options given here override it, each said on stderr."),
    click.option("--root", type=click.Path(exists=True, file_okay=False), default=None,
                 help="Key every input by its path relative to this directory (files, "
                      "directories and lists on stdin alike; an input outside it is an "
                      "error). Recorded in the manifest.  [default: keys relative to each "
                      "directory input; a file's name]"),
    click.option("--manifest", "manifest", type=click.Path(dir_okay=False), default=None,
                 help="HDF5 output: write its JSON manifest here instead of <stem>.json "
                      "(recorded in the output; later runs keep it there)."),
    click.option("--overwrite", is_flag=True,
                 help="Rebuild the output from scratch even if it exists "
                      "(needed when parameters differ)."),
    click.option("--prune", is_flag=True,
                 help="With a list on stdin ('-'): let a rerun remove more than half of "
                      "the output's entries (inputs no longer listed); refused otherwise."),
    click.option("--checksum", is_flag=True,
                 help="Detect changed inputs by content hash (sha256), "
                      "not size + mtime."),
    click.option("--dry-run", is_flag=True,
                 help="Print what would be added / updated / removed and the estimated "
                      "output size; write nothing."),
    click.option("--fail-fast", is_flag=True,
                 help="Stop at the first file that fails (exit 1)."),
    click.option("--progress/--no-progress", default=None,
                 help="Progress bar on stderr.  [default: on when stderr is a terminal]"),
    click.option("-q", "--quiet", is_flag=True,
                 help="Hide the progress bar and the summary lines; skipped files, errors "
                      "and warnings about the data (empty mel bands, mixed sample rates, "
                      "inputs shorter than n_fft) are still printed."),
    click.option("-v", "--verbose", is_flag=True, help="One line per written entry on stderr."),
]  # fmt: skip


def _default_text(d: Declared) -> str | None:
    if d.setting.default_text is not None:
        return d.setting.default_text
    flag = d.setting.flag
    if d.type == "bool":
        if flag is None or "/" not in flag:
            return None
        on, off = flag.split("/")
        return (on if d.default else off).lstrip("-")
    return None if d.default is None else str(d.default)


def feature_option(d: Declared, *, prefix: str = "") -> Callable[..., Any]:
    """The Click option of a declared parameter. Its default is None ("not given"):
    the parameter's own default applies later, so an explicit option can be told
    from a default (``--like``, presets)."""
    how = d.setting
    kw: dict[str, Any] = {"default": None}
    if d.type == "bool":
        if "/" not in (how.flag or ""):
            kw["is_flag"] = True
    elif how.choices:
        kw["type"] = _choice(how.choices)
    else:
        kw["type"] = {"int": int, "float": float, "str": str}[d.type]
    text = _default_text(d)
    kw["help"] = prefix + how.help + (f"  [default: {text}]" if text is not None else "")
    return click.option(how.flag or d.option, d.name, **kw)


def given_params(name: str, kw: dict[str, Any]) -> dict[str, Any]:
    """The feature parameters of kind ``name`` given on the command line (not None)."""
    return {d.name: kw[d.name] for d in offered(name) if kw.get(d.name) is not None}


def front_end(name: str, given: dict[str, Any], *, flag: str = "") -> type[FeatureParams]:
    """The class of kind ``name`` that ``given`` parameters select (``frontend``);
    a usage error for a parameter it does not have."""
    try:
        cls = kind_class(name, given.get("frontend"))
    except ParameterError as exc:
        _usage(_parameter_message(exc))
    mine = {d.name for d in declared(cls)}
    for param in sorted(set(given) - mine):
        option = "--" + param.replace("_", "-")
        where = f"{flag}{name} --frontend {getattr(cls, 'frontend', '')}"
        others = [getattr(c, "frontend", "") for c in kind_classes(name)
                  if param in {d.name for d in declared(c)}]  # fmt: skip
        hint = f" (it is a --frontend {others[0]} option)" if others else ""
        _usage(f"{option} does not apply to {where}{hint}")
    return cls


_DOC = """{summary}

\b
INPUTS: directories (walked recursively, sorted, hidden entries skipped),
audio files, and '-' (paths on stdin, one per line; -0 for NUL-separated).

\b
Examples:
{examples}
"""


def _extract_command(cls: type[FeatureParams]) -> click.Command:
    """The command of one feature kind: its parameters' options and the run options."""

    def command(**kw: Any) -> None:
        _extract(cls, kw)

    options = [*RUN_OPTIONS, *map(feature_option, offered(cls.NAME))]
    if presets.names(cls.NAME):
        options.append(click.option(
            "--preset", type=_choice(presets.names(cls.NAME)), default=None,
            help="Start from the parameters that reproduce another front end (melcli presets "
                 "lists each preset, every value it sets and the call it equals); options "
                 "given here override it, each said on stderr. Recorded in the manifest.",
        ))  # fmt: skip
    for option in reversed(options):
        command = option(command)
    examples = "\n".join(f"  {e}" for e in cls.EXAMPLES)
    doc = _DOC.format(summary=cls.SUMMARY or cls.NAME, examples=examples)
    return cli.command(cls.NAME, cls=ExtractCommand, kind=cls.NAME, help=doc,
                       short_help=cls.SUMMARY or None)(command)  # fmt: skip


for _cls in KINDS.values():
    _extract_command(_cls)


def build_params(cls: type[FeatureParams], given: dict[str, Any]) -> FeatureParams:
    """``cls(**given)``, a bad value a usage error naming its option."""
    try:
        return cls(**given)
    except ParameterError as exc:
        _usage(_parameter_message(exc))


def _parameter_message(exc: ParameterError) -> str:
    if exc.param is None:
        return str(exc)
    return f"Invalid value for '--{exc.param.replace('_', '-')}': {exc}"


#: Signals received during a run. Python can run a handler inside a weakref
#: callback or a ``__del__``, where the exception it raises is printed and
#: dropped ("Exception ignored in ..."), so each signal is also remembered and
#: raised again when the next file finishes (`_CliReporter.advance`).
_STOPS: list[type[BaseException]] = []


#: The stop signals of a run and what each raises in the parent.
_STOP_SIGNALS: dict[int, type[BaseException]] = {
    signal.SIGINT: KeyboardInterrupt,
    signal.SIGTERM: Terminated,
    signal.SIGHUP: HungUp,
}


#: True once a stop exception has been raised and not dropped: further signals
#: (a second Ctrl-C, a group SIGTERM after a SIGHUP) are noted but not raised,
#: so they cannot cut short the checkpoint and clean-up of the first.
_RAISED: list[bool] = [False]


def _on_signal(signum: int, frame: Any) -> None:
    stop = _STOP_SIGNALS[signum]
    _STOPS.append(stop)
    if not _RAISED[0]:
        _RAISED[0] = True
        raise stop()


def _raise_dropped_stop() -> None:
    if _STOPS:  # a stop signal whose exception Python dropped (see _STOPS)
        raise _STOPS[0]()


def _unraisable(info: Any) -> None:
    if isinstance(info.exc_value, tuple(_STOP_SIGNALS.values())):
        _RAISED[0] = False  # dropped: raised again at the next file, or by the next signal
        return
    sys.__unraisablehook__(info)


def _preload(fmt: str, params: FeatureParams, opts: Any, progress: bool) -> None:
    """Import every module the run may need, before its stop handlers raise.

    A stop signal's exception raised inside the import of a C extension leaves
    it half-initialised, and importing it again later fails ("cannot load module
    more than once per process"); until now a signal exits at once (`melcli._entry`).
    """
    import concurrent.futures  # noqa: F401
    import ctypes.util  # noqa: F401
    import multiprocessing.connection  # noqa: F401

    import h5py  # noqa: F401  (an old output is read with it whatever the format)
    import numpy  # noqa: F401
    import threadpoolctl  # noqa: F401

    from melcli import audio, features, manifest, pipeline, plan, store, workdir  # noqa: F401

    if fmt == "h5":
        from h5py import h5a, h5d, h5f, h5o, h5p, h5s, h5t  # noqa: F401
    if params.sr is not None:
        import soxr  # noqa: F401
    if opts.backend == "loky":
        from joblib.externals.loky import process_executor  # noqa: F401
        from joblib.externals.loky.backend import resource_tracker  # noqa: F401
    if opts.backend == "dask":
        _preload_dask()
    if progress:  # 13 ms of imports (its version lookup), for the bar only
        import tqdm  # noqa: F401


def _preload_dask() -> None:
    """The cluster backend's imports, and a quiet client.

    distributed logs at INFO to stderr by default; in this process (the
    command line only, never a library caller's) only its errors are shown:
    melcli says what happened itself, in one line.
    """
    import logging

    import distributed  # noqa: F401
    import distributed.comm.tcp  # noqa: F401

    from melcli import cluster  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.ERROR)


def _install_stop_handlers() -> dict[int, Any]:
    """Handle SIGINT, SIGTERM and SIGHUP by raising (see `_STOP_SIGNALS`); return the old ones."""
    _STOPS.clear()
    _RAISED[0] = False
    return {sig: signal.signal(sig, _on_signal) for sig in _STOP_SIGNALS}


class _CliReporter:
    """Prints a run's events on stderr: skipped files, warnings, a tqdm bar."""

    def __init__(self, *, quiet: bool, verbose: bool, progress: bool | None) -> None:
        from melcli.audio import STDERR_LOCK  # decoding threads may redirect fd 2

        self.lock = STDERR_LOCK
        self.quiet, self.verbose = quiet, verbose
        stderr = sys.stderr  # None when the process started with fd 2 closed
        self.progress = (
            stderr is not None and not quiet and (_isatty(stderr) if progress is None else progress)
        )
        self.bar: Any = None
        self.started = time.perf_counter()
        self.done_seconds = 0.0
        self.output_replaced = False

    def committed(self) -> None:
        self.output_replaced = True

    def _line(self, text: str) -> None:
        with self.lock, _best_effort():
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                click.echo(text, err=True)

    def warning(self, message: str) -> None:
        if not self.quiet:
            self._line(f"melcli: warning: {message}")

    def problem(self, message: str) -> None:
        """A warning about the output itself: shown even with -q (cron mails it)."""
        self._line(f"melcli: warning: {message}")

    def error(self, message: str) -> None:
        self._line(f"melcli: error: {message}")

    def skipped(self, failure: Any) -> None:
        self._line(f"melcli: skipped {_show(failure.key)}: {failure.reason}")

    def start(self, files: int) -> None:
        self.started = time.perf_counter()
        if self.progress and files:
            from tqdm import tqdm

            with _best_effort():
                self.bar = tqdm(total=files, unit="file", file=sys.stderr, dynamic_ncols=True)

    def advance(self, result: Any) -> None:
        _raise_dropped_stop()
        if result.failure is not None:
            self.skipped(result.failure)
        elif result.meta is not None:
            parts = result.task.parts
            self.done_seconds += result.meta.duration / parts
            if self.verbose:
                part = f" part {result.task.part + 1}/{parts}" if parts > 1 else ""
                self._line(
                    f"melcli: done {_show(result.meta.key)}{part} {tuple(result.meta.shape)}"
                )
        if self.bar is not None:
            self._tick()

    def _tick(self) -> None:
        with self.lock, _best_effort():
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(
                f"{self.done_seconds / 3600 / elapsed:.3g} audio h/s", refresh=False
            )
            self.bar.update(1)

    def finish(self) -> None:
        self.close()
        _raise_dropped_stop()  # not after the commit: stopping then would be too late

    def close(self) -> None:
        """Close the progress bar."""
        if self.bar is not None:
            with self.lock, _best_effort():
                self.bar.close()
            self.bar = None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (OSError, ValueError):
        return False


def _show(key: str) -> str:
    """A key on one line: control characters (a newline in a name) escaped."""
    return key if key.isprintable() else key.encode("unicode_escape").decode("ascii")


def _apply_like(
    cls: type[FeatureParams], like: str, given: dict[str, Any], quiet: bool
) -> dict[str, Any]:
    """``--like OUTPUT``: its feature parameters, except those ``given`` on the command line."""
    from melcli import store

    try:
        path, fmt = store.locate(Path(like))
        recorded = store.read_manifest(path, fmt)["params"]
    except (OutputError, OSError) as exc:
        _usage(f"--like {like}: {exc}")
    if recorded.get("kind") != cls.NAME:
        other = recorded.get("kind")
        _usage(f"--like {like} is a melcli {other} output, not {cls.NAME}: use `melcli {other}`, "
               f"or --like an output of `melcli {cls.NAME}`")  # fmt: skip
    try:
        cls = kind_class(cls.NAME, recorded.get("frontend"))
    except ParameterError as exc:
        _usage(f"--like {like}: {_parameter_message(exc)}")
    merged = {d.name: recorded[d.name] for d in declared(cls) if d.name in recorded}
    for name, value in given.items():
        if name in merged and merged[name] != value and not quiet:
            _say(f"melcli: --like {like}, overriding {name} {merged[name]} -> {value}")
        merged[name] = value
    return merged


def _apply_preset(
    cls: type[FeatureParams], name: str, given: dict[str, Any], quiet: bool
) -> dict[str, Any]:
    """``--preset NAME``: its values, except those ``given`` on the command line."""
    merged = dict(presets.get(cls.NAME, name.lower()).values)
    for key, value in given.items():
        if key in merged and merged[key] != value and not quiet:
            _say(f"melcli: --preset {name}, overriding {key} {merged[key]} -> {value}")
        merged[key] = value
    return merged


def _extract(cls: type[FeatureParams], kw: dict[str, Any]) -> None:
    """A kind's command: parameters, output, inputs -> `runner.execute` -> exit code."""
    given = given_params(cls.NAME, kw)
    if kw["like"] and kw.get("preset"):
        _usage("--like and --preset both set every parameter: give one of them")
    if kw["like"]:
        given = _apply_like(cls, kw["like"], given, kw["quiet"])
    if kw.get("preset"):
        given = _apply_preset(cls, kw["preset"], given, kw["quiet"])
    params = build_params(front_end(cls.NAME, given), given)
    reporter = _CliReporter(quiet=kw["quiet"], verbose=kw["verbose"], progress=kw["progress"])
    opts = _run_options_of(kw, reporter)
    from melcli import store

    problem = store.format_problem(opts.format, params)
    if problem:
        _usage(problem)
    sources, unreadable = _find_inputs(kw, reporter)
    problem = store.key_problem(opts.format, (s.key for s in sources))
    if problem:
        _usage(problem)
    started = time.perf_counter()
    report = _run(sources, params, opts, reporter, unreadable)
    _conclude(report, opts, kw, started)


def _run_options_of(kw: dict[str, Any], reporter: _CliReporter) -> RunOptions:
    """The `runner.RunOptions` of the command line; usage errors about the output."""
    from melcli import runner, store
    from melcli.pipeline import default_jobs

    output = Path(kw["output"])
    if output.absolute().name in ("", ".."):  # '/', '..': nothing to create or replace
        _usage(f"--output {output} names no file or directory to write: give one, e.g. -o feats.h5")
    fmt = kw["fmt"] or store.guess_format(output)
    if kw["manifest"] and fmt != "h5":
        _usage(f"--manifest applies to HDF5 outputs (an {fmt} output keeps manifest.json "
               "inside)")  # fmt: skip
    compression = kw["compression"].lower()
    if compression != "none" and fmt != "h5":
        what = "of .npy files, which are" if fmt == "npy" else "with a Kaldi ark, which is"
        _usage(f"--compression {compression} applies to HDF5 outputs; {output} is a directory "
               f"{what} not compressed: use an .h5 output")  # fmt: skip
    if not kw["fmt"] and fmt == "npy" and output.suffix and not output.is_dir():
        reporter.problem(
            f"--output {output} has the suffix {output.suffix!r}, which is not an HDF5 suffix "
            f"({', '.join(store.H5_SUFFIXES)}): writing a directory of .npy files "
            "(say --format npy or --format h5 to choose)"
        )
    backend, scheduler = _cluster_options(kw)
    shards = _shards_option(kw["shards"], backend, fmt)
    jobs = kw["jobs"] or (0 if backend in REMOTE else default_jobs())
    return runner.RunOptions(
        output=output, format=fmt, command=_command_line(), jobs=jobs,
        overwrite=kw["overwrite"], fail_fast=kw["fail_fast"], checksum=kw["checksum"],
        dry_run=kw["dry_run"], backend=backend, scheduler=scheduler, shards=shards,
        manifest=Path(kw["manifest"]) if kw["manifest"] else None,
        inputs=kw["inputs"], prune=kw["prune"], compression=compression, root=kw["root"],
        preset=kw["preset"].lower() if kw.get("preset") else None,
    )  # fmt: skip


def _shards_option(given: bool | None, backend: str, fmt: str) -> bool:
    """Whether the workers write the entries in shards (``--shards``/``--no-shards``).

    On by default on a Dask cluster (one client receiving every byte saturates
    at about 4 workers for mel and below one for stft: docs/scaling.md) for an
    HDF5 or npy output, off otherwise. A Kaldi output is not sharded: its
    archive is written by this process at the end, from every entry. Usage
    errors (exit 2): ``--shards`` without a cluster, or with ``--format kaldi``.
    """
    if given is None:
        return backend in REMOTE and fmt in ("h5", "npy")
    if given and backend not in REMOTE:
        _usage("--shards is for a Dask cluster (--scheduler ADDRESS): local workers hand "
               "their results to this process, which writes them")  # fmt: skip
    if given and fmt == "kaldi":
        _usage("--shards: not with --format kaldi (this process writes the whole archive "
               "at the end): use an h5 or npy output, or --no-shards")  # fmt: skip
    return given


def _cluster_options(kw: dict[str, Any]) -> tuple[str, str | None]:
    """``--backend`` and ``--scheduler`` as a run's backend and scheduler address.

    ``--scheduler`` means the dask backend; ``--backend dask`` takes the address
    from ``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``. Usage errors (exit 2):
    another backend with ``--scheduler``, no address, dask not installed.
    """
    import importlib.util

    backend, scheduler = kw["backend"].lower(), kw["scheduler"]
    if scheduler is not None:
        if backend not in ("auto", "dask"):
            _usage(f"--scheduler runs on a Dask cluster, not with --backend {backend}")
        backend = "dask"
        if not scheduler.strip():
            _usage("--scheduler needs an address, e.g. --scheduler tcp://head:8786")
    if backend in REMOTE:
        module, extra = REMOTE_EXTRAS[backend]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            _usage(f"--backend {backend} needs {module}, which is not installed: "
                   f"pip install '{extra}'")  # fmt: skip
        if scheduler is None and not os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip():
            _usage("--backend dask needs a scheduler: --scheduler ADDRESS, or the "
                   "DASK_SCHEDULER_ADDRESS environment variable")  # fmt: skip
    return backend, scheduler


def _find_inputs(
    kw: dict[str, Any], reporter: _CliReporter
) -> tuple[list[Source], list[UnreadableDir]]:
    """The sources and unreadable directories of the inputs; exit 1 when there is no audio."""
    from melcli.discover import discover, parse_extensions

    try:
        found = discover(
            kw["inputs"], extensions=parse_extensions(kw["exts"]),
            stdin=sys.stdin, null=kw["null"], root=kw["root"],
        )  # fmt: skip
    except InputError as exc:
        _usage(str(exc))
    for warning in found.warnings:
        reporter.warning(warning)
    if not found.sources:
        for error in found.errors:  # otherwise the run says it (and what it keeps)
            _say(f"melcli: error: {error}")
        _fail(ExitCode.FAILED, f"no audio found in {' '.join(kw['inputs'])}")
    return found.sources, found.unreadable_dirs


def _run(
    sources: Sequence[Source],
    params: FeatureParams,
    opts: RunOptions,
    reporter: _CliReporter,
    unreadable: Sequence[UnreadableDir],
) -> RunReport:
    """`runner.execute` under melcli's stop-signal handlers; its errors as exit codes."""
    from melcli import runner

    output = opts.output
    work = f".{runner.resolve_output(output).name}.melcli-work"  # a symlink: beside its target
    resume = f"finished work is kept in {work}; rerun the same command to resume"
    _preload(opts.format, params, opts, reporter.progress)
    previous = _install_stop_handlers()
    previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    # joblib warns about tasks it cancels on Ctrl-C; our own message says it better
    warnings.filterwarnings("ignore", message=".*tasks which were still being processed")
    try:
        return runner.execute(sources, params, opts, reporter, unreadable)
    except (UsageOutputError, ParameterError) as exc:
        _usage(str(exc))
    except runner.FailFast as exc:
        _fail(ExitCode.FAILED, f"{exc}; nothing written to {output}")
    except (KeyboardInterrupt, Terminated, HungUp) as exc:
        code, what = {
            Terminated: (ExitCode.TERMINATED, "terminated"),
            HungUp: (ExitCode.HANGUP, "hung up (SIGHUP)"),
        }.get(type(exc), (ExitCode.INTERRUPTED, "interrupted"))
        if reporter.output_replaced:  # the stop came after the rename: say what is true
            _fail(code, f"{what} after the new {output} was in place; it is complete "
                        "(the next run removes what was left to clean up)")  # fmt: skip
        _fail(code, f"{what}; {output} untouched; {resume}")
    except OutputError as exc:
        _fail(ExitCode.FAILED, f"{exc}; nothing new written to {output}")
    except WorkerError as exc:
        _fail(ExitCode.FAILED, f"{exc}; {output} untouched; {resume}")
    except ClusterError as exc:
        _fail(ExitCode.FAILED, f"{exc}; nothing new written to {output}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook
        reporter.close()


def _conclude(report: RunReport, opts: RunOptions, kw: dict[str, Any], started: float) -> NoReturn:
    """Say what the run did (or, with --dry-run, would do) and exit with its code."""
    output = opts.output
    if report.repaired:  # shown even with -q: the output was damaged
        _say(
            f"melcli: repaired: {report.repaired} entries missing from the output "
            f"{'would be' if opts.dry_run else 'are'} computed again"
        )
    if opts.dry_run:
        _print_plan(report, output)
        sys.exit(0)
    if not kw["quiet"]:
        if report.resumed:
            _say(f"melcli: resumed: {report.resumed} entries kept from the interrupted run")
        if report.repointed:
            _say(
                f"melcli: repointed: {report.repointed} entries now come from another path "
                "with the same bytes (--checksum); only their source is updated"
            )
        _say(f"melcli: {report.summary()}")
        if kw["verbose"]:
            for key in report.removed:
                _say(f"melcli: removed {_show(key)}")
    if report.entries == 0:
        _fail(ExitCode.FAILED, f"no input could be processed; nothing written to {output}")
    if not kw["quiet"]:
        what = "wrote" if report.wrote else "up to date:"
        failed = (f"; {len(report.failures)} failed, listed in "
                  f"{report.manifest_file}") if report.failures else ""  # fmt: skip
        _say(
            f"melcli: {what} {report.entries} entries ({report.audio_seconds / 60:.1f} min "
            f"of audio) in {output} ({time.perf_counter() - started:.1f} s){failed}"
        )
    _print_result(str(output))
    sys.exit(int(report.exit_code))


def _print_result(text: str) -> None:
    """Print the output path on stdout; a reader that went away (``| true``) is not a
    failure of the run, whose work is done: the exit status stays the run's."""
    try:
        click.echo(text)
        sys.stdout.flush()
    except OSError:  # EPIPE (BrokenPipeError), or a closed stdout
        with contextlib.suppress(OSError):  # nothing left to flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print_plan(report: Any, output: Path) -> None:
    for label, keys in (
        ("add", report.added),
        ("update", report.updated),
        ("remove", report.removed),
    ):
        for key in keys:
            click.echo(f"{label} {_show(key)}")
    click.echo(
        f"would add {len(report.added)}, update {len(report.updated)}, remove "
        f"{len(report.removed)}, keep {report.unchanged} unchanged; failed {len(report.failures)}; "
        f"estimated output size {_fmt_bytes(report.estimated_bytes)} ({output})"
    )


@cli.command("presets", short_help="List every preset and the call it reproduces.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of text.")
def presets_command(as_json: bool) -> None:
    """List every preset: its command, the call it reproduces, every value it sets.

    \b
    Use one with --preset NAME on its command; options given there override it:
      melcli mel data/ -o feats.h5 --preset torchaudio
      melcli mfcc data/ -o mfcc.h5 --preset torchaudio --n-mfcc 13
    """
    rows: list[dict[str, Any]] = [
        {"kind": p.kind, "name": p.name, "reference": p.reference, "values": p.values,
         "note": p.note} for p in presets.PRESETS.values()
    ]  # fmt: skip
    with _best_effort(1):
        if as_json:
            click.echo(json.dumps(rows, indent=1))
            return
        for row in rows:
            click.echo(f"melcli {row['kind']} --preset {row['name']}")
            click.echo(f"  = {row['reference']}")
            values = " ".join(f"{k}={v}" for k, v in row["values"].items())
            click.echo(f"  sets: {values}")
            if row["note"]:
                click.echo(f"  note: {row['note']}")
            click.echo("")


@cli.command("report", short_help="Write one self-contained HTML page about an output.")
@click.argument("output", type=click.Path(exists=True, dir_okay=True))
@click.option(
    "-o",
    "--output",
    "html_out",
    required=True,
    type=click.Path(dir_okay=False),
    help="The HTML file to write (replaced atomically).",
)
@click.option(
    "--max",
    "most",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Thumbnails of the first this many entries by key; the others are counted.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    help="Instead of the first entries: thumbnails of this many drawn at random, the same "
    "ones every time (seed 0), shown sorted by key.",
)
def report_command(output: str, html_out: str, most: int, sample: int | None) -> None:
    """Write one HTML page about a whole output, everything embedded.

    \b
    OUTPUT is an HDF5 output, an npy output directory or a manifest. The page
    shows the parameters and the command, the totals (entries, hours of audio,
    failures, size on disk), the dataset statistics (per-row mean and std) and
    a duration histogram, the failures with their reasons, and a gallery of
    spectrogram thumbnails with each entry's key, duration, rate and a link to
    its source file where it still exists. Pictures are inline (data: URIs):
    the page fetches nothing, opens anywhere, and follows dark mode. Prints
    the page's path.

    \b
    Examples:
      melcli report feats.h5 -o report.html
      melcli report feats.h5 -o report.html --sample 100
    """
    from melcli import report

    ctx = click.get_current_context()
    if (
        sample is not None
        and ctx.get_parameter_source("most") == click.core.ParameterSource.COMMANDLINE
    ):
        _usage("--max and --sample each choose the gallery: give one of them")
    out = Path(html_out)
    if not out.absolute().parent.is_dir():
        _usage(f"--output {out}: the directory {out.absolute().parent} does not exist")
    try:
        report.write_report(output, out, most=most, sample=sample)
    except (OutputError, InputError) as exc:
        _fail(ExitCode.FAILED, str(exc))
    except OSError as exc:
        _fail(ExitCode.FAILED, f"cannot read {output}: {exc.strerror or exc}")
    _print_result(str(out))


def _preview_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """inspect's preview options: every kind's feature parameters, each once."""
    seen: dict[str, Declared] = {}
    for name in KINDS:
        for d in offered(name):
            seen.setdefault(d.name, d)
    for d in reversed(seen.values()):
        func = feature_option(d, prefix="Input preview: ")(func)
    return func


@cli.command("inspect", short_help="Show what is in an output or an input; --plot draws it.")
@click.argument("path", type=click.Path(exists=True, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of text.")
@click.option(
    "--key", default=None, help="Also show one entry: shape, min/max/mean, non-finite count."
)
@click.option(
    "--keys",
    "list_keys",
    is_flag=True,
    help="Print only the entry keys, one per line (for an input: the keys a run would write).",
)
@click.option(
    "--ext",
    "exts",
    default=DEFAULT_EXTS,
    show_default=True,
    help="Suffixes counted as audio when PATH is an input directory.",
)
@click.option(
    "--kind",
    type=_choice(list(KINDS)),
    default=None,
    help="Input preview: the shapes `melcli KIND` would write.  [default: mel]",
)
@click.option(
    "--preset",
    type=_choice(sorted({name for _, name in presets.PRESETS})),
    default=None,
    help="Input preview: start from this preset of --kind (melcli presets lists them).",
)
@click.option(
    "--plot",
    "plot_to",
    type=click.Path(dir_okay=False),
    default=None,
    help="Draw instead of printing, into this .png (or .svg, .pdf): for an output, a grid "
    "of spectrograms of its first --max entries (or of --key), one panel each, one row per "
    "channel; for an audio file, its waveform over its features computed with the preview "
    "options (--kind, default mel). Prints the picture's path.",
)
@click.option(
    "--max",
    "most",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="With --plot on an output: draw at most this many entries (the first by key).",
)
@click.option(
    "--phase",
    is_flag=True,
    help="With --plot: draw the phase of a complex STFT (stft --complex) instead of its "
    "magnitude in dB.",
)
@_preview_options
def inspect_command(
    path: str, as_json: bool, key: str | None, list_keys: bool, exts: str,
    plot_to: str | None, most: int, phase: bool, **preview: Any,
) -> None:  # fmt: skip
    """Show what is in an output, or what an input would give; or draw it (--plot).

    \b
    PATH is an HDF5 output, an npy output directory, a manifest (.json), or
    audio (a file or a directory). For outputs: parameters, entry count, total
    duration, shape range, dtype, size on disk, warnings, failures (--json: each
    entry's key, shape, duration, rate, channels). For audio: per file
    container, subtype, rate, channels, frames, duration, and the shape
    `melcli mel` would produce (with the preview options: the shape a run with
    those options would produce).

    \b
    Examples:
      melcli inspect feats.h5
      melcli inspect feats.h5 --keys | head
      melcli inspect feats.h5 --key speech/hello.wav
      melcli inspect data/ --sr 16000 --n-fft 400 --hop-length 160 --n-mels 80
      melcli inspect data/ --json | jq '.total_duration'
      melcli inspect feats.h5 --plot feats.png
      melcli inspect feats.h5 --key speech/hello.wav --plot hello.png
      melcli inspect song.wav --plot song.png --n-mels 80 --hop-length 256
    """
    from melcli import inspection as insp
    from melcli import store
    from melcli.discover import parse_extensions

    p = Path(path)
    given = {name: value for name, value in preview.items() if value is not None}
    ctx = click.get_current_context()
    if plot_to is None:
        for name, flag in (("most", "--max"), ("phase", "--phase")):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                _usage(f"{flag} applies to --plot")
    elif as_json or list_keys:
        _usage(f"--plot draws a picture; {'--json' if as_json else '--keys'} prints text: "
               "give one of them")  # fmt: skip
    try:
        kind = store.detect(p)
        if kind == "audio":
            if key is not None:
                _usage("--key applies to melcli outputs, not to audio inputs")
            cls = KINDS[given.pop("kind", "mel").lower()]
            preset = given.pop("preset", None)
            for name in set(given) - {d.name for d in offered(cls.NAME)}:
                have = [k for k in KINDS if name in {d.name for d in offered(k)}]
                _usage(f"--{name.replace('_', '-')} applies to --kind {' or '.join(have)}")
            if preset is not None:
                try:
                    given = {**presets.get(cls.NAME, preset.lower()).values, **given}
                except ParameterError as exc:
                    _usage(_parameter_message(exc))
            params = build_params(front_end(cls.NAME, given, flag="--kind "), given)
            if plot_to is not None:
                _plot_audio(p, params, plot_to, phase)
            info = insp.inspect_audio([path], parse_extensions(exts), params)
        else:
            if given:
                shown = ", ".join("--" + n.replace("_", "-") for n in given)
                _usage(f"{shown} preview{'s' if len(given) == 1 else ''} what a run would give "
                       f"for audio inputs; {path} is a melcli output (its parameters are "
                       "recorded: melcli inspect shows them)")  # fmt: skip
            if plot_to is not None:
                _plot_output(p, plot_to, key=key, most=most, phase=phase)
            info = insp.inspect_output(p, key)
    except (OutputError, InputError) as exc:
        _fail(ExitCode.FAILED, str(exc))
    except OSError as exc:
        _fail(ExitCode.FAILED, f"cannot read {path}: {exc.strerror or exc}")
    if list_keys:
        keys = [e["key"] for e in info["files" if kind == "audio" else "entries"]]
        with _best_effort(1):
            for k in keys:
                click.echo(k)
        return
    if as_json:
        click.echo(json.dumps(info, indent=1, ensure_ascii=False))
    elif kind == "audio":
        _print_audio(info)
    else:
        _print_output(info)


def _plot_destination(plot_to: str) -> Path:
    """``--plot``'s path, checked before any work (a usage error: exit 2)."""
    from melcli import plot

    try:
        return plot.check_destination(plot_to)
    except ParameterError as exc:
        _usage(str(exc))


def _plot_output(p: Path, plot_to: str, *, key: str | None, most: int, phase: bool) -> NoReturn:
    """``inspect OUTPUT --plot``: draw its entries, print the picture's path, exit 0."""
    from melcli import plot

    out = _plot_destination(plot_to)
    try:
        plot.plot_output(p, out, key=key, most=most, phase=phase)
    except ParameterError as exc:
        _usage(str(exc))
    _print_result(str(out))
    sys.exit(0)


def _plot_audio(p: Path, params: FeatureParams, plot_to: str, phase: bool) -> NoReturn:
    """``inspect AUDIO --plot``: waveform and features of one file, its path printed."""
    from melcli import plot
    from melcli.errors import DecodeError

    out = _plot_destination(plot_to)
    if p.is_dir():
        _usage(f"--plot draws one audio file; {p} is a directory (extract it, then "
               f"melcli inspect OUTPUT --plot draws its entries)")  # fmt: skip
    try:
        plot.plot_audio(str(p), params, out, phase=phase)
    except ParameterError as exc:
        _usage(str(exc))
    except DecodeError as exc:
        _fail(ExitCode.FAILED, f"{p} is neither a melcli output nor audio melcli can draw: {exc}")
    _print_result(str(out))
    sys.exit(0)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _print_output(info: dict[str, Any]) -> None:
    p = info["params"]
    echo = click.echo
    stored = f", {info['compression']}" if info.get("compression", "none") != "none" else ""
    echo(f"{info['path']}: melcli {p['kind']} output ({info['format']}{stored}), "
         f"{info['total_entries']} entries, {info['total_duration']:.2f} s of audio, "
         f"{_fmt_bytes(info['size_bytes'])} on disk")  # fmt: skip
    echo(f"created:    {info['created']} by melcli {info['melcli_version']}")
    echo(f"command:    {info['command']}")
    if info.get("preset"):
        echo(f"preset:     {info['preset']}")
    echo("parameters: " + " ".join(f"{k}={v}" for k, v in p.items() if k != "kind"))
    if info["shape_min"] is not None:
        lo, hi = tuple(info["shape_min"]), tuple(info["shape_max"])
        echo(f"shapes:     {lo} .. {hi}  dtype {', '.join(info['dtype'])}")
        echo(f"rates:      {', '.join(str(r) for r in info['sample_rates'])} Hz")
    stats = info.get("stats")
    if stats and stats["count"]:
        mean, std = stats["mean"], stats["std"]
        echo(f"statistics: {stats['count']} frames; per-row mean {min(mean):.4g} .. "
             f"{max(mean):.4g}, std {min(std):.4g} .. {max(std):.4g}")  # fmt: skip
    for warning in info.get("warnings", []):
        echo(f"warning:    {warning}")
    echo(f"failures:   {len(info['failures'])}")
    for f in info["failures"]:
        echo(f"  {_show(f['key'])}: {f['reason']}")
    entry = info.get("entry")
    if entry:
        echo(f"entry {entry['key']}: shape {tuple(entry['shape'])} {entry['dtype']}  "
             f"min {entry['min']:.6g}  max {entry['max']:.6g}  mean {entry['mean']:.6g}  "
             f"non-finite {entry['non_finite']}")  # fmt: skip
        rec = entry.get("record") or {}
        if rec:
            echo(f"  source {rec['source']}  {rec['sample_rate']} Hz  {rec['channels']} ch  "
                 f"{rec['duration']:.3f} s")  # fmt: skip


def _print_audio(info: dict[str, Any]) -> None:
    rows = [
        ("key", "format", "subtype", "rate", "ch", "frames", "duration", f"{info['kind']} shape")
    ]
    for f in info["files"]:
        rate = str(f["native_sample_rate"])
        if f["sample_rate"] != f["native_sample_rate"]:
            rate += f"->{f['sample_rate']}"
        rows.append((_show(f["key"]), f["format"], f["subtype"], rate,
                     str(f["channels"]), str(f["frames"]), f"{f['duration']:.3f} s",
                     "x".join(str(n) for n in f["shape"])))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    click.echo(f"{info['total_files']} files, {info['total_duration']:.2f} s of audio"
               + (f", {len(info['errors'])} unreadable" if info["errors"] else ""))  # fmt: skip
    for e in info["errors"]:
        click.echo(f"  {_show(e['key'])}: {e['reason']}")
    for w in info["warnings"]:
        click.echo(f"melcli: warning: {w}", err=True)


def main() -> None:
    """Console-script entry point: Click's errors, stop signals anywhere, exit codes."""
    from melcli._entry import install_early_handlers

    _open_standard_fds()
    # Until a run has loaded its modules (`_preload`), a stop signal is one line and an
    # exit at once: nothing is written before, and raising inside an import breaks it.
    install_early_handlers()
    sys.unraisablehook = _unraisable
    try:
        try:
            rc = cli.main(prog_name="melcli", standalone_mode=False)
        except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C outside a run
            _fail(ExitCode.INTERRUPTED, "interrupted")
        except Terminated:
            _fail(ExitCode.TERMINATED, "terminated")
        except HungUp:
            _fail(ExitCode.HANGUP, "hung up (SIGHUP)")
        except click.ClickException as exc:
            with _best_effort():
                exc.show()
            sys.exit(exc.exit_code)
        except MelcliError as exc:  # a library error that escaped the commands
            _fail(ExitCode.FAILED, str(exc))
        sys.exit(rc if isinstance(rc, int) else 0)
    except SystemExit as exc:
        _exit(exc.code)


def _exit(code: Any) -> NoReturn:
    """Exit with ``code``, without the interpreter's teardown after a stop or with workers.

    A run stopped early (a signal, an error) may leave worker threads finishing
    their batch, possibly inside C++ (the resampler): tearing the interpreter
    down under them aborts the process ("terminate called without an active
    exception"), and joining them would wait for their batch. And once a
    KeyboardInterrupt has passed through code run by ``PyRun_String`` (some
    extension imports), CPython 3.11 ends the process by SIGINT whatever exit
    code was asked. Everything that matters is on disk by now (checkpoint,
    temporaries removed; the kernel releases the lock), so flush and leave.
    """
    import threading

    for sig in _STOP_SIGNALS:  # the exit is decided: a late signal must not cut it short
        signal.signal(sig, signal.SIG_IGN)
    if _STOPS or threading.active_count() > 1:
        if code is not None and not isinstance(code, int):
            with contextlib.suppress(Exception):
                print(code, file=sys.stderr)
            code = 1
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code or 0)
    sys.exit(code)


if __name__ == "__main__":
    main()
