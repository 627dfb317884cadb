"""One extraction run, start to finish (parent process only).

lock -> read the existing output and any interrupted progress -> plan ->
probe headers -> compute in workers, writing each result into the new output
as it arrives (and checkpointing to chunk files every few seconds) -> add the
kept and resumed entries -> atomic commit.
The CLI drives this through a `Reporter` and maps the outcome to exit codes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

import numpy as np

from melcli import advice, store
from melcli import manifest as manifest_mod
from melcli.discover import Source, UnreadableDir, printable
from melcli.errors import (
    ClusterError,
    DecodeError,
    EntryError,
    ExitCode,
    MelcliError,
    OutputError,
    ParameterError,
    UsageOutputError,
    WorkerError,
)
from melcli.params import FeatureParams
from melcli.pipeline import (
    Failure,
    InflightLog,
    Result,
    Shards,
    Task,
    WorkerPool,
    isolated_results,
    make_tasks,
    resolve_backend,
    task_cost,
)
from melcli.plan import Plan, is_under, make_plan, source_state
from melcli.stats import RowStats, row_sums
from melcli.workdir import (
    ChunkFile,
    ChunkRecord,
    OutputLock,
    Spool,
    WorkDir,
    WriteFailed,
    disk_error,
    fault_point,
    free_bytes,
)


class Reporter(Protocol):
    """How a run tells the outside world what happens (the CLI prints it)."""

    def warning(self, message: str) -> None:
        """A non-fatal problem, before or during the run."""

    def problem(self, message: str) -> None:
        """A warning about the data in the output (shown even with ``-q``)."""

    def skipped(self, failure: Failure) -> None:
        """An input failed; the batch goes on."""

    def start(self, files: int) -> None:
        """Computing begins: ``files`` tasks (a long file is split into several)."""

    def advance(self, result: Result) -> None:
        """One task finished (written into the new output, or failed)."""

    def finish(self) -> None:
        """Computing is over (close progress displays)."""

    def committed(self) -> None:
        """The new output is in place (an interrupt from here on no longer leaves the old one)."""

    def error(self, message: str) -> None:
        """A problem the user must see (even when quiet); the run goes on."""


class FailFast(MelcliError):
    """Raised at the first failed input with ``fail_fast``; progress is kept."""


@dataclass
class RunOptions:
    """How to run, as opposed to what to compute (`FeatureParams`)."""

    output: Path
    format: str
    command: str
    jobs: int = 1
    overwrite: bool = False
    fail_fast: bool = False
    checksum: bool = False
    dry_run: bool = False
    backend: str = "auto"
    manifest: Path | None = None  # --manifest: the HDF5 output's JSON sidecar
    inputs: Sequence[str] = ()
    prune: bool = False
    compression: str = "none"  # HDF5 only (`melcli.params.COMPRESSIONS`)
    root: str | None = None  # --root: keys are paths relative to it
    preset: str | None = None  # --preset the parameters started from (recorded)
    scheduler: str | None = None  # --scheduler: the Dask scheduler (backend dask)
    shards: bool = False  # --shards: the workers write the entries, in shard files (HDF5)


@dataclass
class RunReport:
    """What a run did; decides the exit code."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    entries: int = 0
    audio_seconds: float = 0.0
    wrote: bool = False
    resumed: int = 0
    repaired: int = 0
    repointed: int = 0  # kept entries whose source moved (same bytes): only `source` updated
    estimated_bytes: int = 0
    manifest_file: Path | None = None  # where the JSON manifest is

    def summary(self) -> str:
        """``added 3, updated 1, removed 2, unchanged 996, failed 0``."""
        return (
            f"added {len(self.added)}, updated {len(self.updated)}, removed {len(self.removed)}, "
            f"unchanged {self.unchanged}, failed {len(self.failures)}"
        )

    @property
    def exit_code(self) -> ExitCode:
        """0 all inputs in the output, 3 some failed, 1 nothing could be written."""
        if not self.entries:
            return ExitCode.FAILED
        return ExitCode.PARTIAL if self.failures else ExitCode.OK


def repair_sidecar(side: Path, man: dict[str, Any]) -> str | None:
    """Rewrite the JSON sidecar when a crash left it behind its HDF5 file.

    Returns a warning instead of failing: the HDF5 file holds the manifest
    whole, so a sidecar that cannot be written (a directory in its place, a
    read-only directory) only costs the copy.
    """
    text = manifest_text(man)
    if same_bytes(side, text):
        return None
    try:
        manifest_mod.write_atomic(side, text)
    except OutputError as exc:
        return f"{exc}; the manifest inside the HDF5 file is complete"
    return None


def manifest_text(man: dict[str, Any]) -> bytes:
    """The text of a manifest as read (`manifest.loads`), or serialised anew."""
    origin = getattr(man.get("entries"), "origin", None)
    return origin if origin is not None else manifest_mod.dumps(man)


