"""Decide what a run must do: which inputs to compute and what to keep.

Pure bookkeeping over file stats and manifests; no audio is opened here, so a
rerun with nothing to do costs one ``stat`` per input.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from melcli.discover import (
    NotRegularFile,
    Source,
    UnreadableDir,
    open_regular,
    os_reason,
    printable,
)
from melcli.workdir import ChunkRecord


@dataclass(frozen=True)
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


#: Reasons that depend only on a file's content, type or name (and the
#: parameters): such a failure is carried over until the file changes. Anything
#: else (permission denied, a missing file, out of memory, ...) is retried on
#: every run.
CONTENT_FAILURES = (
    "cannot decode", "truncated", "too short", "no audio samples", "audio contains",
    "sample values", "values up to", "fmax=", "fmin=", "not a regular file", "cannot store",
    "decoder crashed", "cannot resample",
)  # fmt: skip


#: The reason of a failure recorded for a directory that could not be listed.
DIRECTORY_FAILURE = "cannot read directory"


def directory_failure(directory: UnreadableDir) -> dict[str, Any]:
    """The manifest failure of a directory that could not be listed (key: its prefix, or '.')."""
    return {
        "key": directory.prefix or ".", "source": directory.path,
        "reason": f"{DIRECTORY_FAILURE}: {directory.reason}", "source_size": None,
        "source_mtime": None,
    }  # fmt: skip


def is_under(key: str, prefix: str) -> bool:
    """True when ``key`` is in the directory of key prefix ``prefix`` ('' is a whole input)."""
    return prefix == "" or key.startswith(prefix + "/")


def is_content_failure(reason: str) -> bool:
    """True for a failure that will recur as long as the file is unchanged."""
    return reason.startswith(CONTENT_FAILURES) and "System error" not in reason


@dataclass
class Plan:
    """The work of one run.

    Attributes
    ----------
    compute : list of Source
        Inputs to decode and extract now.
    keep_old : list of dict
        Entries of the existing output kept as they are (copied byte for byte).
    keep_work : dict
        Key -> entry finished by an interrupted earlier run (in the work dir).
    failures : list of dict
        Failures carried over unchanged (input not modified since it failed).
    removed : list of str
        Keys of the existing output whose source is gone.
    repaired : list of str
        Keys the manifest lists but the output does not hold (intact): computed
        again (or, under an unreadable directory, dropped).
    old_keys : set of str
        Keys present in the existing output (to tell added from updated).
    restamped : list of str
        Keys among ``keep_old`` whose record is updated, not their features:
        the hash recorded where the old record had none, or the new ``source``
        of a key that now comes from another path with the same bytes.
    repointed : set of str
        Those of ``restamped`` whose ``source`` changed.
    unverified : list of dict
        ``key``, ``source``, ``reason`` of inputs that are there but could not
        be read this time (permission denied, ...): their entries are in
        ``keep_old``, kept as they were, as for a directory that cannot be listed.
    """

    compute: list[Source] = field(default_factory=list)
    keep_old: list[dict[str, Any]] = field(default_factory=list)
    keep_work: dict[str, ChunkRecord] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    old_keys: set[str] = field(default_factory=set)
    states: dict[str, SourceState] = field(default_factory=dict)
    unverified: list[dict[str, Any]] = field(default_factory=list)
    restamped: list[str] = field(default_factory=list)
    repointed: set[str] = field(default_factory=set)

    @property
    def nothing_to_do(self) -> bool:
        """True when the existing output is already up to date."""
        return not (self.compute or self.keep_work or self.removed or self.restamped)


def make_plan(
    sources: Iterable[Source],
    *,
    old_manifest: dict[str, Any] | None,
    work_records: Iterable[ChunkRecord],
    checksum: bool,
    unreadable: Iterable[UnreadableDir] = (),
    missing: Callable[[list[dict[str, Any]]], set[str]] | None = None,
) -> Plan:
    """Compare the inputs with the existing output and the work directory.

    Parameters
    ----------
    sources : iterable of Source
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
        ``missing(entries)`` -> the keys among the entries to keep that the
        existing output does not actually hold (see `melcli.writers.missing_entries`).

    Returns
    -------
    Plan
    """
    plan = Plan()
    old_entries = {e["key"]: e for e in (old_manifest or {}).get("entries", [])}
    old_failures = {f["key"]: f for f in (old_manifest or {}).get("failures", [])}
    plan.old_keys = set(old_entries)
    work = {rec.record["key"]: rec for rec in work_records}
    present: dict[str, Source] = {}
    for src in sources:
        present[src.key] = src
        state = source_state(src.path, checksum=checksum)
        plan.states[src.key] = state
        old = old_entries.get(src.key)
        done = work.get(src.key)
        # The source path is part of a record's identity: a key that now comes from
        # another file is computed again, unless its bytes are the same (--checksum).
        source = printable(src.path)
        moved = old is not None and old.get("source") != source
        if old is not None and state.matches(old) and (not moved or state.same_bytes(old)):
            if moved or (state.hash is not None and "source_hash" not in old):
                old = {**old, "source": source, **state.fields()}
                plan.restamped.append(src.key)
                if moved:
                    plan.repointed.add(src.key)
            plan.keep_old.append(old)  # the output already has it
        elif old is not None and not moved and state.unreadable is not None:
            plan.keep_old.append(old)  # there, unreadable for now
            plan.unverified.append({"key": src.key, "source": source, "reason": state.unreadable})
        elif (
            done is not None and done.record.get("source") == source and state.matches(done.record)
        ):
            if done.kind == "entry":
                plan.keep_work[src.key] = done
            else:
                plan.failures.append(done.record)
        elif (
            src.key in old_failures
            and old_failures[src.key].get("source") == source
            and state.matches(old_failures[src.key])
            and is_content_failure(old_failures[src.key]["reason"])
        ):
            plan.failures.append(old_failures[src.key])
        else:
            plan.compute.append(src)
    dirs = list(unreadable)
    hidden = tuple(d.prefix for d in dirs)

    def under_hidden(key: str) -> bool:
        return any(is_under(key, p) for p in hidden)

    for key in sorted(set(old_entries) - present.keys()):
        if under_hidden(key):
            plan.keep_old.append(old_entries[key])
            plan.states[key] = SourceState(None, None)
        else:
            plan.removed.append(key)
    for key, old_failure in old_failures.items():  # failures under them stay too
        if (
            key not in present
            and under_hidden(key)
            and not old_failure["reason"].startswith(DIRECTORY_FAILURE)
        ):
            plan.failures.append(old_failure)
    plan.failures.extend(directory_failure(d) for d in dirs)
    if missing is not None and plan.keep_old:
        lost = missing(plan.keep_old)
        if lost:  # an entry deleted from the output by hand: never copy what is not there
            plan.repaired = sorted(lost)
            plan.keep_old = [e for e in plan.keep_old if e["key"] not in lost]
            plan.restamped = [k for k in plan.restamped if k not in lost]
            plan.repointed -= lost
            for key in plan.repaired:
                if key in present:
                    plan.compute.append(present[key])
                else:  # under a directory that cannot be read now: nothing to compute it from
                    plan.removed.append(key)
                    del plan.states[key]
            plan.removed.sort()
    return plan
