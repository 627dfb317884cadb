"""Decide what a run must do: which inputs to compute and what to keep.

Pure bookkeeping over file stats and manifests; no audio is opened here, so a
rerun with nothing to do costs one ``stat`` per input.
"""

from __future__ import annotations

import array
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from melcli.discover import (
    NotRegularFile,
    Source,
    UnreadableDir,
    open_regular,
    os_reason,
    printable,
)
from melcli.manifest import EntryTable
from melcli.workdir import ChunkRecord


@dataclass(frozen=True, slots=True)
class SourceState:
    """What identifies a source's content: size and mtime, or a content hash.

    Attributes
    ----------
    size, mtime : int, float or None
        None when the file could not be stat-ed (or hashed).
    hash : str, optional
        ``sha256:<hex>`` with ``--checksum``.
    unreadable : str, optional
        Why a file that is there could not be read (``permission denied``):
        its previous entry, if any, is kept as it was.
    special : str, optional
        The reason a FIFO, socket or device is not read at all
        (``not a regular file (FIFO)``): it matches only that failure.
    """

    size: int | None
    mtime: float | None
    hash: str | None = None
    unreadable: str | None = None
    special: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        """True when ``record`` (an entry or failure) was made from this content.

        With a hash (``--checksum``) only the hash counts, when the record has
        one; a record made without one (``--checksum`` turned on for an existing
        output) is trusted on size + mtime as the runs that made it were, and
        gets the hash (`Plan.restamped`).
        """
        if self.size is None:
            return False
        if self.special is not None:
            return record.get("reason") == self.special and self._same_stat(record)
        if self.hash is not None and "source_hash" in record:
            return self.same_bytes(record)
        return self._same_stat(record)

    def same_bytes(self, record: dict[str, Any]) -> bool:
        """True when ``record`` has this content hash (only with ``--checksum``)."""
        return self.hash is not None and record.get("source_hash") == self.hash

    def _same_stat(self, record: dict[str, Any]) -> bool:
        return record.get("source_size") == self.size and record.get("source_mtime") == self.mtime

    def fields(self) -> dict[str, Any]:
        """The fields recorded in a manifest entry or failure."""
        out: dict[str, Any] = {"source_size": self.size, "source_mtime": self.mtime}
        if self.hash is not None:
            out["source_hash"] = self.hash
        return out


def file_hash(fd: int) -> str:
    """``sha256:<hex>`` of the bytes of an open file (read from its current offset)."""
    with open(fd, "rb", closefd=False) as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


def source_state(path: str, *, checksum: bool) -> SourceState:
    """Stat (and with ``checksum`` hash) one source.

    Only regular files are hashed (`open_regular`: a FIFO or ``/dev/zero`` is
    never read). A missing file gives an empty state; a file that is there
    but cannot be read says why in ``unreadable``.
    """
    try:
        if not checksum:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(path, st)
            return SourceState(int(st.st_size), st.st_mtime)
        fd, st = open_regular(path)
        try:
            digest = file_hash(fd)
        finally:
            os.close(fd)
        return SourceState(int(st.st_size), st.st_mtime, digest)
    except NotRegularFile as exc:
        return SourceState(int(exc.stat.st_size), exc.stat.st_mtime, special=exc.reason)
    except OSError as exc:
        gone = exc.errno in (errno.ENOENT, errno.ENOTDIR)
        return SourceState(None, None, unreadable=None if gone else os_reason(path, exc))


#: The reason of a failure recorded for a directory that could not be listed.
DIRECTORY_FAILURE = "cannot read directory"


def directory_failure(directory: UnreadableDir) -> dict[str, Any]:
    """The manifest failure of a directory that could not be listed (key: its prefix, or '.')."""
    return {
        "key": directory.prefix or ".", "source": directory.path,
        "reason": f"{DIRECTORY_FAILURE}: {directory.reason}", "permanent": False,
        "source_size": None, "source_mtime": None,
    }  # fmt: skip


def is_under(key: str, prefix: str) -> bool:
    """True when ``key`` is in the directory of key prefix ``prefix`` ('' is a whole input)."""
    return prefix == "" or key.startswith(prefix + "/")


def is_permanent(failure: dict[str, Any]) -> bool:
    """True for a failure that will recur as long as the file is unchanged: it says
    so itself (``permanent``, `melcli.errors.DecodeError`). A record written before
    melcli recorded it is retried once."""
    return failure.get("permanent") is True


@dataclass
class Plan:
    """The work of one run.

    Attributes
    ----------
    compute : list of Source
        Inputs to decode and extract now.
    old : EntryTable
        The entries of the existing output (empty when there is none).
    keep_old : array of int
        Rows of ``old`` kept as they are (copied byte for byte), ascending
        (`kept` as a numpy array).
    keep_work : dict
        Key -> entry finished by an interrupted earlier run (in the work dir).
    failures : list of dict
        Failures carried over unchanged (input not modified since it failed).
    removed : list of str
        Keys of the existing output whose source is gone.
    repaired : list of str
        Keys the manifest lists but the output does not hold (intact): computed
        again (or, under an unreadable directory, dropped).
    states : dict
        Key -> `SourceState` of each input to compute (and of resumed work).
    restamped : dict
        Row of ``keep_old`` -> the fields of its record that change, not its
        features: the hash recorded where the old record had none, or the new
        ``source`` of a key that now comes from another path with the same bytes.
    repointed : set of str
        Keys of those whose ``source`` changed.
    unverified : list of dict
        ``key``, ``source``, ``reason`` of inputs that are there but could not
        be read this time (permission denied, ...): their entries are in
        ``keep_old``, kept as they were, as for a directory that cannot be listed.
    """

    compute: list[Source] = field(default_factory=list)
    old: EntryTable = field(default_factory=lambda: EntryTable.from_records([]))
    keep_old: array.array[int] = field(default_factory=lambda: array.array("q"))
    keep_work: dict[str, ChunkRecord] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    states: dict[str, SourceState] = field(default_factory=dict)
    unverified: list[dict[str, Any]] = field(default_factory=list)
    restamped: dict[int, dict[str, Any]] = field(default_factory=dict)
    repointed: set[str] = field(default_factory=set)
    old_stats: Any = None  # the existing output's recorded statistics (`melcli.stats`)

    @property
    def nothing_to_do(self) -> bool:
        """True when the existing output is already up to date."""
        return not (self.compute or self.keep_work or self.removed or self.restamped)

    def was_there(self, key: str) -> bool:
        """True when the existing output has an entry ``key`` (added vs updated)."""
        return self.old.row(key) is not None

    def kept_keys(self) -> Iterator[str]:
        """Keys of the kept entries."""
        keys = self.old.keys
        return (keys[r] for r in self.keep_old)

    @property
    def kept(self) -> np.ndarray:
        """``keep_old`` as a numpy array (to index the table's columns)."""
        return np.frombuffer(self.keep_old, np.int64)


