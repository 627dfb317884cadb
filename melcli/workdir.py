"""Crash-safe progress beside the output: the writer lock and the chunk spool.

The new output is built under a temporary name while the workers compute, but
an HDF5 file open for writing is often unreadable after a crash, so it cannot
be what a resume starts from. That is the chunk files' job: every few seconds
(a checkpoint) the entries finished since the last one are copied into a
self-contained chunk (``.<output>.melcli-work/chunk-NNNNNN.bin``, see
`write_chunk`), written to a temporary name, fsynced and renamed, so a chunk is
either complete or absent whatever instant the process dies. A run that ends
before its first checkpoint writes no chunk: its features are written once.
The work directory is removed once the output is committed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from melcli.errors import OutputError
from melcli.manifest import fsync_path

#: A checkpoint copies finished entries into chunk files this often (seconds);
#: ``MELCLI_CHECKPOINT_SECONDS`` overrides it (0: after every result).
FLUSH_SECONDS = 5.0
#: Features kept in memory for the next checkpoint, at most (bytes); beyond, the
#: checkpoint reads them back from the output being built. Also a chunk's size.
FLUSH_BYTES = 64 << 20
STATE_VERSION = 1


def hidden_sibling(output: Path, suffix: str) -> Path:
    """``feats.h5`` -> ``.feats.h5<suffix>`` in the same directory."""
    return output.with_name(f".{output.name}{suffix}")


def fault_point(name: str) -> None:
    """Test-only fault injection: SIGKILL (or another signal) this process at a named point.

    ``MELCLI_KILL_AT=<name>[:<n>[:<SIGNAL>]]`` sends SIGKILL (or SIGNAL, e.g.
    ``TERM``) to this process the n-th time (default 1) execution reaches
    ``name``. Used by the tests to prove crash safety at the worst moments; a
    no-op otherwise.
    """
    spec = os.environ.get("MELCLI_KILL_AT")
    if not spec:
        return
    target, count, sig = (spec.split(":") + ["", ""])[:3]
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}") if sig else signal.SIGKILL)


_hits: dict[str, int] = {}


class WriteFailed(OutputError):
    """Writing the new output failed; the runner words the message once it has cleaned up.

    ``error`` is the OSError, or the RuntimeError h5py raises for a failed
    write inside HDF5 (its message carries the C library's errno).
    """

    def __init__(self, path: Path, error: BaseException) -> None:
        super().__init__(f"cannot write {path}: {getattr(error, 'strerror', None) or error}")
        self.path = path
        self.error = error


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, from an OSError or from the text of an HDF5 error."""
    if isinstance(exc, WriteFailed):
        exc = exc.error
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)  # h5py reports the C library's errno inside its message
    return any(s in text for s in ("errno = 28,", "errno = 122,", "No space left", "quota"))


def free_bytes(path: Path) -> int:
    """Bytes this process may still write on the filesystem holding ``path``.

    root may use the blocks reserved for it, so they count for root.
    """
    try:
        st = os.statvfs(path if path.is_dir() else path.parent)
    except OSError:
        return 0
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def disk_error(
    action: str, path: Path, exc: BaseException, needed: int | None = None
) -> OutputError:
    """An OutputError for a failed write, with the space needed and free for ENOSPC/EDQUOT."""
    if is_disk_full(exc):
        need = f"needed about {_mb(needed)}, " if needed else ""
        return OutputError(
            f"disk full while {action} {path}: {need}{_mb(free_bytes(path))} free on its filesystem"
        )
    if isinstance(exc, WriteFailed):
        exc = exc.error
    verb = {"writing": "write", "creating": "create"}.get(action, action)
    return OutputError(f"cannot {verb} {path}: {getattr(exc, 'strerror', None) or exc}")


def _mb(n: int | float | None) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"