def same_bytes(path: Path, text: bytes) -> bool:
    """True when the file at ``path`` holds exactly ``text`` (read in pieces: a
    million entries' manifest is 300 MB)."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size != len(text):
                return False
            view, pos, step = memoryview(text), 0, 1 << 22
            while pos < len(text):
                if fh.read(step) != view[pos : pos + step]:
                    return False
                pos += step
            return fh.read(1) == b""
    except OSError:
        return False


def resolve_output(path: Path) -> Path:
    """The path a run writes: a symbolic link at ``path`` is followed to its target.

    The lock, the work directory and the rename then all happen beside the real
    file or directory, and the link stays a link (to the new output).
    """
    out = path.absolute()
    return Path(os.path.realpath(out)) if out.is_symlink() else out


@dataclass
class _Existing:
    """What is at the output path before the run."""

    plan: dict[str, Any] | None  # the manifest to plan against (None: start afresh)
    manifest: dict[str, Any] | None  # the existing output's manifest, if it is melcli's
    sidecar: str | None = None  # where it recorded its JSON sidecar (HDF5)


def _not_melcli(output: Path, why: str) -> UsageOutputError:
    return UsageOutputError(
        f"output {output} {why}; refusing to replace it, --overwrite or not: "
        "choose another --output"
    )


def recorded_inputs(inputs: Sequence[str]) -> list[dict[str, str]]:
    """The command-line inputs as the manifest records them: as given, and absolute."""
    return [{"given": printable(i), "absolute": i if i == "-" else printable(os.path.abspath(i))}
            for i in inputs]  # fmt: skip


def recorded_root(root: str | None) -> str | None:
    """``--root`` as the manifest records it: absolute (None without one)."""
    return None if root is None else printable(os.path.abspath(root))


def _check_same_root(
    output: Path, man: dict[str, Any], root: str | None, inputs: list[dict[str, str]]
) -> None:
    """Refuse a rerun whose keys would be relative to another ``--root`` (or to none).

    A list on stdin may change from run to run, and so may its root (a moved
    dataset listed at its new place keeps its keys): `_check_prune` guards it.
    """
    was = man.get("root") if isinstance(man.get("root"), str) else None
    if was == root or all(i["absolute"] == "-" for i in inputs):
        return
    raise UsageOutputError(
        f"output {output} was made with keys relative to "
        f"{f'--root {was}' if was else 'its inputs (no --root)'}, this run's are relative to "
        f"{f'--root {root}' if root else 'its inputs (no --root)'}; "
        "use --overwrite to replace it, or another --output"
    )


def _check_same_inputs(output: Path, man: dict[str, Any], inputs: list[dict[str, str]]) -> None:
    """Refuse a rerun on other inputs: it would silently remove the entries of the old ones."""
    old = man.get("inputs")
    if not isinstance(old, list) or not old:
        return  # made before inputs were recorded: this run records them
    was = sorted({str(i.get("absolute")) for i in old if isinstance(i, dict)})
    now = sorted({i["absolute"] for i in inputs})
    if was != now:
        gone = [i for i in was if i not in now]
        new = [i for i in now if i not in was]
        raise UsageOutputError(
            f"output {output} was made from other inputs: "
            f"{' '.join(gone) or '(none)'} -> {' '.join(new) or '(none)'}; "
            "use --overwrite to replace it, or another --output"
        )


#: With a list on stdin, a rerun may remove at most this share of the entries
#: without --prune (a list that lost most of its lines is more likely a mistake).
PRUNE_SHARE = 0.5


def _check_prune(output: Path, plan: Plan, opts: RunOptions, old: dict[str, Any]) -> None:
    removed, total = len(plan.removed), len(plan.old)
    if "-" not in opts.inputs or opts.prune or removed <= total * PRUNE_SHARE:
        return
    shown = ", ".join(plan.removed[:3]) + (", ..." if removed > 3 else "")
    was, now = old.get("root"), recorded_root(opts.root)
    why = (
        f"; its keys were relative to {f'--root {was}' if was else 'no --root'}, this run's to "
        f"{f'--root {now}' if now else 'no --root'}"
        if was != now
        else ""
    )
    raise UsageOutputError(
        f"this run would remove {removed} of the {total} entries of {output} (not in the "
        f"list on stdin: {shown}{why}); a list on stdin may remove at most half of them: "
        "add --prune to remove them (with --dry-run to list them first)"
    )


def _old_output(
    output: Path, opts: RunOptions, params: FeatureParams, inputs: list[dict[str, str]],
    root: str | None = None,
) -> _Existing:  # fmt: skip
    """Read what is at ``output``; refuse (exit 2) anything melcli did not make."""
    fmt, overwrite = opts.format, opts.overwrite
    if not os.path.lexists(output):
        return _Existing(None, None)
    if fmt in store.DIR_FORMATS:
        if not output.is_dir():
            raise _not_melcli(output, f"is a file, not a melcli {fmt} output directory")
        if not any(output.iterdir()):
            return _Existing(None, None)  # an empty directory holds nothing to lose
    elif output.is_dir():
        raise _not_melcli(output, "is a directory, not a melcli HDF5 file")
    try:
        if overwrite and fmt == "h5":  # replaced whatever it holds: only check it is melcli's
            return _Existing(None, None, store.check_h5_output(output))
        man = store.read_manifest(output, fmt)
    except store.OutputBusyError:
        raise  # --overwrite would not help: the other process keeps writing
    except OutputError as exc:
        raise _not_melcli(output, f"is not a melcli output ({exc})") from None
    recorded = man.get("sidecar") if isinstance(man.get("sidecar"), str) else None
    if overwrite:
        return _Existing(None, man, recorded)
    try:
        old_params = FeatureParams.from_dict(man["params"])
    except MelcliError:
        raise UsageOutputError(
            f"output {output} has unreadable parameters; use --overwrite"
        ) from None
    diffs = params.differences(old_params)
    if man.get("output_format") != fmt:
        diffs.append("format")
    elif fmt == "h5" and man.get("compression", "none") != opts.compression:
        raise UsageOutputError(
            f"output {output} is stored with --compression {man.get('compression', 'none')}, "
            f"not {opts.compression}: use --overwrite to rewrite it, or the same --compression"
        )
    if diffs:
        shown = ", ".join(f"{d} ({man['params'].get(d)!r} -> {params.to_dict().get(d)!r})"
                          if d != "format" else "format" for d in diffs)  # fmt: skip
        raise UsageOutputError(
            f"output {output} was made with different parameters: {shown}; "
            "use --overwrite to replace it"
        )
    _check_same_inputs(output, man, inputs)
    _check_same_root(output, man, root, inputs)
    return _Existing(man, man, recorded)


def sidecar_path(output: Path, opts: RunOptions, recorded: str | None) -> Path | None:
    """Where an HDF5 output's JSON manifest goes: ``--manifest``, else where the
    existing output recorded it, else ``<stem>.json``. None for npy."""
    if opts.format != "h5":
        return None
    if opts.manifest is not None:
        return Path(os.path.abspath(opts.manifest))
    if recorded:
        return Path(os.path.normpath(output.parent / recorded))
    return store.manifest_path(output, "h5")


def check_sidecar(side: Path, output: Path, opts: RunOptions, own: dict[str, Any] | None) -> None:
    """Refuse (exit 2) to write the sidecar over a file that is not this output's manifest.

    A JSON file that is not a melcli manifest (a user's ``train.json``) is never
    replaced, nor the manifest of another HDF5 output of the same stem
    (``a.h5`` and ``a.hdf5`` would share ``a.json``).
    """
    if not os.path.lexists(side) or side.is_dir():
        return  # a directory in its way is a warning at the commit, not a refusal
    hint = "put this output's manifest elsewhere with --manifest PATH"
    if own is not None and same_bytes(side, manifest_text(own)):
        return
    try:
        theirs = manifest_mod.read(side)
    except OutputError:
        raise UsageOutputError(
            f"{side} exists and is not a melcli manifest; refusing to replace it: {hint}"
        ) from None
    claimed = theirs.get("output")
    others = [output.with_suffix(s) for s in store.H5_SUFFIXES if output.with_suffix(s) != output]
    for other in [side.parent / claimed] if isinstance(claimed, str) else others:
        if other.resolve() != output and other.exists():
            raise UsageOutputError(f"{side} is the manifest of {other}; {hint}")
    if own is None and not opts.overwrite and not os.path.lexists(output):
        raise UsageOutputError(
            f"{side} exists without {output.name}; use --overwrite to replace it"
        )


def check_unlisted(output: Path, man: dict[str, Any] | None) -> None:
    """Refuse (exit 2) to replace an npy output holding files melcli did not write."""
    if man is None or not output.is_dir():
        return
    extras = store.npy_unlisted(output, man)
    if extras:
        shown = ", ".join(printable(e) for e in extras[:5])
        more = f" and {len(extras) - 5} more" if len(extras) > 5 else ""
        raise UsageOutputError(
            f"output {output} holds files melcli did not write ({shown}{more}); refusing "
            "to replace it, --overwrite or not: move them out of it, or choose another --output"
        )


def _estimate_bytes(params: FeatureParams, frames: int, channels: int, sr: int) -> int:
    n = int(np.ceil(frames * (params.sr or sr) / sr)) if params.sr else frames
    ch = 1 if params.mono else channels
    return params.n_bins * params.n_frames(n) * ch * np.dtype(params.out_dtype).itemsize


def execute(
    sources: Sequence[Source],
    params: FeatureParams,
    opts: RunOptions,
    reporter: Reporter,
    unreadable: Sequence[UnreadableDir] = (),
) -> RunReport:
    """Run one extraction (or, with ``opts.dry_run``, say what it would do).

    Raises
    ------
    UsageOutputError
        The existing output was made with other parameters (exit 2).
    OutputError
        Locked, unwritable or full output (exit 1); the previous output is intact.
    ClusterError
        The Dask cluster cannot be used (exit 1); finished work is checkpointed.
    WorkerError
        A worker process died (exit 1); finished work is checkpointed.
    FailFast, KeyboardInterrupt
        After flushing finished work to the work directory, for a later resume.
    """
    output = resolve_output(opts.output)
    if not output.parent.is_dir():
        raise OutputError(f"cannot write {opts.output}: directory {output.parent} does not exist")
    lock = OutputLock(output)
    if not opts.dry_run:
        lock.acquire(opts.command)
    try:
        return Run(sources, params, opts, reporter, output, unreadable).execute()
    except (OutputError, ClusterError):
        work = WorkDir(output)
        with contextlib.suppress(OutputError):
            work.check()  # never remove what is not melcli's own work directory
            if not opts.dry_run and not work.chunks():  # no finished work worth keeping
                work.remove()
        raise
    finally:
        lock.release()


def check_inputs_outside(sources: Sequence[Source], output: Path) -> None:
    """Refuse an output that is an input or would hold inputs (replacing it loses them)."""
    try:
        st = os.stat(output)
    except OSError:
        return  # nothing there yet: it holds nothing
    if not os.path.isdir(output):  # a file: is it one of the inputs? (inodes, no realpath)
        for src in sources:
            try:
                s = os.stat(src.path)
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                _refuse_output(output, src)
        return
    out = os.path.realpath(output)
    for src in sources:
        real = os.path.realpath(src.path)
        if real == out or real.startswith(out + os.sep):
            _refuse_output(output, src)


def _refuse_output(output: Path, src: Source) -> NoReturn:
    raise UsageOutputError(
        f"output {output} contains the input {src.path}; choose an --output outside the inputs"
    )


def remove_stale(output: Path, work: WorkDir) -> None:
    """Delete temporaries a killed run left in ``output``'s work directory (lock held).

    Where a directory swap without RENAME_EXCHANGE was cut between its two
    renames, the previous output (whole: a tree is renamed to ``trash-*``
    before it is deleted) is first put back. Nothing outside the work
    directory is touched, so another output's files are safe whatever their names.
    """
    work.check()
    if not os.path.lexists(output):
        olds = work.old_trees()
        if olds:
            os.rename(olds[-1], output)
    work.remove_temporaries()


def _dropped_work(work: WorkDir, prior: dict[str, Any], state: dict[str, Any]) -> str:
    """The line that says an interrupted run's finished work is dropped ('' if it has none).

    Its work is resumed only with the same parameters and format: with others
    its entries are of no use to this run, and the work directory is started afresh.
    """
    finished = sum(1 for rec in work.records() if rec.kind == "entry")
    work.damaged = []  # dropped anyway: no warning about a chunk nobody reads
    if not finished:
        return ""
    was, now = prior.get("params"), state["params"]
    if isinstance(was, dict):
        names = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
        changed = [f"{k} ({was.get(k)!r} -> {now.get(k)!r})" for k in names]
    else:
        changed = ["(unreadable)"]
    if prior.get("format") != state["format"]:
        changed.append(f"format ({prior.get('format')!r} -> {state['format']!r})")
    return (
        f"the interrupted run in {work.path.name} used other parameters "
        f"({', '.join(changed)}): its {finished} finished entries are dropped"
    )


def failure_record(failure: Failure, path: str, *, checksum: bool) -> dict[str, Any]:
    """A failure's manifest record, with the state of its file seen right after it failed.

    Not the state seen at planning time: a file that was something else while
    it was read (a symlink pointing elsewhere for a moment, a file being
    replaced) must not have its failure carried over once it is back as it was.
    """
    return {**failure.to_dict(), **source_state(path, checksum=checksum).fields()}


def failures_changed(old: dict[str, Any], failures: list[dict[str, Any]]) -> bool:
    """True when the failure list differs from the one the output records."""
    key = lambda f: (f["key"], f["source"], f["reason"])  # noqa: E731
    return sorted(map(key, old.get("failures", []))) != sorted(map(key, failures))


@dataclass(frozen=True)
class Todo:
    """A task to compute, its samples (all channels) and its estimated work."""

    samples: int
    cost: int
    task: Task


#: In the work directory: the batches in the workers' hands (`InflightLog`).
INFLIGHT_LOG = "inflight.log"


def _pool(
    todo: list[Todo], params: FeatureParams, opts: RunOptions, log: InflightLog,
    shards: Shards | None = None,
) -> WorkerPool:  # fmt: skip
    # Largest first, so one long file does not finish last alone.
    ordered = sorted(todo, key=lambda t: (-t.samples, t.task.source.key, t.task.part))
    backend = resolve_backend(opts.backend, sum(t.samples for t in todo) / max(1, len(todo)))
    return WorkerPool(
        [t.task for t in ordered], [t.cost for t in ordered], params,
        jobs=opts.jobs, backend=backend, log=log, address=opts.scheduler,
        shards=shards,
    )  # fmt: skip


def _reuse(
    output: Path, opts: RunOptions, plan: Plan, old: dict[str, Any] | None
) -> store.Reuse | None:
    """Start an HDF5 rerun from a copy of the old file (`melcli.store.reuse_h5`)?"""
    if opts.format != "h5" or old is None or not plan.keep_old:
        return None
    table = plan.old
    dropped = np.ones(len(table), bool)
    dropped[plan.kept] = False
    rows = np.flatnonzero(dropped)
    text = table.origin if table.origin is not None else b""
    return store.reuse_h5(
        output, [table.keys[r] for r in rows], int(table.nbytes[rows].sum()), len(text)
    )


def _kept_stats(plan: Plan, kept: list[int], old_output: Path, fmt: str, rows: int) -> RowStats:
    """Statistics of the kept entries: the old totals minus the entries dropped
    (read back from the old output), or, when the old output has no totals or
    lost entries, the sum over the kept ones."""
    table = plan.old
    base = RowStats.from_dict(plan.old_stats, rows)
    dropped = np.ones(len(table), bool)
    dropped[np.asarray(kept, np.int64)] = False
    reader = store.open_reader(old_output, fmt)
    try:
        if base is not None and not plan.repaired:
            for r in np.flatnonzero(dropped).tolist():
                base.add(reader.read(table.keys[r]), sign=-1)
            return base
        base = RowStats(rows)  # an output from before melcli kept them: once, every entry
        for r in kept:
            base.add(reader.read(table.keys[r]))
        return base
    finally:
        reader.close()


def _checkpoint_quietly(spool: Spool) -> None:
    """Keep finished work for a resume, on the way out of a failed run.

    A failure to do so (the disk that broke the run is full) must not hide the
    error that stopped the run; the lost entries are simply computed again.
    """
    with contextlib.suppress(Exception):
        spool.flush()


class _ChunkReader:
    """Reads pieces from chunk files, keeping a few open (keys arrive sorted)."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self.open: dict[Path, ChunkFile] = {}

    def pieces(
        self, rec: ChunkRecord
    ) -> Iterator[tuple[int, np.ndarray | None, tuple[str, str, int] | None]]:
        """(first frame, array, None) per piece, or (first frame, None, shard) for a
        piece in a shard file (its chunk holds no data)."""
        for chunk, member, frame, shard, raw in rec.pieces:
            if shard is not None:
                yield frame, None, shard
                continue
            if raw is not None:  # in the output the interrupted run was building
                yield frame, raw.read(rec.record), None
                continue
            cf = self.open.pop(chunk, None)
            if cf is None:
                cf = ChunkFile(chunk)
                if len(self.open) >= self.keep:
                    self.open.pop(next(iter(self.open))).close()
            self.open[chunk] = cf  # most recently used last
            yield frame, cf.read(member), None

    def close(self) -> None:
        for cf in self.open.values():
            cf.close()
        self.open.clear()


@dataclass
class _Probed:
    """What the headers of the inputs to compute said (`Run.probe`)."""

    todo: list[Todo] = field(default_factory=list)
    rates: list[int] = field(default_factory=list)  # per input: the rate of its features
    samples: list[int] = field(default_factory=list)  # its samples per channel at that rate
    keys: list[str] = field(default_factory=list)


@dataclass
class _Progress:
    """The computing phase's bookkeeping (`Run.compute`)."""

    parts: dict[str, int]  # key -> its number of tasks
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)  # key -> parts written
    written: dict[str, dict[str, Any]] = field(default_factory=dict)  # entries written whole
    partial: dict[str, RowStats] = field(default_factory=dict)  # a long file's parts, until all in