def make_plan(
    sources: Sequence[Source],
    *,
    old_manifest: dict[str, Any] | None,
    work_records: Iterable[ChunkRecord],
    checksum: bool,
    unreadable: Iterable[UnreadableDir] = (),
    missing: Callable[[EntryTable, array.array[int]], set[str]] | None = None,
) -> Plan:
    """Compare the inputs with the existing output and the work directory.

    Parameters
    ----------
    sources : sequence of Source
        Everything discovered now.
    old_manifest : dict or None
        Manifest of the existing output to update incrementally (None: build
        from scratch).
    work_records : iterable of ChunkRecord
        What an interrupted run with the same parameters already finished.
    checksum : bool
        Compare content hashes instead of size + mtime.
    unreadable : iterable of UnreadableDir
        Directories that could not be listed this time: each is a failure, and
        the existing entries and failures under them are kept, not removed.
    missing : callable, optional
        ``missing(table, rows)`` -> the keys among the rows to keep that the
        existing output does not actually hold (see `melcli.store.missing_entries`).

    Returns
    -------
    Plan
    """
    plan = Plan()
    table = (old_manifest or {}).get("entries")
    if isinstance(table, EntryTable):
        plan.old = table
    table = plan.old
    old_failures = {f["key"]: f for f in (old_manifest or {}).get("failures", [])}
    plan.old_stats = (old_manifest or {}).get("stats")
    work = {rec.record["key"]: rec for rec in work_records}
    seen = np.zeros(len(table), bool)  # rows whose key was found again
    for src in sources:
        key = src.key
        state = source_state(src.path, checksum=checksum)
        row = table.row(key)
        done = work.get(key)
        # The source path is part of a record's identity: a key that now comes from
        # another file is computed again, unless its bytes are the same (--checksum).
        source = printable(src.path)
        if row is not None:
            seen[row] = True
            old = table.stat(row)
            moved = table.source(row) != source
            if state.matches(old) and (not moved or state.same_bytes(old)):
                if moved or (state.hash is not None and "source_hash" not in old):
                    plan.restamped[row] = {"source": source, **state.fields()}
                    if moved:
                        plan.repointed.add(key)
                plan.keep_old.append(row)  # the output already has it
                continue
            if not moved and state.unreadable is not None:  # there, unreadable for now
                plan.keep_old.append(row)
                plan.unverified.append({"key": key, "source": source, "reason": state.unreadable})
                continue
        plan.states[key] = state
        if done is not None and done.record.get("source") == source and state.matches(done.record):
            if done.kind == "entry":
                plan.keep_work[key] = done
            else:
                plan.failures.append(done.record)
        elif (
            key in old_failures
            and old_failures[key].get("source") == source
            and state.matches(old_failures[key])
            and is_permanent(old_failures[key])
        ):
            plan.failures.append(old_failures[key])
        else:
            plan.compute.append(src)
    dirs = list(unreadable)
    hidden = tuple(d.prefix for d in dirs)

    def under_hidden(key: str) -> bool:
        return any(is_under(key, p) for p in hidden)

    for row in np.flatnonzero(~seen).tolist():
        key = table.keys[row]
        if under_hidden(key):
            plan.keep_old.append(row)
        else:
            plan.removed.append(key)
    plan.keep_old = array.array("q", sorted(plan.keep_old))
    for key, old_failure in old_failures.items():  # failures under them stay too
        if (
            table.row(key) is None
            and key not in plan.states
            and under_hidden(key)
            and not old_failure["reason"].startswith(DIRECTORY_FAILURE)
        ):
            plan.failures.append(old_failure)
    plan.failures.extend(directory_failure(d) for d in dirs)
    if missing is not None and plan.keep_old:
        lost = missing(table, plan.keep_old)
        if lost:  # an entry deleted from the output by hand: never copy what is not there
            plan.repaired = sorted(lost)
            plan.keep_old = array.array(
                "q", (r for r in plan.keep_old if table.keys[r] not in lost)
            )
            plan.restamped = {r: f for r, f in plan.restamped.items() if table.keys[r] not in lost}
            plan.repointed -= lost
            found = {src.key: src for src in sources if src.key in lost}
            for key in plan.repaired:
                if key in found:
                    plan.compute.append(found[key])
                    plan.states[key] = source_state(found[key].path, checksum=checksum)
                else:  # under a directory that cannot be read now: nothing to compute it from
                    plan.removed.append(key)
            plan.removed.sort()
    return plan