class OutputLock:
    """An OS file lock (flock) beside the output: one writer at a time.

    The kernel drops the lock when its holder dies, so a lock left by a killed
    run never blocks the next run. The file holds the holder's pid and command,
    to name it in the message a second run prints. It is opened without
    following a symbolic link and without truncating anything before the lock
    is held, so a link or hard link planted at its name cannot make melcli
    write into another file.
    """

    def __init__(self, output: Path) -> None:
        self.path = hidden_sibling(output, ".lock")
        self._fd: int | None = None

    def acquire(self, command: str) -> None:
        """Take the lock or raise OutputError naming the running holder."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(
                    f"lock {self.path} is a symbolic link; refusing to follow it (remove it)"
                ) from None
            raise OutputError(f"cannot create lock {self.path}: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a hard link"
            raise OutputError(f"lock {self.path} is {what}; refusing to use it (remove it)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise OutputError(
                f"another melcli is writing this output ({holder or 'unknown process'}); "
                f"lock {self.path}"
            ) from None
        try:  # best effort: the lock is what matters, the text only names its holder
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {command}\n".encode("utf-8", "replace"), 0)
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the lock file stays: removing it would race)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


#: Fields a part of a long file adds to its entry record in a chunk.
PART_FIELDS = ("part", "parts", "frame_start")
#: Fields of a piece a worker wrote into a shard file (``--shards``): the chunk
#: holds an empty array in its place.
SHARD_FIELDS = ("shard", "dataset", "frames")
#: Fields of an entry whose bytes are in the output the run was building (`RawPiece`):
#: the chunk holds an empty array in its place.
RAW_FIELDS = ("raw_file", "raw_offset")
#: Fields of a piece's record that are not the entry's.
_PIECE_FIELDS = PART_FIELDS + SHARD_FIELDS + RAW_FIELDS


@dataclass(frozen=True)
class ChunkRecord:
    """One finished entry or failure found in the chunk files.

    ``pieces`` locates an entry's data: (chunk file, array index, first frame,
    shard, raw) per part, in frame order; one piece at frame 0 for a whole file.
    ``shard`` is None, or for a piece a worker wrote into a shard file
    (``--shards``) its (shard file, dataset, frames); ``raw`` is None, or for a
    whole entry of an HDF5 output where its bytes lie (`RawPiece`). The chunk's
    array is then empty.
    """

    kind: str  # "entry" or "failure"
    record: dict[str, Any]
    pieces: tuple[Piece, ...] = ()


@dataclass(frozen=True)
class RawPiece:
    """A checkpointed entry's bytes in the HDF5 output its run was building: C-order
    ``record['dtype']`` values of ``record['shape']`` at ``offset`` in ``path`` (a hard
    link in the work directory to that file, made durable first: `Writer.durable`).
    A long run's checkpoints then copy no feature data."""

    path: Path
    offset: int

    def read(self, record: dict[str, Any]) -> np.ndarray:
        """The entry's array (``record``: its manifest record)."""
        dtype, shape = np.dtype(record["dtype"]), tuple(record["shape"])
        count = int(np.prod(shape))
        data = np.fromfile(self.path, dtype=dtype, count=count, offset=self.offset)
        if data.size != count:  # checked by `WorkDir.records`: the file shrank since
            raise DamagedChunk(f"{self.path} is truncated")
        return data.reshape(shape)


Piece = tuple[Path, int, int, "tuple[str, str, int] | None", "RawPiece | None"]