class Run:
    """One extraction in the parent process, from the old output to the commit.

    Holds what the steps share (the plan, the failures, the report, the writer,
    the worker pool); `execute` runs them in order: `read_existing`, `make_plan`,
    `probe`, then (unless a dry run or nothing to do) `start`, `compute`,
    `assemble`. The output lock is held by the caller (`execute`, the function).
    """

    # set by the steps, in this order
    existing: _Existing  # read_existing
    old: dict[str, Any] | None  # the old output's manifest, to plan against
    side: Path | None  # the HDF5 output's JSON sidecar
    resume: bool  # make_plan: an interrupted run's work is kept
    plan: Plan
    report: RunReport
    kept_bytes: int  # probe
    pool: WorkerPool  # start
    writer: store.Writer
    spool: Spool
    written: dict[str, dict[str, Any]]  # compute: records of the entries written whole

    def __init__(
        self,
        sources: Sequence[Source],
        params: FeatureParams,
        opts: RunOptions,
        reporter: Reporter,
        output: Path,
        unreadable: Sequence[UnreadableDir] = (),
    ) -> None:
        self.sources, self.params, self.opts = sources, params, opts
        self.reporter, self.output, self.unreadable = reporter, output, unreadable
        self.work = WorkDir(output)
        self.inputs = recorded_inputs(opts.inputs)
        self.root = recorded_root(opts.root)
        self.state = {"params": params.to_dict(), "format": opts.format}
        self.failures: list[dict[str, Any]] = []
        self.totals = RowStats(params.n_bins) if not params.stores_complex else None

    def execute(self) -> RunReport:
        """Run every step; with ``opts.dry_run``, only say what would be done."""
        self.read_existing()
        self.make_plan()
        probed = self.probe()
        if self.opts.dry_run:
            return self.dry_run_report(probed)
        if self.up_to_date():
            return self.report
        self.warn_about_data(probed)
        needed = self.check_space()
        resume_first = self.start(probed, needed)
        try:
            self.compute(resume_first)
            return self.assemble()
        except (OSError, WriteFailed) as exc:  # a write failed: clean up, say how much space
            self.pool.close(ok=False)
            self.writer.abort()
            raise disk_error("writing", self.output, exc, needed=needed) from None
        except BaseException:
            self.pool.close(ok=False)
            self.writer.abort()
            if self.writer.committed:
                self.reporter.committed()
            raise

    # -- before computing --------------------------------------------------------------
    def read_existing(self) -> None:
        """Clean up after a killed run, read the old output, check its sidecar."""
        output, opts = self.output, self.opts
        if not opts.dry_run:
            remove_stale(output, self.work)
        check_inputs_outside(self.sources, output)
        self.existing = _old_output(output, opts, self.params, self.inputs, self.root)
        self.old = self.existing.plan
        self.side = sidecar_path(output, opts, self.existing.sidecar)
        if self.side is not None:
            check_sidecar(self.side, output, opts, self.existing.manifest)
            if self.old is not None and not opts.dry_run:
                warning = repair_sidecar(self.side, self.old)
                if warning:
                    self.reporter.warning(warning)

    def make_plan(self) -> None:
        """What to compute, keep and remove; whether an interrupted run is resumed."""
        work, opts, old, reporter = self.work, self.opts, self.old, self.reporter
        prior = work.read_state() if work.exists() else None
        self.resume = (
            prior is not None
            and prior.get("params") == self.state["params"]
            and prior.get("format") == opts.format
        )
        dropped = "" if prior is None or self.resume else _dropped_work(work, prior, self.state)
        output, fmt = self.output, opts.format
        self.plan = plan = make_plan(
            self.sources, unreadable=self.unreadable, old_manifest=old,
            work_records=work.records() if self.resume else (), checksum=opts.checksum,
            missing=None if old is not None and old["entries"].untouched
            else lambda table, rows: store.missing_entries(output, fmt, table, rows),
        )  # fmt: skip
        for chunk, why in work.damaged:
            reporter.warning(f"discarded damaged checkpoint {chunk.name} in {work.path.name} "
                             f"({why}); its entries are computed again")  # fmt: skip
            if not opts.dry_run:
                chunk.unlink(missing_ok=True)
        if old is not None:
            _check_prune(output, plan, opts, old)
        fault_point("planned")
        if dropped:
            reporter.warning(dropped if not opts.dry_run
                             else dropped.replace("are dropped", "would be dropped"))  # fmt: skip
        for d in self.unreadable:
            kept = sum(1 for k in plan.kept_keys() if is_under(k, d.prefix))
            reporter.error(
                f"cannot read directory {d.path}: {d.reason}; recorded as a failure"
                + (f"; its {kept} entries in the output are kept as they were" if kept else "")
            )
        self.report = RunReport(
            removed=plan.removed, resumed=len(plan.keep_work), repaired=len(plan.repaired),
            unchanged=len(plan.keep_old),
            manifest_file=self.side or store.manifest_path(output, fmt),
        )  # fmt: skip
        for rec in plan.unverified:  # shown like a directory that cannot be listed
            reporter.skipped(
                Failure(rec["key"], rec["source"], f"{rec['reason']}; its entry is kept")
            )
        self.failures = list(plan.failures)

    def probe(self) -> _Probed:
        """Read the headers of the inputs to compute: cheap, and they give sizes, rates
        and early failures. Raises ParameterError when a parameter fails them all."""
        from melcli import audio

        params, plan, report = self.params, self.plan, self.report
        out = _Probed()
        for src in plan.compute:
            try:
                info = audio.probe(src.path)
            except DecodeError as exc:
                self.fail(Failure(src.key, printable(src.path), str(exc), exc.permanent), src.path)
                continue
            tasks = make_tasks(src, info, params)
            samples = info.frames * info.channels // len(tasks)
            out.todo.extend(Todo(samples, task_cost(t, info, params), t) for t in tasks)
            rate = params.sr or info.sample_rate
            out.rates.append(rate)
            out.samples.append(-(-info.frames * rate // info.sample_rate))
            out.keys.append(src.key)
            report.estimated_bytes += _estimate_bytes(
                params, info.frames, info.channels, info.sample_rate
            )
        self.kept_bytes = int(plan.old.nbytes[plan.kept].sum())
        report.estimated_bytes += self.kept_bytes
        report.estimated_bytes += sum(store.entry_nbytes(r.record) for r in plan.keep_work.values())
        if not len(plan.keep_old) and not plan.keep_work:  # one line, not N equal failures
            everywhere = params.fails_everywhere(out.rates)
            if everywhere:
                raise ParameterError(everywhere)
        return out

    def fail(self, failure: Failure, path: str) -> None:
        """An input failed before computing: said, recorded; --fail-fast stops here."""
        self.reporter.skipped(failure)
        self.failures.append(failure_record(failure, path, checksum=self.opts.checksum))
        if self.opts.fail_fast and not self.opts.dry_run:
            raise FailFast(f"stopped at the first failure (--fail-fast): {failure.key}")

    def dry_run_report(self, probed: _Probed) -> RunReport:
        """What the run would do: inputs whose header failed are failures, not adds."""
        plan, report = self.plan, self.report
        keys = {t.task.source.key for t in probed.todo}
        report.added = sorted(k for k in keys if not plan.was_there(k))
        report.updated = sorted(k for k in keys if plan.was_there(k))
        report.failures = self.failures
        report.entries = len(plan.keep_old) + len(plan.keep_work) + len(keys)
        return report

    def up_to_date(self) -> bool:
        """True (and the report filled in) when the output already is what this run makes."""
        plan, old = self.plan, self.old
        if not (
            plan.nothing_to_do
            and old is not None
            and not failures_changed(old, self.failures)
            and (bool(old.get("inputs")) or not self.inputs)  # an older output gets its inputs
            and old.get("root") == self.root
        ):
            return False
        self.work.remove()
        self.report.failures = self.failures
        self.report.entries = len(plan.keep_old)
        self.report.audio_seconds = float(plan.old.duration[plan.kept].sum())
        return True

    def warn_about_data(self, probed: _Probed) -> None:
        """The data warnings (`melcli.advice`) over the kept and the new inputs."""
        plan = self.plan
        rows = plan.kept
        for warning in advice.data_warnings(
            self.params,
            np.concatenate([plan.old.sample_rate[rows], np.asarray(probed.rates, np.int64)]),
            np.concatenate([plan.old.n_samples[rows], np.asarray(probed.samples, np.int64)]),
            [*plan.kept_keys(), *probed.keys],
        ):
            self.reporter.problem(warning)

    def check_space(self) -> int:
        """Refuse before computing what cannot be stored; return the bytes needed."""
        if self.opts.format in store.DIR_FORMATS:
            check_unlisted(self.output, self.existing.manifest)
        # Hard links carry an npy output's kept entries over: they need no new space.
        needed = self.report.estimated_bytes - (self.kept_bytes if self.opts.format == "npy" else 0)
        if self.opts.format == "kaldi":  # the .npy files of the run, then the ark from them
            needed += self.report.estimated_bytes
        if needed > free_bytes(self.output):
            raise disk_error(
                "writing", self.output, OSError(errno.ENOSPC, "no space"), needed=needed
            )
        return needed

    def start(self, probed: _Probed, needed: int) -> list[Result]:
        """Start the work directory, the workers, the writer and the spool.

        Inputs that were being decoded when an earlier run died are computed first,
        one by one, in a separate process (one of them may crash the decoder; a
        crash there costs that input only): their results are returned.
        """
        work, params, todo = self.work, self.params, probed.todo
        inflight = work.path / INFLIGHT_LOG
        suspects = InflightLog.read(inflight) if self.resume else set()
        work.start(self.state, keep=self.resume)
        checked: list[Result] = []
        first = [t for t in todo if (t.task.source.key, t.task.part) in suspects]
        if first:
            self.reporter.warning(
                f"the previous run stopped while decoding {len(first)} inputs; "
                "checking them in a separate process first"
            )
            todo = [t for t in todo if (t.task.source.key, t.task.part) not in suspects]
            checked = list(isolated_results([t.task for t in first], params))
        # Workers start before the output is opened: none of them holds it.
        shards = None
        if self.opts.shards:
            shards = Shards(os.fspath(work.shards), self.opts.format)
            try:
                work.shards.mkdir(exist_ok=True)
            except OSError as exc:
                raise disk_error("creating", work.shards, exc) from None
        self.pool = _pool(todo, params, self.opts, InflightLog(inflight), shards).start()
        # New entries go straight into the new output (under its temporary name, in
        # the work directory); the spool checkpoints them for a resume. Kept and
        # resumed entries are added at the end (`assemble`).
        try:
            base = _reuse(self.output, self.opts, self.plan, self.old)
            self.writer = store.open_writer(
                self.output, self.opts.format, work, self.side, base, self.opts.compression
            )
        except WriteFailed as exc:
            self.pool.close(ok=False)
            raise disk_error("writing", self.output, exc, needed=needed) from None
        except BaseException:
            self.pool.close(ok=False)
            raise
        self.spool = Spool(work, read_back=self.writer.read_piece, durable=self.writer.durable)
        for rec in self.failures[len(self.plan.failures) :]:
            self.spool.add_failure(rec)
        return checked

    # -- computing -----------------------------------------------------------------------
    def compute(self, checked: list[Result]) -> None:
        """Run the tasks, writing each result into the writer as it arrives.

        ``checked`` are results computed before (in an isolated process). On any
        exception the finished work is checkpointed first, for a resume, and the
        workers are stopped.
        """
        pool, reporter = self.pool, self.reporter
        tasks = [r.task for r in checked] + list(pool.tasks)
        progress = _Progress({t.source.key: t.parts for t in tasks})
        reporter.start(len(tasks))
        try:
            for res in itertools.chain(checked, pool.results()):
                self.take(res, progress)
        except BaseException as exc:
            try:
                # stop the workers now, not when the generator is collected; a worker
                # that died leaves its batches in the in-flight log for the next run
                pool.close(ok=False, keep_log=isinstance(exc, WorkerError))
                reporter.finish()
            finally:
                _checkpoint_quietly(self.spool)
            raise
        pool.close(ok=True)  # workers reaped before the commit
        reporter.finish()
        self.written = progress.written
        self.failures.extend(progress.failures.values())

    def take(self, res: Result, progress: _Progress) -> None:
        """One result: written (and checkpointed), or recorded as its input's failure.

        ``totals`` gets the frames of every entry written whole (a long file's
        parts once all of them are in).
        """
        key, writer, spool = res.source.key, self.writer, self.spool
        if key in progress.failures:  # another part of this file already failed: count it
            self.reporter.advance(dataclasses.replace(res, meta=None, data=None, failure=None))
            return
        state = self.plan.states[key].fields()
        stored = res.stored
        if res.failure is None:
            if res.meta is None or (res.data is None and stored is None):
                raise RuntimeError("extract returned neither features nor a failure")
            rec, task = {**res.meta.to_dict(), **state}, res.task
            raw_offset = None
            try:
                if stored is not None:  # a worker wrote it into a shard: link it
                    writer.link_piece(
                        rec, task.frame_start, stored.shard, stored.dataset, stored.frames
                    )
                    data = np.empty((0,), np.dtype(rec["dtype"]))  # the chunk holds no data
                else:
                    data = res.data if res.data is not None else np.empty((0,))
                    raw_offset = writer.write_piece(rec, task.frame_start, data)
            except EntryError as exc:  # its name cannot be stored: a failure of this input
                failure = Failure(key, res.meta.source, str(exc), permanent=True)
                res = dataclasses.replace(res, meta=None, data=None, failure=failure)
        if res.failure is not None:
            rec = failure_record(res.failure, res.source.path, checksum=self.opts.checksum)
            progress.failures[key] = rec
            progress.partial.pop(key, None)
            if progress.done.pop(key, 0):
                writer.discard(key)
                spool.discard(key)
            spool.add_failure(rec)
            self.reporter.advance(res)
            if self.opts.fail_fast:
                raise FailFast(
                    f"stopped at the first failure (--fail-fast): {key}: {res.failure.reason}"
                )
            return
        spooled = rec
        if task.parts > 1:
            spooled = {**rec, "part": task.part, "parts": task.parts,
                       "frame_start": task.frame_start}  # fmt: skip
        if stored is not None:
            spooled = {**spooled, "shard": stored.shard, "dataset": stored.dataset,
                       "frames": stored.frames}  # fmt: skip
        if raw_offset is not None:  # a checkpoint points at its bytes in the output
            spooled = {**spooled, "raw_offset": raw_offset}
        spool.add_entry(spooled, data, borrowed=res.borrowed)
        progress.done[key] = progress.done.get(key, 0) + 1
        sums = res.sums
        if sums is None and stored is not None and self.totals is not None:
            data = store.read_shard_piece(self.shard_file(stored.shard), stored.dataset)
        self.add_stats(key, data, sums, progress)
        if progress.done[key] == progress.parts[key]:
            progress.written[key] = rec
        self.reporter.advance(res)

    def add_stats(self, key: str, data: np.ndarray, sums: Any, progress: _Progress) -> None:
        """Add a piece's row sums to the totals (a long file's once all its parts are in)."""
        if self.totals is None:
            return
        sums = sums if sums is not None else row_sums(data)
        if progress.parts[key] == 1:
            self.totals.add_sums(sums)
            return
        progress.partial.setdefault(key, RowStats(self.params.n_bins)).add_sums(sums)
        if progress.done[key] == progress.parts[key]:
            self.totals.merge(progress.partial.pop(key))

    # -- after computing -------------------------------------------------------------------
    def assemble(self) -> RunReport:
        """Complete the new output (resumed and kept entries, frequencies, manifest), commit.

        ``totals`` holds the statistics of the entries computed now; those of the
        kept ones come from the old totals minus what is dropped (`_kept_stats`).
        """
        plan, old, report, writer = self.plan, self.plan.old, self.report, self.writer
        new = {k: rec for k, rec in self.written.items() if k in plan.states}
        resumed = {k: r for k, r in plan.keep_work.items() if k in plan.states and k not in new}
        kept = [r for r in plan.keep_old if old.keys[r] not in new and old.keys[r] not in resumed]
        fresh = new.keys() | resumed.keys()
        report.added = sorted(k for k in fresh if not plan.was_there(k))
        report.updated = sorted(k for k in fresh if plan.was_there(k))
        report.unchanged = len(kept)
        report.repointed = sum(1 for r in kept if old.keys[r] in plan.repointed)
        report.failures = sorted((f for f in self.failures if f["key"] not in fresh),
                                 key=lambda f: f["key"])  # fmt: skip
        report.entries = len(fresh) + len(kept)
        if not report.entries:
            writer.abort()
            self.work.remove()
            return report
        self.add_resumed(resumed)
        if self.totals is not None:
            self.totals.merge(
                _kept_stats(plan, kept, writer.path, self.opts.format, self.params.n_bins)
            )
        fixed = self.add_kept(kept)
        made = manifest_mod.EntryTable.from_records(
            [*new.values(), *(r.record for r in resumed.values()), *fixed]
        )
        entries = old.merged([r for r in kept if r not in plan.restamped], made)
        writer.commit(self.manifest(entries))
        for warning in writer.warnings:
            self.reporter.warning(warning)
        report.wrote = True
        report.audio_seconds = float(entries.duration.sum())
        self.work.remove()
        return report

    def add_resumed(self, resumed: dict[str, ChunkRecord]) -> None:
        """Copy the entries an interrupted run finished from its checkpoint chunks."""
        reader, writer = _ChunkReader(), self.writer
        try:
            for key in sorted(resumed):
                record = resumed[key].record
                for frame, data, shard in reader.pieces(resumed[key]):
                    if shard is not None:  # in a shard file a worker wrote: linked
                        writer.link_piece(record, frame, *shard)
                        if self.totals is not None:
                            data = store.read_shard_piece(self.shard_file(shard[0]), shard[1])
                    elif data is not None:
                        writer.write_piece(record, frame, data)
                    if self.totals is not None and data is not None:
                        self.totals.add(data)
                fault_point("assemble")
        finally:
            reader.close()

    def shard_file(self, name: str) -> Path:
        """Where the shard file ``name`` of this run is: in the work directory, or
        already beside the output (a run killed during its commit moved it)."""
        path = self.work.shards / name
        return path if path.exists() else store.shards_dir(self.output) / name

    def add_kept(self, kept: list[int]) -> list[dict[str, Any]]:
        """Carry the kept entries over; return the records updated (`Plan.restamped`)."""
        plan, old, writer = self.plan, self.plan.old, self.writer
        copies = writer.base is None  # else the kept entries are in the copy it started from
        fixed: list[dict[str, Any]] = []
        for r in kept:
            fix = plan.restamped.get(r)
            if copies or fix is not None:
                rec = old.record(r) if fix is None else {**old.record(r), **fix}
                writer.copy_entry(rec, writer.path, repointed=old.keys[r] in plan.repointed)
                if fix is not None:
                    fixed.append(rec)
            fault_point("assemble")
        return fixed

    def manifest(self, entries: manifest_mod.EntryTable) -> dict[str, Any]:
        """The new output's manifest (and its rows' frequencies, added to the writer)."""
        params, opts = self.params, self.opts
        freqs: dict[int, list[float]] = {}
        for sr in sorted(set(entries.sample_rate.tolist())):  # np.unique imports numpy.ma
            row = params.row_frequencies(sr)
            self.writer.add_frequencies(sr, row)
            freqs[sr] = [float(x) for x in row]
        return manifest_mod.build(
            params=params.to_dict(), command=opts.command, output_format=opts.format,
            entries=entries, failures=self.report.failures, frequencies=freqs,
            inputs=self.inputs, root=self.root, compression=opts.compression, preset=opts.preset,
            stats=self.totals.to_dict() if self.totals else None,
            warnings=advice.data_warnings(
                params, entries.sample_rate, entries.n_samples, entries.keys
            ),
        )  # fmt: skip