CHUNK_MAGIC = b"MELCHNK1"
_ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def write_chunk(fh: BinaryIO, meta: dict[str, Any], arrays: list[np.ndarray]) -> None:
    """Write one chunk: magic, header length, JSON header, then raw arrays.

    A chunk is self-contained: the header lists each array's dtype, shape and
    byte offset. (npz would do, but reading a member back costs ~0.3 ms of zip
    parsing, which is a third of the whole cost of a one-second clip.)
    """
    members, offset = [], 0
    contiguous = [np.ascontiguousarray(a) for a in arrays]
    for a in contiguous:
        members.append({"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset})
        offset += _aligned(a.nbytes)
    header = json.dumps({**meta, "members": members}).encode("utf-8")
    start = _aligned(len(CHUNK_MAGIC) + 8 + len(header))
    fh.write(CHUNK_MAGIC + len(header).to_bytes(8, "little") + header)
    fh.write(b"\0" * (start - len(CHUNK_MAGIC) - 8 - len(header)))
    for a in contiguous:
        fh.write(a.data)
        fh.write(b"\0" * (_aligned(a.nbytes) - a.nbytes))


class DamagedChunk(ValueError):
    """A chunk file that is not complete and well-formed (truncated, overwritten)."""


class ChunkFile:
    """A chunk opened for reading: ``meta`` (the header) and `read`.

    Opening checks the whole layout against the file's size, so a truncated or
    damaged chunk raises `DamagedChunk` here, never later halfway through a run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            self.meta, self._start = self._check()
        except BaseException:
            self._fh.close()
            raise

    def _check(self) -> tuple[dict[str, Any], int]:
        total = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(len(CHUNK_MAGIC) + 8)
        if head[: len(CHUNK_MAGIC)] != CHUNK_MAGIC or len(head) < len(CHUNK_MAGIC) + 8:
            raise DamagedChunk("not a melcli chunk")
        size = int.from_bytes(head[len(CHUNK_MAGIC) :], "little")
        if len(head) + size > total:
            raise DamagedChunk("truncated header")
        try:
            meta = json.loads(self._fh.read(size).decode("utf-8"))
            members = meta["members"]
            if not (isinstance(meta["entries"], list) and isinstance(meta["failures"], list)):
                raise TypeError("entries/failures")
            if len(members) != len(meta["entries"]):
                raise ValueError("one array per entry")
            start = _aligned(len(head) + size)
            for m in members:
                nbytes = np.dtype(m["dtype"]).itemsize * int(np.prod(m["shape"]))
                if start + int(m["offset"]) + nbytes > total:
                    raise DamagedChunk("truncated")
        except DamagedChunk:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise DamagedChunk(f"unreadable header ({type(exc).__name__})") from None
        return meta, start

    def read(self, index: int) -> np.ndarray:
        """Array number ``index`` of the chunk."""
        m = self.meta["members"][index]
        dtype = np.dtype(m["dtype"])
        count = int(np.prod(m["shape"]))
        self._fh.seek(self._start + m["offset"])
        data = np.fromfile(self._fh, dtype=dtype, count=count)
        if data.size != count:  # checked when opened: the file shrank since
            raise DamagedChunk(f"{self.path} is truncated")
        return data.reshape(m["shape"])

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> ChunkFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkDir:
    """Everything temporary of one output, in ``.<output>.melcli-work/``.

    ``state.json`` and the chunk files (the resumable progress), the new output
    while it is built (``new-<pid>...``) and, during a directory swap, the
    previous tree (``old-<pid>``, then ``trash-<pid>`` while it is deleted).
    Nothing temporary lives beside the output, so one output's cleanup never
    touches another's, whatever their names.
    """

    def __init__(self, output: Path) -> None:
        self.path = hidden_sibling(output, ".melcli-work")
        self.state_path = self.path / "state.json"
        #: the shard files workers write (``--shards``), kept for a resume like the chunks
        self.shards = self.path / "shards"
        #: chunks `records` found damaged (path, why); their entries are computed again
        self.damaged: list[tuple[Path, str]] = []

    def check(self) -> None:
        """Refuse a work directory that is a link, not a directory, or someone else's.

        Raises
        ------
        OutputError
            It is a symbolic link (it would send melcli's writes and deletions
            elsewhere), not a directory, or owned by another user.
        """
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(f"cannot use {self.path}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(st.st_mode):
            raise OutputError(
                f"work directory {self.path} is a symbolic link; refusing to follow it (remove it)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{self.path} is not melcli's work directory; remove it")
        if st.st_uid != os.geteuid():
            raise OutputError(
                f"work directory {self.path} belongs to another user (uid {st.st_uid}); "
                "refusing to use it"
            )

    def create(self) -> None:
        """Make the directory (mode 0700), or check the one that is there."""
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise disk_error("creating", self.path, exc) from None
        self.check()

    def temp(self, name: str) -> Path:
        """``new-<pid><suffix>``-like names of this run's temporaries, inside the directory."""
        return self.path / f"{name}-{os.getpid()}"

    def remove_temporaries(self) -> None:
        """Delete what killed runs left: new outputs, and old trees being deleted."""
        if not self.path.is_dir() or self.path.is_symlink():
            return
        for prefix in ("new-", "old-", "trash-"):
            for path in self.path.glob(prefix + "*"):
                _remove(path)

    def old_trees(self) -> list[Path]:
        """Whole previous npy trees a swap cut between its renames left here."""
        if not self.path.is_dir() or self.path.is_symlink():
            return []
        return sorted(self.path.glob("old-*"), key=lambda p: p.stat().st_mtime)

    def exists(self) -> bool:
        """True when an earlier run left progress here."""
        return self.state_path.is_file()

    def read_state(self) -> dict[str, Any] | None:
        """The state of the run that left this directory, or None if unreadable."""
        try:
            with open(self.state_path, encoding="utf-8") as fh:
                state = json.load(fh)
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None

    def start(self, state: dict[str, Any], *, keep: bool) -> None:
        """Create (or, with ``keep``, reuse) the directory and record ``state``."""
        if not keep:
            self.remove()
        self.create()
        try:
            for stale in self.path.glob("*.tmp"):
                stale.unlink()
            tmp = self.path / "state.json.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({**state, "version": STATE_VERSION}, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
            fsync_path(self.path)
        except OSError as exc:
            raise disk_error("writing", self.path, exc) from None

    def chunks(self) -> list[Path]:
        """Complete chunk files, oldest first."""
        return sorted(self.path.glob("chunk-*.bin"))

    def records(self) -> Iterator[ChunkRecord]:
        """Every complete entry and every failure stored in the chunks.

        The parts of a long file are gathered into one entry, and only when all
        of them are present; a failure recorded for a key wins over its parts.
        """
        entries: dict[str, dict[str, Any]] = {}
        pieces: dict[str, dict[int, Piece]] = {}
        raw_sizes: dict[str, int] = {}  # raw file -> its size (-1: missing)
        failures: dict[str, dict[str, Any]] = {}
        self.damaged = []
        for chunk in self.chunks():
            try:
                with ChunkFile(chunk) as cf:
                    meta = cf.meta
            except (OSError, DamagedChunk) as exc:  # a chunk is renamed complete, but disks lie
                self.damaged.append((chunk, str(exc)))
                continue
            # within a chunk, failures were spooled after the parts that preceded them
            for member, rec in enumerate(meta["entries"]):
                key = rec["key"]
                part = int(rec.get("part", 0))
                raw = None
                if "raw_file" in rec:  # its bytes are in the output its run was building
                    raw = RawPiece(self.path / str(rec["raw_file"]), int(rec["raw_offset"]))
                    if not _raw_present(raw, rec, raw_sizes):  # deleted by hand: computed again
                        continue
                failures.pop(key, None)  # a later success wins
                whole = {k: v for k, v in rec.items() if k not in _PIECE_FIELDS}
                whole["_parts"] = int(rec.get("parts", 1))
                if entries.get(key) != whole:  # first sight, or a later run's new version
                    entries[key] = whole
                    pieces[key] = {}
                shard = (
                    (str(rec["shard"]), str(rec["dataset"]), int(rec["frames"]))
                    if "shard" in rec
                    else None
                )
                pieces[key][part] = (chunk, member, int(rec.get("frame_start", 0)), shard, raw)
            for rec in meta["failures"]:
                failures[rec["key"]] = rec  # a later failure wins
                entries.pop(rec["key"], None)
                pieces.pop(rec["key"], None)
        for rec in failures.values():
            yield ChunkRecord("failure", rec)
        for key, rec in entries.items():
            n_parts = rec.pop("_parts")
            got = pieces[key]
            if len(got) == n_parts:
                yield ChunkRecord("entry", rec, tuple(got[i] for i in range(n_parts)))

    def remove(self) -> None:
        """Delete the directory and everything in it (never through a link)."""
        if self.path.is_dir() and not self.path.is_symlink():
            _remove(self.path)


def _raw_present(raw: RawPiece, rec: dict[str, Any], sizes: dict[str, int]) -> bool:
    """The file of ``raw`` holds the entry of ``rec`` (its size says so)."""
    name = str(raw.path)
    if name not in sizes:
        try:
            st = os.stat(raw.path, follow_symlinks=False)
            sizes[name] = st.st_size if stat.S_ISREG(st.st_mode) else -1
        except OSError:
            sizes[name] = -1
    nbytes = np.dtype(rec["dtype"]).itemsize * int(np.prod(rec["shape"]))
    return raw.offset >= 0 and raw.offset + nbytes <= sizes[name]


def _remove(path: Path) -> None:
    from melcli.store import remove_tree  # no recursion: npy trees may be deep

    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)


#: What the spool holds for an entry whose bytes it does not copy (a shard's, a raw one's).
_NO_DATA = np.empty((0,), np.float32)
_NO_DATA.flags.writeable = False


def _checkpoint_seconds() -> float:
    value = os.environ.get("MELCLI_CHECKPOINT_SECONDS", "")
    try:
        return max(0.0, float(value)) if value else FLUSH_SECONDS
    except ValueError:
        return FLUSH_SECONDS


class Spool:
    """The resume record of a run: checkpoints of finished work, as chunk files.

    Every finished entry is also written straight into the new output by the
    runner; the spool copies the entries finished since the last checkpoint
    into chunk files every `FLUSH_SECONDS`, so a killed run loses at most the
    last few seconds of work. Their arrays are kept in memory up to
    `FLUSH_BYTES` and otherwise read back with ``read_back(key, frame, n)``.
    """

    def __init__(
        self,
        workdir: WorkDir,
        read_back: Callable[[str, int, int], np.ndarray] | None = None,
        durable: Callable[[], str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.read_back = read_back
        self.durable = durable  # for entries noted with a "raw_offset" (`Writer.durable`)
        existing = [int(p.stem.split("-")[1]) for p in workdir.chunks()]
        self._seq = max(existing, default=0)
        # [record, frames, array or None (to be read back)]
        self._entries: list[list[Any]] = []
        self._failures: list[dict[str, Any]] = []
        self._held = 0
        self._last = time.monotonic()
        self.interval = _checkpoint_seconds()

    def add_entry(
        self, record: dict[str, Any], data: np.ndarray, *, borrowed: bool = False
    ) -> None:
        """Note one finished entry (or part, with ``frame_start``) for the next checkpoint.

        ``borrowed``: ``data`` is memory its executor reuses (`Result.borrowed`): a copy is
        kept. A record with a ``raw_offset`` (where `Writer.write_piece` put a whole entry's
        bytes) needs no data: the checkpoint points at them (`RawPiece`).
        """
        if "raw_offset" in record:
            data = _NO_DATA
        self._entries.append([record, data.shape[-1], data.copy() if borrowed else data])
        self._held += data.nbytes
        if self._held > FLUSH_BYTES and self.read_back is not None:
            for pending in self._entries:
                if "shard" not in pending[0] and "raw_offset" not in pending[0]:
                    pending[2] = None  # read back at the checkpoint (the others need nothing)
            self._held = 0
        self._maybe_flush()

    def add_failure(self, record: dict[str, Any]) -> None:
        """Note one failed input."""
        self._failures.append(record)
        self._maybe_flush()

    def discard(self, key: str) -> None:
        """Forget the pending parts of ``key`` (another part of its file failed)."""
        self._entries = [e for e in self._entries if e[0]["key"] != key]

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Checkpoint: write everything pending as new chunk files (each atomically).

        An entry that cannot be read back (its output is broken) is left out:
        a resume computes it again.
        """
        self._last = time.monotonic()
        group: list[tuple[dict[str, Any], np.ndarray]] = []
        size = 0
        raw_file = None
        if any("raw_offset" in e[0] for e in self._entries):
            try:
                assert self.durable is not None
                raw_file = self.durable()  # the bytes on disk before the chunk says so
            except Exception:  # an output broken by a full disk: those are computed again
                raw_file = None
        for record, frames, data in self._entries:
            if "raw_offset" in record:
                if raw_file is None:
                    continue
                record = {**record, "raw_file": raw_file}
            elif data is None:
                try:
                    assert self.read_back is not None
                    data = self.read_back(record["key"], int(record.get("frame_start", 0)), frames)
                except Exception:  # e.g. an output broken by a full disk
                    continue
            if group and size + data.nbytes > FLUSH_BYTES:
                self._write(group, [])
                group, size = [], 0
            group.append((record, data))
            size += data.nbytes
        if group or self._failures:
            self._write(group, self._failures)
        self._entries, self._failures, self._held = [], [], 0

    def _write(
        self, entries: list[tuple[dict[str, Any], np.ndarray]], failures: list[dict[str, Any]]
    ) -> None:
        self._seq += 1
        final = self.workdir.path / f"chunk-{self._seq:06d}.bin"
        tmp = final.with_suffix(".tmp")
        meta = {"entries": [rec for rec, _ in entries], "failures": failures}
        try:
            with open(tmp, "wb") as fh:
                write_chunk(fh, meta, [data for _, data in entries])
                fh.flush()
                fault_point("chunk-write")
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_path(self.workdir.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise WriteFailed(final, exc) from None  # the runner says how much space the run needs
