"""The storage layer: the output layout, format detection, and for each format
(HDF5, a tree of .npy files, a Kaldi ark + scp) its writer and its reader side by side.

Layout: an HDF5 output holds entry ``KEY`` at ``/features/KEY`` and its manifest
in ``/manifest`` (a copy in the JSON sidecar ``<stem>.json``); an npy output is a
directory of ``KEY.npy`` files and ``manifest.json``; a Kaldi output is a
directory of ``feats.ark`` (every entry, transposed to Kaldi's (frames, rows),
in key order), ``feats.scp`` (``KEY ARK:OFFSET`` lines) and ``manifest.json``.
Only this module spells these names out (`h5_dataset`, `npy_file`, `NPY_MANIFEST`,
`KALDI_ARK`, `KALDI_SCP`, `shards_dir`). With ``--shards`` (a Dask cluster) an
HDF5 output's ``/features/KEY`` may be a virtual dataset mapping datasets of
shard files in ``<output>.shards/`` beside it (``feats.h5.shards/shard-<hex>.h5``,
written by the workers, `write_shard`); its reader reads only those
(`H5Reader._check_virtual`).

Writers live only in the parent process (the one writer; with ``--shards`` the
workers write the arrays into new shard files and the writer links them in,
`Writer.link_piece`). New entries are
written as they are computed; entries of the previous output (copied byte for
byte) and entries resumed from an interrupted run are added at the end. Each
writer builds its result in the output's work directory (``.<output>.melcli-work/``)
and moves it into place only in `Writer.commit`, after it is flushed to disk, so an
existing output is never half-overwritten and an aborted run leaves nothing at
the output path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from melcli import manifest as manifest_mod
from melcli.discover import open_regular, printable, valid_key
from melcli.errors import EntryError, OutputError
from melcli.workdir import WorkDir, WriteFailed, fault_point

FORMATS = ("h5", "npy", "kaldi")
#: Formats whose output is a directory with `NPY_MANIFEST` inside.
DIR_FORMATS = ("npy", "kaldi")
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
#: The HDF5 group holding the entries, and the npy output's manifest file.
FEATURES_GROUP = "features"
NPY_MANIFEST = "manifest.json"
#: A Kaldi output's archive and its index (Kaldi's ``ark:``/``scp:`` pair).
KALDI_ARK, KALDI_SCP = "feats.ark", "feats.scp"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def h5_dataset(key: str) -> str:
    """The HDF5 path of entry ``key``."""
    return f"{FEATURES_GROUP}/{key}"


def npy_file(output: Path, key: str) -> Path:
    """The file of entry ``key`` in an npy output."""
    return output / f"{key}.npy"


#: ``--shards``: the directory beside an HDF5 output holding its shard files
#: (``feats.h5`` -> ``feats.h5.shards/``), and their names (``shard-<hex>.h5``).
SHARDS_SUFFIX = ".shards"
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".h5"


def shards_dir(output: Path) -> Path:
    """The shard directory of the HDF5 output ``output`` (``feats.h5.shards``).

    Named after the whole file name, not its stem: ``a.h5`` and ``a.hdf5`` in one
    directory never share (and clean up) each other's shards.
    """
    return output.with_name(output.name + SHARDS_SUFFIX)


def is_shard_name(name: str) -> bool:
    """True for the name of a shard file melcli writes (``shard-<hex>.h5``)."""
    middle = name[len(SHARD_PREFIX) : -len(SHARD_SUFFIX)]
    return (name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX) and len(middle) > 0
            and all(c in "0123456789abcdef" for c in middle))  # fmt: skip


def write_shard(directory: Path, pieces: list[tuple[str, int, np.ndarray]]) -> str:
    """Write arrays into a new shard file of ``directory``; return its name (on a worker).

    A shard is self-contained: dataset ``eN`` holds the N-th array (contiguous,
    every byte written), with the ``key`` and ``frame_start`` of its entry as
    attributes. It is written under a temporary name, fsynced and renamed, so a
    shard file is complete or absent whatever instant its worker dies; the name
    is new for every call (a task run again writes a shard of its own).

    Parameters
    ----------
    directory : Path
        The run's shard directory (in the output's work directory).
    pieces : list of (str, int, ndarray)
        Key, first frame and array of each result.

    Returns
    -------
    str
        The shard file's name.
    """
    import uuid

    import h5py

    name = f"{SHARD_PREFIX}{uuid.uuid4().hex}{SHARD_SUFFIX}"
    tmp = directory / f".{name}.tmp"
    try:
        with h5py.File(tmp, "x") as f:
            for n, (key, frame, data) in enumerate(pieces):
                ds = f.create_dataset(f"e{n}", data=np.ascontiguousarray(data), track_times=False)
                ds.attrs["key"] = key
                ds.attrs["frame_start"] = frame
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        fault_point("shard-rename")
        os.replace(tmp, directory / name)
        manifest_mod.fsync_path(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return name


def write_npy_shards(directory: Path, arrays: list[np.ndarray]) -> list[str]:
    """Write each array into a new .npy file of ``directory``; return their names (on a worker).

    Each is written as the npy writer writes an entry (`_save_npy`), under a
    temporary name, fsynced and renamed (complete or absent), with one fsync of
    the directory for them all; names are new for every call.
    """
    import uuid

    names = []
    for data in arrays:
        name = f"{SHARD_PREFIX}{uuid.uuid4().hex}.npy"
        tmp = directory / f".{name}.tmp"
        try:
            _save_npy(tmp, data)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        names.append(name)
    fault_point("shard-rename")
    manifest_mod.fsync_path(directory)
    return names


def read_shard_piece(path: Path, dataset: str) -> np.ndarray:
    """The array of dataset ``dataset`` of the HDF5 shard file ``path`` (or of the
    .npy shard file ``path``, whose ``dataset`` is '')."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f[dataset][()])


def guess_format(output: str | os.PathLike[str]) -> str:
    """``h5`` for ``*.h5`` / ``*.hdf5`` / ``*.hdf``, else ``npy`` (a directory of .npy files)."""
    return "h5" if Path(output).suffix.lower() in H5_SUFFIXES else "npy"


def manifest_path(output: str | os.PathLike[str], fmt: str) -> Path:
    """Where the JSON manifest of an output lives.

    ``feats.h5`` -> ``feats.json`` beside it; ``feats/`` -> ``feats/manifest.json``.
    """
    out = Path(output)
    return out.with_suffix(".json") if fmt == "h5" else out / NPY_MANIFEST


#: HDF5 root attribute: the sha256 of /manifest's text. A rerun reads the JSON
#: sidecar instead when it has this digest: h5py needs about five times a
#: variable-length string's size to read it (1.7 GB for the 316 MB of a million
#: entries), a file read once its size.
DIGEST_ATTR = "manifest_sha256"


def read_manifest(output: Path, fmt: str) -> dict[str, Any]:
    """The manifest of an existing output (for HDF5, the copy inside the file,
    or the sidecar when it is byte for byte that copy).

    The sidecar is read when it has /manifest's digest and the HDF5 file was not
    modified after it (its mtime): nothing was changed in the file by hand since
    melcli wrote both. ``entries.untouched`` then says so.

    Raises
    ------
    OutputError
        Not a readable melcli output of this format.
    """
    if fmt in DIR_FORMATS:
        if not output.is_dir():
            raise OutputError(f"{output} is not a melcli {fmt} output directory")
        return manifest_mod.read_entries(output / NPY_MANIFEST, str(output))
    import h5py

    try:
        with h5py.File(output, "r") as f:
            text = _sidecar_copy(output, f)
            if text is None:
                return h5_manifest(f, str(output))
        man = manifest_mod.loads(text, str(output), "/manifest")
        man["entries"].untouched = True
        return man
    except OSError as exc:
        if "unable to lock file" in str(exc):
            raise OutputBusyError(
                f"{output} is open for writing in another process ({holders(output)}); "
                "close it there and rerun"
            ) from None
        raise OutputError(f"{output} is not a readable melcli HDF5 output ({exc})") from None


def _sidecar_copy(output: Path, f: Any) -> bytes | None:
    """The sidecar's text if it is /manifest's (`DIGEST_ATTR`) and the HDF5 file
    is no newer than the sidecar."""
    digest = f.attrs.get(DIGEST_ATTR)
    side = f.attrs.get("sidecar")
    path = output.parent / side if isinstance(side, str) else manifest_path(output, "h5")
    if not isinstance(digest, str):
        return None
    try:
        if os.stat(output).st_mtime_ns >= os.stat(path).st_mtime_ns:
            return None
        text = manifest_mod.read_bytes(path)
    except (OutputError, OSError):
        return None
    return text if hashlib.sha256(text).hexdigest() == digest else None


def h5_manifest(f: Any, where: str) -> dict[str, Any]:
    """The manifest inside an open HDF5 output, checked (`manifest.loads`).

    Only a scalar variable-length string is read: its bytes are really in the
    file, so a crafted ``/manifest`` (a huge sparse array) is never read whole.

    Raises
    ------
    OutputError
        No manifest, or not a melcli one.
    """
    import h5py

    ds = f.get("manifest")
    string = isinstance(ds, h5py.Dataset) and h5py.check_string_dtype(ds.dtype)
    if not string or ds.shape != () or string.length is not None:
        what = "no /manifest" if ds is None else f"/manifest is not one JSON text ({ds!r})"
        raise OutputError(f"{where} is not a melcli output: {what}")
    try:
        text = ds[()]
    except OSError as exc:
        raise OutputError(f"{where} is not a melcli output: /manifest: {exc}") from None
    return manifest_mod.loads(text, where, "/manifest")


def check_h5_output(output: Path) -> str | None:
    """Check that ``output`` is a melcli HDF5 file without reading its manifest.

    Returns where it recorded its JSON sidecar (None: ``<stem>.json``).

    Raises
    ------
    OutputError
        Not an HDF5 file melcli wrote.
    """
    import h5py

    try:
        with h5py.File(output, "r") as f:
            if "manifest" not in f or "melcli_version" not in f.attrs:
                raise OutputError(f"{output} has no melcli manifest")
            side = f.attrs.get("sidecar")
    except (OSError, RuntimeError, ValueError) as exc:
        raise OutputError(f"{output} is not a readable HDF5 file ({exc})") from None
    return side if isinstance(side, str) else None


class OutputBusyError(OutputError):
    """The output is held open for writing (HDF5 file lock) by another process."""


def holders(path: Path) -> str:
    """``pid 123: python3 train.py`` for each other process with ``path`` open (Linux /proc)."""
    try:
        st = os.stat(path)
    except OSError:
        return "unknown process"
    found = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                s = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    cmd = "?"
                found.append(f"pid {pid}: {cmd[:200]}")
                break
    return ", ".join(found) or "unknown process"


#: An .npy file is its array's bytes plus a header of 64 bytes to a few hundred.
_NPY_HEADER_MAX = 4096


def missing_entries(
    output: Path, fmt: str, table: manifest_mod.EntryTable, rows: Iterable[int]
) -> set[str]:
    """Keys of ``rows`` of ``table`` that the existing ``output`` does not hold intact.

    Cheap enough for every rerun: npy, one ``stat`` per entry (a regular file of
    the recorded array's size plus a header); HDF5, one walk of ``/features``
    in the C library (the dataset exists; its shape is not read: opening every
    dataset would triple the cost of a rerun with nothing to do).
    """
    keys = table.keys
    if fmt == "kaldi":  # listed in the scp, and the ark long enough to hold it
        try:
            index = KaldiReader(output).index()
            size = os.stat(output / KALDI_ARK).st_size
        except (OutputError, OSError):
            return {keys[r] for r in rows}
        end = {keys[r]: index.get(keys[r], size) + _KALDI_HEADER + int(table.nbytes[r])
               for r in rows}  # fmt: skip
        return {key for key, stop in end.items() if stop > size}
    if fmt == "npy":
        lost = set()
        for r in rows:
            try:
                st = os.stat(npy_file(output, keys[r]))
            except OSError:
                lost.add(keys[r])
                continue
            extra = st.st_size - int(table.nbytes[r])
            if not (stat.S_ISREG(st.st_mode) and 0 < extra <= _NPY_HEADER_MAX):
                lost.add(keys[r])
        return lost
    import h5py
    from h5py import h5o

    datasets: set[bytes] = set()

    def visit(name: bytes, info: Any) -> None:
        if info.type == h5o.TYPE_DATASET:
            datasets.add(name)

    try:
        with h5py.File(output, "r") as f:
            if FEATURES_GROUP in f:
                h5o.visit(h5o.open(f.id, FEATURES_GROUP.encode()), visit, info=True)
    except (OSError, KeyError) as exc:
        raise OutputError(f"cannot read {output}: {exc}") from None
    return {keys[r] for r in rows if keys[r].encode("utf-8") not in datasets}


def check_key(key: str) -> None:
    """Refuse keys that could escape the output (absolute, ``..``, empty parts).

    Raises
    ------
    EntryError
        An OutputError about this one key.
    """
    if not valid_key(key):
        raise EntryError(f"unsafe key {key!r}")


#: errno values of a write that fail because of the entry's name, not the output:
#: the entry becomes a failure of its input and the batch goes on.
NAME_ERRNOS = {errno.ENAMETOOLONG: "name too long for the output's file system",
               errno.EINVAL: "name not accepted by the output's file system",
               errno.EILSEQ: "name not accepted by the output's file system"}  # fmt: skip


def entry_error(exc: OSError) -> EntryError | None:
    """The EntryError an OSError of one entry's write is, or None (an output error)."""
    what = NAME_ERRNOS.get(exc.errno or 0)
    return EntryError(f"cannot store: {what}") if what else None


def makedirs(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)`` without recursion (any depth)."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir()


def remove_tree(path: Path) -> None:
    """``shutil.rmtree(path, ignore_errors=True)`` without recursion (any depth).

    Symlinks are removed, never followed; a symlink at ``path`` is left alone.
    """
    if path.is_symlink():
        return
    stack, entered = [os.fspath(path)], set()
    while stack:
        top = stack[-1]
        subdirs = []
        if top not in entered:
            entered.add(top)
            with contextlib.suppress(OSError), os.scandir(top) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.path)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
        if subdirs:
            stack.extend(subdirs)
            continue
        stack.pop()
        with contextlib.suppress(OSError):
            os.rmdir(top)


class Writer(Protocol):
    """What the assembly step needs from an output."""

    path: Path
    format: str
    warnings: list[str]
    committed: bool  # the new output is in place (set by `commit`, right after its rename)
    base: Reuse | None  # started from a copy of the old output: kept entries are in it

    def write_piece(self, record: dict[str, Any], frame: int, data: np.ndarray) -> int | None:
        """Store frames ``frame...`` of the entry ``record`` (shape ``record['shape']``).

        A whole file is one piece at frame 0; the parts of a long file may come
        in any order, the entry being created by the first one. Returns where a
        whole entry's bytes (C order) lie in the file being built, when they lie
        there in one piece, for a checkpoint that does not copy them (`durable`).
        """

    def durable(self) -> str:
        """Make everything written so far durable and return the name, in the work
        directory, of a hard link to the file being built: a checkpoint's entries
        at offsets `write_piece` returned are read back from it after a crash.
        Only for writers whose `write_piece` returns offsets."""

    def link_piece(
        self, record: dict[str, Any], frame: int, shard: str, dataset: str, frames: int
    ) -> None:
        """Add frames ``frame...`` of the entry ``record`` that a worker wrote into the
        shard file ``shard`` of the run's shard directory (``--shards``): dataset
        ``dataset`` of an HDF5 shard, or an .npy shard ('')."""

    def read_piece(self, key: str, frame: int, n_frames: int) -> np.ndarray:
        """Frames ``frame:frame + n_frames`` of an entry written before (for a checkpoint)."""

    def discard(self, key: str) -> None:
        """Drop a partly written entry (another part of its file failed)."""

    def copy_entry(
        self, record: dict[str, Any], old_output: Path, *, repointed: bool = False
    ) -> None:
        """Copy an unchanged entry byte for byte from the previous output.

        ``repointed``: its source moved (same bytes): the stored ``source``
        becomes ``record['source']``.
        """

    def add_frequencies(self, sample_rate: int, freqs: np.ndarray) -> None:
        """Store the row frequencies (Hz) of entries at ``sample_rate``."""

    def commit(self, manifest: dict[str, Any]) -> None:
        """Flush, then move the result and its manifest into place atomically."""

    def abort(self) -> None:
        """Remove everything temporary; the output path is left untouched."""


class H5Writer:
    """One HDF5 file: ``/features/<key>`` datasets, ``/frequencies/<rate>``, ``/manifest``.

    HDF5 buffers metadata and small raw writes and flushes them when an object
    is closed, so a full disk often surfaces there, not in the write call.
    Every dataset is therefore closed explicitly inside the write that made it,
    and at the first error the file is abandoned (`_abandon`): its descriptor is
    pointed at /dev/null before HDF5 closes it, so HDF5's final flush cannot
    fail, and nothing touches the broken file again.
    """

    format = "h5"

    def __init__(
        self, path: Path, tmp: Path, sidecar: Path | None = None, base: Reuse | None = None,
        compression: str = "none", shards: Path | None = None,
    ) -> None:  # fmt: skip
        import h5py

        self.path = path
        self.shards = shards  # the run's shard files, in the work directory (`link_piece`)
        self._used: set[str] = set()  # shard files the new entries are in
        self._virtual: dict[str, list[Any]] = {}  # key -> [pieces in shards, frames missing]
        self.base = base
        self._rates: set[str] = set()
        self.tmp = tmp
        self.sidecar = sidecar if sidecar is not None else manifest_path(path, "h5")
        self.warnings: list[str] = []
        self.committed = False
        self._old: Any = None
        self._broken = False
        self._partial: dict[str, list[Any]] = {}  # long files whose parts are still coming
        try:
            if base is None:
                self._file: Any = h5py.File(_create_h5(self.tmp))
            else:
                _copy_file(path, self.tmp)
                self._file = h5py.File(_open_h5(self.tmp))
            self._writeback = Writeback(self.tmp)
            self._maker = _EntryMaker(compression)
            self.compression = compression
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.tmp.unlink()
            raise WriteFailed(self.tmp, exc) from None
        if base is not None:
            with self._guard():
                del self._file["manifest"]  # written anew at the commit
            for key in base.drop:
                self.discard(key)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn any failure inside HDF5 into `WriteFailed`, abandoning the file first."""
        if self._broken:
            raise WriteFailed(self.tmp, OSError(errno.EIO, "the output was abandoned"))
        try:
            yield
        except (OSError, RuntimeError, ValueError) as exc:
            self._abandon()
            raise WriteFailed(self.tmp, exc) from None

    def write_piece(self, record: dict[str, Any], frame: int, data: np.ndarray) -> int | None:  # noqa: D102
        key = record["key"]
        shape = tuple(record["shape"])
        check_key(key)
        offset = None
        with self._guard():
            if frame == 0 and data.shape == shape:  # a whole file
                dsid = self._maker.create(self._file, record, data)
                if self.compression == "none" and data.nbytes:  # contiguous: one piece
                    offset = dsid.get_offset()
                _close(dsid)
            else:  # a part of a long file: [dataset, frames still missing]
                if key not in self._partial:
                    import h5py

                    created = h5py.Dataset(self._maker.create(self._file, record, None))
                    self._partial[key] = [created, shape[-1]]
                entry = self._partial[key]
                entry[0][..., frame : frame + data.shape[-1]] = data
                entry[1] -= data.shape[-1]
                if entry[1] <= 0:
                    del self._partial[key]
                    _close(entry[0])
            if not self._partial:  # parts land all over their dataset: keep its pages
                self._writeback.wrote(data.nbytes)
        fault_point("write")
        return offset

    def _raw_link(self) -> Path:
        return self.tmp.with_name("raw-" + self.tmp.name.removeprefix("new-"))

    def durable(self) -> str:  # noqa: D102
        link = self._raw_link()
        with self._guard():
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # HDF5 writes raw data straight to the file (no sieve buffer)
            finally:
                os.close(fd)
            if not link.exists():
                os.link(self.tmp, link)  # made durable by the checkpoint's fsync of the directory
        return link.name

    def link_piece(
        self, record: dict[str, Any], frame: int, shard: str, dataset: str, frames: int
    ) -> None:
        """Add frames ``frame...`` of entry ``record`` written by a worker into a shard file.

        ``shard`` is a file of the run's shard directory (``self.shards``) and
        ``dataset`` its dataset holding the ``frames`` frames. Once the pieces
        cover the entry, ``/features/<key>`` is created as a virtual dataset
        mapping them (`_EntryMaker.virtual`), with the attributes of any entry;
        `commit` moves the shard files beside the output (`shards_dir`).
        """
        key = record["key"]
        shape = tuple(record["shape"])
        check_key(key)
        entry = self._virtual.setdefault(key, [[], shape[-1]])
        entry[0].append((frame, frames, shard, dataset))
        entry[1] -= frames
        if entry[1] > 0:
            return
        del self._virtual[key]
        with self._guard():
            if 0 in shape:  # nothing to map: an empty entry of its own
                _close(self._maker.create(self._file, record, np.zeros(shape, record["dtype"])))
                return
            dcpl = self._maker.virtual(record, entry[0], shards_dir(self.path).name)
            _close(self._maker.create(self._file, record, None, dcpl))
        self._used.update(piece[2] for piece in entry[0])
        fault_point("write")

    def read_piece(self, key: str, frame: int, n_frames: int) -> np.ndarray:  # noqa: D102
        with self._guard():
            return np.asarray(self._file[h5_dataset(key)][..., frame : frame + n_frames])

    def discard(self, key: str) -> None:  # noqa: D102
        self._virtual.pop(key, None)
        with self._guard():
            entry = self._partial.pop(key, None)
            if entry is not None:
                _close(entry[0])
            name = h5_dataset(key)
            if name in self._file:
                del self._file[name]
            # groups made only for this entry go too (the space of its data is not reused)
            group = posixpath.dirname(name)
            while group != FEATURES_GROUP and group in self._file and not len(self._file[group]):
                del self._file[group]
                group = posixpath.dirname(group)

    def copy_entry(  # noqa: D102
        self, record: dict[str, Any], old_output: Path, *, repointed: bool = False
    ) -> None:
        import h5py

        name = h5_dataset(record["key"])
        if self.base is not None:  # already in the copy it started from
            if repointed:
                with self._guard():
                    self._file[name].attrs["source"] = record["source"]
            return
        with self._guard():
            if self._old is None:
                self._old = h5py.File(old_output, "r")
            parent = self._file.require_group(posixpath.dirname(name))
            self._old.copy(self._old[name], parent, name=posixpath.basename(name))
            if repointed:
                parent[posixpath.basename(name)].attrs["source"] = record["source"]
            self._writeback.wrote(entry_nbytes(record))

    def add_frequencies(self, sample_rate: int, freqs: np.ndarray) -> None:  # noqa: D102
        name = f"frequencies/{sample_rate}"
        self._rates.add(str(sample_rate))
        with self._guard():
            if name not in self._file:
                self._file.create_dataset(name, data=np.asarray(freqs, dtype=np.float64))

    def commit(self, manifest: dict[str, Any]) -> None:  # noqa: D102
        import h5py

        f = self._file
        if self.sidecar != manifest_path(self.path, "h5"):  # --manifest: say where, both ways
            manifest = {**manifest,
                        "sidecar": os.path.relpath(self.sidecar, self.path.parent),
                        "output": os.path.relpath(self.path, self.sidecar.parent)}  # fmt: skip
        text = manifest_mod.dumps(manifest)
        with self._guard():
            if "sidecar" in manifest:
                f.attrs["sidecar"] = manifest["sidecar"]
            f.attrs["melcli_version"] = manifest["melcli_version"]
            f.attrs["command"] = manifest["command"]
            f.attrs["created"] = manifest["created"]
            f.attrs["params"] = json.dumps(manifest["params"], sort_keys=True)
            f.attrs[DIGEST_ATTR] = hashlib.sha256(text).hexdigest()
            f.attrs[DEAD_ATTR] = 0 if self.base is None else self.base.dead
            f.attrs["compression"] = self.compression
            for rate in set(f.get("frequencies", {})) - self._rates:  # no entry at it now
                del f[f"frequencies/{rate}"]
            f.create_dataset("manifest", data=text, dtype=h5py.string_dtype())
            f.flush()
            f.close()
        self._close_old()
        try:
            self._writeback.close()
            manifest_mod.fsync_path(self.tmp)
            self._move_shards()
            fault_point("rename")
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise WriteFailed(self.tmp, exc) from None
        self.committed = True  # from here on the new output is in place
        try:
            manifest_mod.fsync_path(self.path.parent)
        except OSError as exc:
            self.warnings.append(f"cannot flush directory {self.path.parent}: {exc.strerror}")
        fault_point("after-rename")
        self._drop_unused_shards()
        # The sidecar is a copy of /manifest; a crash or a write error right here
        # leaves it stale, and the next run repairs it from the HDF5 file (see
        # runner.repair_sidecar): the output itself is complete, so only warn.
        try:
            manifest_mod.write_atomic(self.sidecar, text)
        except OutputError as exc:
            self.warnings.append(f"{exc}; the manifest inside {self.path.name} is complete")
            return
        # The file's mtime just before the sidecar's: any later change to the
        # file (an entry deleted by hand) makes it the newer one (`_sidecar_copy`).
        with contextlib.suppress(OSError):
            st = os.stat(self.sidecar)
            os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns - 1_000_000))

    def _move_shards(self) -> None:
        """Move the shard files of this run's entries beside the output, before its rename.

        The old output never names them (their names are new), so it stays whole
        until the rename; a shard already there was moved by a run killed here.
        """
        if not self._used:
            return
        target = shards_dir(self.path)
        with contextlib.suppress(FileExistsError):
            target.mkdir()
        if target.is_symlink() or not target.is_dir():
            raise OSError(errno.ENOTDIR, f"{target} is not melcli's shard directory")
        for name in sorted(self._used):
            src = None if self.shards is None else self.shards / name
            if src is not None and os.path.lexists(src):
                os.replace(src, target / name)
            elif not (target / name).is_file():
                raise OSError(errno.ENOENT, f"shard {name} of this run is missing")
        manifest_mod.fsync_path(target)

    def _drop_unused_shards(self) -> None:
        """Delete the shard files the committed output no longer names (after its rename).

        A shard goes once none of its entries is in the output (an entry
        computed again leaves its old bytes in its shard until then); the
        directory goes with the last one. Only files named as shards are touched.
        """
        target = shards_dir(self.path)
        if target.is_symlink() or not target.is_dir():
            return
        try:
            used = referenced_shards(self.path)
            with os.scandir(target) as it:
                stale = [e.path for e in it if is_shard_name(e.name) and e.name not in used]
            for path in stale:
                os.unlink(path)
            if not used:
                with contextlib.suppress(OSError):
                    target.rmdir()
        except (OSError, OutputError) as exc:
            self.warnings.append(f"cannot remove unused shard files in {target}: {exc}")

    def _close_old(self) -> None:
        if self._old is not None:
            with contextlib.suppress(Exception):
                self._old.close()
            self._old = None

    def _abandon(self) -> None:
        """Drop the file without letting HDF5 write to it again (see the class docstring).

        Its descriptor is pointed at an anonymous memory file, where HDF5's
        closing flush succeeds (/dev/null would fail its final truncate).
        """
        if self._broken:
            return
        self._broken = True
        for entry in self._partial.values():
            with contextlib.suppress(Exception):
                _close(entry[0])
        self._partial.clear()
        # truncated, not only unlinked: forked workers may hold the file open, and
        # the space must be free now (and the message say how much there is); unless
        # checkpoints point into it (`durable`): then it is their finished work
        if not self._raw_link().exists():
            with contextlib.suppress(OSError):
                os.truncate(self.tmp, 0)
        self.tmp.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            if self._file.id.valid:
                fd = self._file.id.get_vfd_handle()
                sink = os.memfd_create("melcli-abandoned", os.MFD_CLOEXEC)
                os.dup2(sink, fd)
                os.close(sink)
                self._file.close()
        self._close_old()

    def abort(self) -> None:  # noqa: D102
        self._abandon()
        with contextlib.suppress(OSError):
            self._writeback.close()
        self.tmp.unlink(missing_ok=True)


class NpyWriter:
    """A directory tree: ``<key>.npy`` per entry, ``manifest.json`` beside them."""

    format = "npy"
    base: Reuse | None = None

    def __init__(
        self, path: Path, tmp: Path, old: Path, trash: Path, shards: Path | None = None
    ) -> None:
        self.path = path
        self.tmp = tmp
        self.shards = shards  # the run's .npy shard files, in the work directory
        self._parts: dict[str, list[Any]] = {}  # key -> [pieces in shards, frames missing]
        self._old, self._trash = old, trash
        self.warnings: list[str] = []
        self.committed = False
        try:
            self.tmp.mkdir()
        except OSError as exc:
            raise WriteFailed(self.tmp, exc) from None
        self._writeback = Writeback()

    def _target(self, key: str) -> Path:
        check_key(key)
        target = npy_file(self.tmp, key)
        makedirs(target.parent)
        return target

    @contextlib.contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """One entry's write: a failure because of its name is its input's (`EntryError`,
        its directories removed), any other the output's (`WriteFailed`)."""
        try:
            yield
        except OSError as exc:
            bad_name = entry_error(exc)
            if bad_name is not None:
                self.discard(key)  # directories made for it
                raise bad_name from None
            raise WriteFailed(self.tmp, exc) from None
        fault_point("write")

    def write_piece(self, record: dict[str, Any], frame: int, data: np.ndarray) -> int | None:  # noqa: D102
        # None: checkpoints copy npy entries (one file each; not worth a link per entry)
        shape = tuple(record["shape"])
        with self._writing(record["key"]):
            target = self._target(record["key"])
            if frame == 0 and data.shape == shape:  # a whole file
                _save_npy(target, data)
                self._writeback.wrote(data.nbytes, target)
            else:  # a part of a long file, written in place (its pages stay cached)
                if not target.exists():
                    _create_npy(target, np.dtype(record["dtype"]), shape)
                out = np.lib.format.open_memmap(target, "r+")
                out[..., frame : frame + data.shape[-1]] = data
                out.flush()
                del out
        return None

    def durable(self) -> str:  # noqa: D102
        raise NotImplementedError("npy entries are copied into checkpoints")

    def link_piece(  # noqa: D102
        self, record: dict[str, Any], frame: int, shard: str, dataset: str, frames: int
    ) -> None:
        # A whole entry is hard-linked into the tree (no byte copied; the shard stays
        # in the work directory for a resume until the commit). The parts of a long
        # file are copied into its entry once all are in.
        key, shape = record["key"], tuple(record["shape"])
        if self.shards is None:
            raise WriteFailed(self.tmp, OSError(errno.ENOENT, "no shard directory"))
        entry = self._parts.setdefault(key, [[], shape[-1]])
        entry[0].append((frame, self.shards / shard))
        entry[1] -= frames
        if entry[1] > 0:
            return
        del self._parts[key]
        with self._writing(key):
            target = self._target(key)
            if len(entry[0]) == 1:
                try:
                    os.link(entry[0][0][1], target)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    shutil.copyfile(entry[0][0][1], target)
            else:
                _create_npy(target, np.dtype(record["dtype"]), shape)
                out = np.lib.format.open_memmap(target, "r+")
                for start, path in entry[0]:
                    part = np.load(path, mmap_mode="r", allow_pickle=False)
                    out[..., start : start + part.shape[-1]] = part
                out.flush()
                del out

    def read_piece(self, key: str, frame: int, n_frames: int) -> np.ndarray:  # noqa: D102
        stored = np.load(npy_file(self.tmp, key), mmap_mode="r", allow_pickle=False)
        return np.array(stored[..., frame : frame + n_frames])

    def discard(self, key: str) -> None:  # noqa: D102
        self._parts.pop(key, None)
        target = npy_file(self.tmp, key)
        try:
            target.unlink(missing_ok=True)
        except OSError as exc:
            if entry_error(exc) is None:  # else the name was never created
                raise
        for parent in target.parents:  # directories made only for this entry go too
            if parent == self.tmp or any(parent.iterdir()):
                break
            parent.rmdir()

    def copy_entry(  # noqa: D102
        self, record: dict[str, Any], old_output: Path, *, repointed: bool = False
    ) -> None:  # the source is in the manifest only
        src = npy_file(old_output, record["key"])
        try:
            target = self._target(record["key"])
            try:
                os.link(src, target)  # the old tree is deleted after the swap
            except OSError:
                shutil.copy2(src, target)
        except OSError as exc:
            raise WriteFailed(self.tmp, exc) from None

    def add_frequencies(self, sample_rate: int, freqs: np.ndarray) -> None:  # noqa: D102
        pass  # the manifest's "frequencies" holds them for this format

    def commit(self, manifest: dict[str, Any]) -> None:  # noqa: D102
        try:
            manifest_mod.write_atomic(self.tmp / NPY_MANIFEST, manifest_mod.dumps(manifest))
            self._writeback.close()  # a background flush's error stops the commit
            _syncfs(self.tmp)  # one call flushes every .npy written, instead of one per file
            fault_point("rename")
            if self.path.is_dir():  # the runner checked it is a melcli output
                _exchange_or_rename(self.tmp, self.path, self._old)
            else:
                os.rename(self.tmp, self.path)  # nothing there (or an empty directory)
        except (OSError, OutputError) as exc:
            self.abort()
            raise WriteFailed(self.path, exc) from None
        self.committed = True
        with contextlib.suppress(OSError):
            manifest_mod.fsync_path(self.path.parent)
        fault_point("after-rename")
        # renamed before it is deleted: a tree named old-* is always whole, and
        # only such a tree is ever put back (runner.remove_stale)
        with contextlib.suppress(OSError):
            os.rename(self._old, self._trash)
        remove_tree(self._trash)

    def abort(self) -> None:  # noqa: D102
        with contextlib.suppress(OSError):
            self._writeback.close()
        remove_tree(self.tmp)


def format_problem(fmt: str, params: Any) -> str | None:
    """Why features of ``params`` cannot be stored in format ``fmt`` (None: they can)."""
    if fmt != "kaldi":
        return None
    if params.stores_complex:
        return "--format kaldi stores real matrices: not a complex STFT"
    if not params.mono:
        return ("--format kaldi stores one (frames, rows) matrix per entry: channels cannot "
                "be kept (--mono averages them)")  # fmt: skip
    if np.dtype(params.out_dtype) not in _KALDI_TOKENS:
        return f"--format kaldi stores float32 or float64 matrices, not {params.out_dtype}"
    return None


def key_problem(fmt: str, keys: Iterable[str]) -> str | None:
    """Why entries with these keys cannot be stored in format ``fmt`` (None: they can):
    a Kaldi utterance id has no whitespace."""
    if fmt != "kaldi":
        return None
    bad = [k for k in keys if any(c.isspace() for c in k)]
    if not bad:
        return None
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    shown = ", ".join(repr(printable(k)) for k in bad[:3])
    return (f"--format kaldi: {len(bad)} keys have whitespace, which a Kaldi utterance id "
            f"cannot hold: {shown}{more}; rename those files, or use --format h5/npy")  # fmt: skip


class KaldiWriter(NpyWriter):
    """A Kaldi archive: entries are kept as .npy files in the work directory while
    the run goes on (so parts of a long file, checkpoints and resuming work as for
    npy), then written in key order into ``feats.ark`` with ``feats.scp`` beside it
    at `commit`, and the .npy files removed."""

    format = "kaldi"

    def copy_entry(  # noqa: D102
        self, record: dict[str, Any], old_output: Path, *, repointed: bool = False
    ) -> None:
        data = KaldiReader(old_output).read(record["key"], record=record)
        try:
            _save_npy(self._target(record["key"]), data)
        except OSError as exc:
            raise WriteFailed(self.tmp, exc) from None

    def commit(self, manifest: dict[str, Any]) -> None:  # noqa: D102
        records = manifest["entries"].keys
        ark = self.path / KALDI_ARK  # where it will be: scp lines name it
        try:
            with open(self.tmp / KALDI_ARK, "xb") as fa, open(self.tmp / KALDI_SCP, "xb") as fs:
                for key in sorted(records, key=lambda k: k.encode("utf-8", "surrogatepass")):
                    entry = npy_file(self.tmp, key)
                    data = np.load(entry, mmap_mode="r", allow_pickle=False)
                    offset = write_kaldi_matrix(fa, key, data)
                    fs.write(f"{key} {ark}:{offset}\n".encode("utf-8", "surrogatepass"))
                    del data
                    entry.unlink()
                    fault_point("ark")
            for entry in sorted(self.tmp.iterdir(), reverse=True):
                if entry.is_dir():  # folders of keys with a '/': the .npy files are gone
                    remove_tree(entry)
        except OSError as exc:
            self.abort()
            raise WriteFailed(self.tmp, exc) from None
        super().commit(manifest)


#: Bytes of a Kaldi binary matrix's header: ``\0B``, its type token, two sized int32s.
_KALDI_HEADER = 15
#: Kaldi's binary matrix tokens by dtype.
_KALDI_TOKENS: dict[np.dtype[Any], bytes] = {np.dtype("<f4"): b"FM ", np.dtype("<f8"): b"DM "}


def write_kaldi_matrix(fh: Any, key: str, data: np.ndarray) -> int:
    """Append ``KEY <binary matrix>`` to an ark; return the matrix's offset (for the scp).

    melcli's (rows, frames) entry is written transposed, as Kaldi's (frames, rows):
    ``\\0B``, the type token (``FM`` float32, ``DM`` float64), then the row and
    column counts, each an int32 after its size byte (4), then the values row by row.
    """
    frames = np.ascontiguousarray(data.T, dtype=data.dtype.newbyteorder("<"))
    token = _KALDI_TOKENS[np.dtype(frames.dtype)]
    fh.write(key.encode("utf-8", "surrogatepass") + b" ")
    offset = fh.tell()
    fh.write(b"\0B" + token + b"\x04" + np.int32(frames.shape[0]).tobytes()
             + b"\x04" + np.int32(frames.shape[1]).tobytes())  # fmt: skip
    fh.write(frames.reshape(-1).view(np.uint8).data)
    return offset


def _save_npy(path: Path, data: np.ndarray) -> None:
    """``np.save`` with Python's own writes, so a full disk is an ENOSPC OSError.

    (``np.save`` writes with C stdio and reports a short write as
    ``2048 requested and 2016 written``, without an errno.)
    """
    data = np.ascontiguousarray(data)
    with open(path, "xb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(data))
        fh.write(data.reshape(-1).view(np.uint8).data)


def _create_npy(path: Path, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    """An .npy file of ``shape`` with its space reserved (a memory map of a sparse
    file on a full disk would die of SIGBUS instead of raising ENOSPC)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape}  # fmt: skip
    with open(path, "xb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        size = fh.tell() + int(np.prod(shape)) * dtype.itemsize
        fh.flush()
        os.posix_fallocate(fh.fileno(), 0, size)


#: The new output is flushed to disk and dropped from the page cache whenever
#: this many bytes have been written since the last time (see `Writeback`).
WRITEBACK_BYTES = 16 << 20


class Writeback:
    """Flush output files to disk while they are written, and drop them from the page cache.

    Left alone, the kernel keeps a whole new output dirty in memory and the
    final fsync writes it all at once; on a VM, fresh page-cache pages are also
    slow to come by. Flushing every `WRITEBACK_BYTES` keeps the cache footprint
    small, its pages are reused while still warm, and the final fsync finds
    little left. Measured here: 424 MB in 40 HDF5 datasets, write + fsync +
    rename 1.00 s -> 0.33 s. The output's pages are not kept cached: a batch
    extractor's output is usually read much later, if at all, by this machine.
    Each flush runs in a background thread while writing goes on (one at a time;
    its error is raised by the next `wrote` or by `close`): waiting for it held
    the single writer ~12 ms per 16 MB.

    Parameters
    ----------
    single : Path, optional
        The one growing file (HDF5), kept open. Without it, files are
        remembered by path (one per entry, npy): no descriptor stays open, however
        many tiny files there are.
    """

    def __init__(self, single: Path | None = None) -> None:
        self._fd = os.open(single, os.O_RDONLY) if single is not None else None
        self._paths: list[Path] = []
        self._pending = 0
        self._pool: Any = None
        self._flushing: Any = None  # the Future of the flush in flight

    def wrote(self, nbytes: int, path: Path | None = None) -> None:
        """Count ``nbytes`` written (to ``path``, one file per entry); flush past the threshold.

        Raises
        ------
        OSError
            Writeback failed (EIO, or ENOSPC on delayed allocation).
        """
        if path is not None:
            self._paths.append(path)
        self._pending += nbytes
        if self._pending < WRITEBACK_BYTES:
            return
        self._pending = 0
        self._wait()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="melcli-writeback")
        paths, self._paths = self._paths, []
        self._flushing = self._pool.submit(self._flush, paths)

    def _flush(self, paths: list[Path]) -> None:
        if self._fd is not None:
            os.fdatasync(self._fd)
            _drop_cached(self._fd)
            return
        if paths:
            _syncfs(paths[0].parent)  # one call for all, not one journal commit per file
        for done in paths:
            fd = os.open(done, os.O_RDONLY)
            try:
                _drop_cached(fd)
            finally:
                os.close(fd)

    def _wait(self) -> None:
        """Wait for the flush in flight; raise its error."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            flushing.result()

    def close(self) -> None:
        """Wait for the flush in flight (raising its error), then let go of the files
        (nothing more is flushed: the writer's commit fsyncs)."""
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._paths.clear()


def _drop_cached(fd: int) -> None:
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _exchange_or_rename(new: Path, target: Path, old: Path) -> None:
    """Put directory ``new`` at ``target``; the previous ``target`` ends up at ``old``.

    Uses renameat2(RENAME_EXCHANGE) where the kernel offers it, so there is no
    instant at which ``target`` is missing; else two renames.
    """
    if _rename_exchange(new, target):
        os.rename(new, old)  # `new` now names the previous tree
        return
    os.rename(target, old)
    os.rename(new, target)


def _rename_exchange(a: Path, b: Path) -> bool:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(rc == 0)


#: HDF5 root attribute: bytes of the file that no entry uses any more (deleted
#: entries and manifests of earlier runs: HDF5 does not reuse them).
DEAD_ATTR = "dead_bytes"
#: A rerun starts from a copy of the old HDF5 file while at most this share of
#: it would be dead; beyond, it writes a compact new file.
MAX_DEAD_SHARE = 0.5


@dataclass(frozen=True)
class Reuse:
    """An HDF5 rerun that starts from a copy of the old output.

    Attributes
    ----------
    drop : list of str
        Keys deleted from the copy (removed, or computed again).
    dead : int
        Dead bytes of the new file (`DEAD_ATTR`).
    """

    drop: list[str]
    dead: int


def reuse_h5(
    output: Path, drop: list[str], dropped_bytes: int, manifest_bytes: int
) -> Reuse | None:
    """Whether a rerun that drops ``drop`` should start from a copy of ``output``.

    A copy costs one ``copy_file_range`` (a reflink where the file system has
    them) instead of copying every kept entry through HDF5 (5 ms each: an hour
    for a million), but the space of what it deletes stays dead in the file.
    """
    import h5py

    try:
        size = os.stat(output).st_size
        with h5py.File(output, "r") as f:
            dead = f.attrs.get(DEAD_ATTR, 0)
    except (OSError, RuntimeError, ValueError):
        return None
    dead = int(dead) + dropped_bytes + manifest_bytes
    return Reuse(drop, dead) if dead <= MAX_DEAD_SHARE * size else None


def _copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new file ``dst`` in the kernel (``copy_file_range``)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        left = os.fstat(fin.fileno()).st_size
        try:
            while left > 0:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), min(left, 1 << 30))
                if n == 0:
                    break
                left -= n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
            shutil.copyfileobj(fin, fout, 1 << 22)
        fout.flush()


def open_writer(
    output: Path, fmt: str, work: WorkDir, sidecar: Path | None = None,
    base: Reuse | None = None, compression: str = "none",
) -> Writer:  # fmt: skip
    """Create the writer for ``output`` in format ``fmt`` ('h5' or 'npy').

    Its temporaries live in the work directory ``work`` (created beforehand);
    ``sidecar`` is where an HDF5 output's JSON manifest goes (default ``<stem>.json``);
    ``base`` starts an HDF5 output from a copy of the existing one (`reuse_h5`);
    ``compression`` is how HDF5 entries are stored (`melcli.params.COMPRESSIONS`).
    """
    path = output.absolute()
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {output}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write {output}: directory {path.parent} is not writable")
    if fmt == "h5":
        return H5Writer(path, work.temp("new").with_suffix(".h5"), sidecar, base, compression,
                        work.shards)  # fmt: skip
    writer = KaldiWriter if fmt == "kaldi" else NpyWriter
    return writer(path, work.temp("new"), work.temp("old"), work.temp("trash"), work.shards)


_NUMERIC_ATTRS = (("sample_rate", "<i8"), ("n_samples", "<i8"), ("duration", "<f8"),
                  ("channels", "<i8"))  # fmt: skip


#: gzip level of ``--compression gzip`` (h5py's default).
GZIP_LEVEL = 4


class _EntryMaker:
    """Creates ``/features/<key>`` datasets with their attributes, fast.

    Through h5py's low-level API, with the property lists, types and spaces
    made once per file: the high-level API costs ~0.2 ms more per entry (~60% of
    writing a one-second clip), mostly in attribute handling and in the ~19
    h5py objects it creates (and registers) per entry. The result reads back
    exactly as ``create_dataset`` and ``ds.attrs[...] = ...`` would have stored
    it (contiguous layout, no timestamps, UTF-8 names, variable-length UTF-8
    string attributes); `tests/test_cli.py` checks this.
    """

    def __init__(self, compression: str = "none") -> None:
        import h5py
        from h5py import h5p, h5s, h5t

        self.compression = compression
        self.links = {}
        for cset in (h5t.CSET_ASCII, h5t.CSET_UTF8):
            link = h5p.create(h5p.LINK_CREATE)
            link.set_create_intermediate_group(True)
            link.set_char_encoding(cset)
            self.links[cset] = link
        self.dcpl = h5p.create(h5p.DATASET_CREATE)
        self.dcpl.set_obj_track_times(False)
        self.scalar = h5s.create(h5s.SCALAR)
        self.str_dtype = h5py.string_dtype()
        self.text = h5t.py_create(self.str_dtype, logical=True)
        self.numeric = [(name, h5t.STD_I64LE if kind == "<i8" else h5t.IEEE_F64LE, kind)
                        for name, kind in _NUMERIC_ATTRS]  # fmt: skip
        self.types: dict[str, Any] = {}

    def _dcpl(self, record: dict[str, Any], dtype: np.dtype[Any]) -> Any:
        """Contiguous (no compression, or an empty entry), else chunked and filtered."""
        shape = tuple(record["shape"])
        if self.compression == "none" or 0 in shape:
            return self.dcpl
        from h5py import h5z

        dcpl = self.dcpl.copy()
        dcpl.set_chunk(chunk_shape(shape, dtype.itemsize))
        dcpl.set_shuffle()  # bytes of equal significance together: floats compress
        if self.compression == "gzip":
            dcpl.set_deflate(GZIP_LEVEL)
        else:
            dcpl.set_filter(h5z.FILTER_LZF, h5z.FLAG_OPTIONAL)
        return dcpl

    def create(
        self, f: Any, record: dict[str, Any], data: np.ndarray | None, dcpl: Any = None
    ) -> Any:
        """Create the entry of ``record`` in file ``f``; write ``data`` if given.

        ``dcpl``: its creation properties instead (`virtual`: an entry in shards).
        Returns its low-level ``h5py.h5d.DatasetID`` (an ``h5py.Dataset`` costs ~50 us
        more, in objects registered for each entry of a run of small files).
        """
        from h5py import h5a, h5d, h5s, h5t

        name = h5_dataset(record["key"])
        try:
            bname, link = name.encode("ascii"), self.links[h5t.CSET_ASCII]
        except UnicodeEncodeError:
            bname, link = name.encode("utf-8"), self.links[h5t.CSET_UTF8]
        dtype = np.dtype(record["dtype"])
        tid = self.types.get(dtype.str)
        if tid is None:
            tid = self.types[dtype.str] = h5t.py_create(dtype, logical=True)
        space = h5s.create_simple(tuple(record["shape"]))
        if dcpl is None:
            dcpl = self._dcpl(record, dtype)
        dsid = h5d.create(f.id, bname, tid, space, dcpl=dcpl, lcpl=link)
        if data is not None:
            dsid.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(data, dtype=dtype))
        for attr, atype, kind in self.numeric:
            value = np.asarray(record[attr], dtype=kind)
            h5a.create(dsid, attr.encode(), atype, self.scalar).write(value)
        freqs = f"/frequencies/{record['sample_rate']}"
        for label, text in ((b"source", record["source"]), (b"frequencies", freqs)):
            string = np.array(text, dtype=self.str_dtype)
            h5a.create(dsid, label, self.text, self.scalar).write(string)
        return dsid

    def virtual(
        self, record: dict[str, Any], pieces: list[tuple[int, int, str, str]], folder: str
    ) -> Any:
        """Creation properties of an entry whose data is in shard files (a virtual dataset).

        ``pieces``: (first frame, frames, shard file name, dataset) covering the
        entry's frames; each maps ``folder/<shard>`` (relative: HDF5 looks for it
        beside the file holding the entry) into the entry's frame range.
        """
        from h5py import h5p, h5s

        shape = tuple(record["shape"])
        dcpl = h5p.create(h5p.DATASET_CREATE)
        dcpl.set_obj_track_times(False)
        for frame, frames, shard, dataset in sorted(pieces):
            piece = (*shape[:-1], frames)
            vspace = h5s.create_simple(shape)
            vspace.select_hyperslab((0,) * (len(shape) - 1) + (frame,), piece)
            whole = h5s.create_simple(piece)
            whole.select_hyperslab((0,) * len(piece), piece)  # not "all": read back as a scalar
            dcpl.set_virtual(vspace, f"{folder}/{shard}".encode(), dataset.encode(), whole)
        return dcpl


#: Target size of one compressed chunk (uncompressed bytes).
CHUNK_BYTES = 1 << 16


def chunk_shape(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """HDF5 chunks of an entry: every row (and channel), as many frames as fit in
    `CHUNK_BYTES`, so reading a span of frames decompresses little more than it."""
    rows = int(np.prod(shape[:-1]))
    frames = max(1, min(shape[-1], CHUNK_BYTES // max(1, rows * itemsize)))
    return (*shape[:-1], frames)


def _create_h5(path: Path) -> Any:
    """A new HDF5 file (never an existing one, nor through a link), as h5py's ``"x"``
    mode would make it, but without HDF5's raw-data sieve buffer: data reaches
    the file inside the write call, where a full disk is an exception, instead
    of when the dataset is closed."""
    from h5py import h5f, h5p

    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_EARLIEST, h5f.LIBVER_LATEST)
    fapl.set_sieve_buf_size(0)
    return h5f.create(os.fsencode(path), h5f.ACC_EXCL, fapl=fapl)


def _open_h5(path: Path) -> Any:
    """An existing HDF5 file for writing, without the sieve buffer (`_create_h5`)."""
    from h5py import h5f, h5p

    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_EARLIEST, h5f.LIBVER_LATEST)
    fapl.set_sieve_buf_size(0)
    return h5f.open(os.fsencode(path), h5f.ACC_RDWR, fapl=fapl)


def _close(dataset: Any) -> None:
    """Close an HDF5 dataset (an ``h5py.Dataset`` or its id) now, so a failed write
    surfaces here, as an exception.

    When the close fails, HDF5 has already freed part of the dataset: h5py
    must not close it again when the object is collected (that crashes).
    """
    ident = dataset if hasattr(dataset, "_close") else dataset.id  # an id, or an h5py.Dataset
    try:
        ident._close()
    except BaseException:
        ident.locked = True
        raise


def entry_nbytes(record: dict[str, Any]) -> int:
    """Bytes of an entry's array, from its manifest record (shape and dtype)."""
    return int(np.prod(record["shape"])) * np.dtype(record["dtype"]).itemsize


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path``; raise OSError if writeback failed.

    ``syncfs(2)`` reports writeback errors (EIO, ENOSPC on delayed allocation)
    that ``os.sync()`` would swallow; Python 3.11 has no wrapper for it.
    """
    import ctypes
    import ctypes.util

    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    except AttributeError:  # no syncfs in this libc
        os.sync()
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------------


def detect(path: Path) -> str:
    """What ``path`` is: 'h5', 'npy' (an npy output directory), 'kaldi' (a Kaldi output
    directory), 'manifest' or 'audio'.

    By content, not name: a directory with `NPY_MANIFEST` (and `KALDI_SCP`: Kaldi),
    a ``.json`` file, a file with HDF5's signature. Only a regular file is opened
    (a FIFO would block):
    anything else is 'audio', which reports why it cannot be read.

    Raises
    ------
    OutputError
        A file named as an HDF5 output (``.h5``, ...) that is not HDF5.
    """
    if path.is_dir():
        if not (path / NPY_MANIFEST).is_file():
            return "audio"
        return "kaldi" if (path / KALDI_SCP).is_file() else "npy"  # entries end in .npy
    try:
        fd, _ = open_regular(os.fspath(path))
    except OSError:
        return "audio"
    with open(fd, "rb") as fh:
        if path.suffix.lower() == ".json":
            return "manifest"
        if fh.read(8) == HDF5_MAGIC:
            return "h5"
    if path.suffix.lower() in H5_SUFFIXES:  # named as an output, not one
        raise OutputError(f"{path} is not a melcli output: not an HDF5 file")
    return "audio"


def h5_beside(manifest: Path) -> Path:
    """The HDF5 file a ``<stem>.json`` manifest describes (``.h5`` or ``.hdf5``)."""
    for suffix in (".h5", ".hdf5"):
        if manifest.with_suffix(suffix).exists():
            return manifest.with_suffix(suffix)
    return manifest.with_suffix(".h5")


def described_h5(manifest_file: Path, manifest: dict[str, Any] | None = None) -> Path:
    """The HDF5 file an HDF5 output's JSON manifest describes (its recorded ``output``,
    for a sidecar written elsewhere with ``--manifest``; else the file beside it)."""
    man = manifest_mod.read(manifest_file) if manifest is None else manifest
    recorded = man.get("output")
    return (
        manifest_file.parent / recorded if isinstance(recorded, str) else h5_beside(manifest_file)
    )


def locate(path: Path) -> tuple[Path, str]:
    """The output a path names, and its format: an HDF5 file, an npy directory, or
    the manifest of either.

    Raises
    ------
    OutputError
        ``path`` is none of these.
    """
    kind = detect(path)
    if kind in FORMATS:
        return path, kind
    if kind == "manifest":
        if path.name == NPY_MANIFEST and path.parent.is_dir():
            return path.parent, "kaldi" if (path.parent / KALDI_SCP).is_file() else "npy"
        return described_h5(path), "h5"
    raise OutputError(
        f"{path} is not a melcli output (an HDF5 file, an npy directory or a manifest)"
    )


def _check_stored(
    key: str, where: Path, shape: tuple[int, ...], dtype: Any, rec: dict[str, Any] | None
) -> None:
    if rec is not None and (shape != tuple(rec["shape"]) or str(dtype) != rec["dtype"]):
        raise OutputError(
            f"entry {key!r} in {where} holds {shape} {dtype}, but its manifest record "
            f"says {tuple(rec['shape'])} {rec['dtype']}"
        )


def referenced_shards(output: Path) -> set[str]:
    """Names of the shard files the entries of the HDF5 output ``output`` are in.

    Raises
    ------
    OutputError
        ``output`` cannot be read.
    """
    import h5py

    folder = shards_dir(output).name
    used: set[str] = set()

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            for source in obj.virtual_sources():
                where, _, name = source.file_name.rpartition("/")
                if where == folder:
                    used.add(name)

    try:
        with h5py.File(output, "r") as f:
            if FEATURES_GROUP in f:
                f[FEATURES_GROUP].visititems(visit)
    except (OSError, RuntimeError, ValueError) as exc:
        raise OutputError(f"cannot read {output}: {exc}") from None
    return used


def _incomplete(ds: Any) -> str | None:
    """Why a dataset does not hold its data in its own file (None: every byte is there)."""
    dcpl = ds.id.get_create_plist()
    stored = ds.id.get_storage_size()
    if dcpl.get_external_count() or (not dcpl.get_nfilters() and stored < ds.nbytes):
        return f"stores {stored} of its {ds.nbytes} bytes"
    return None


class H5Reader:
    """Entries of an HDF5 output, read on demand (the reading side of `H5Writer`).

    The file is opened on first use in each process, so a reader made before a
    fork works in the children (never sharing the parent's HDF5 handle), with
    no sieve buffer: a crop of frames then reads one small span per row (an
    entry is rows x frames), not 64 KB around each.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self._file: Any = None
        self._pid = -1
        self._shards: dict[str, Any] = {}  # shard files checked (`_check_virtual`), by name

    def file(self) -> Any:
        """The open h5py.File of this process."""
        if self._file is None or self._pid != os.getpid():  # a fork: never reuse the handle
            import h5py
            from h5py import h5f, h5p

            fapl = h5p.create(h5p.FILE_ACCESS)
            fapl.set_sieve_buf_size(0)
            fid = h5f.open(os.fsencode(self.output), h5f.ACC_RDONLY, fapl=fapl)
            self._file = h5py.File(fid)
            self._pid = os.getpid()
            self._shards = {}
        return self._file

    def array(self, key: str, record: dict[str, Any] | None = None) -> Any:
        """The dataset of entry ``key``, checked before anything is read from it.

        Its shape and dtype must be the ``record``'s, and its data must really be
        in the file (melcli writes every byte), or, for an entry written in shards
        (``--shards``: a virtual dataset), in melcli's own shard files beside it
        (`_check_virtual`): a crafted 1e12-value dataset that stores nothing, or
        points at other files, is refused, not read.
        """
        import h5py

        ds = self.file().get(h5_dataset(key))
        if not isinstance(ds, h5py.Dataset):
            raise OutputError(
                f"entry {key!r} is in the manifest of {self.output} but not stored in it"
            )
        _check_stored(key, self.output, ds.shape, ds.dtype, record)
        why = self._check_virtual(ds) if ds.is_virtual else _incomplete(ds)
        if why is not None:
            raise OutputError(f"entry {key!r} in {self.output} {why}: not an entry melcli wrote")
        return ds

    def _check_virtual(self, ds: Any) -> str | None:
        """Why a virtual dataset is not an entry melcli wrote in shards (None: it is).

        Each of its sources must be a dataset of a shard file (`is_shard_name`)
        in the output's shard directory (`shards_dir`, not reached through a
        link), storing every byte, taken whole (an "all" selection, which HDF5
        reads back on a scalar extent, or a hyperslab of its full shape);
        together they must map as many values as the entry has (HDF5 fills a
        missing source with zeros).
        """
        import h5py
        from h5py import h5s

        folder = shards_dir(self.output)
        real = os.path.realpath(folder)
        mapped = 0
        for source in ds.virtual_sources():
            where, _, name = source.file_name.rpartition("/")
            path = folder / name
            if where != folder.name or not is_shard_name(name):
                return f"maps {source.file_name!r}, not a shard file of {folder.name}/"
            if os.path.realpath(path) != os.path.join(real, name) or not path.is_file():
                return f"maps the missing or linked shard {folder.name}/{name}"
            shard = self._shards.get(name)
            if shard is None:
                try:
                    shard = self._shards[name] = h5py.File(path, "r")
                except OSError as exc:
                    return f"maps the unreadable shard {folder.name}/{name} ({exc})"
            src = shard.get(source.dset_name)
            if not isinstance(src, h5py.Dataset) or src.is_virtual or _incomplete(src):
                return f"maps {source.dset_name!r} of {folder.name}/{name}, not a stored array"
            space = source.src_space
            whole = space.get_select_type() == h5s.SEL_ALL or (
                space.shape == src.shape and space.get_select_npoints() == src.size
            )
            if not whole or src.dtype != ds.dtype:
                return f"maps part of {source.dset_name!r} of {folder.name}/{name}"
            mapped += source.vspace.get_select_npoints()
        if mapped != ds.size:
            return f"maps {mapped} of its {ds.size} values"
        return None

    def read(
        self, key: str, frames: slice | None = None, record: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Entry ``key``, or only ``frames`` of it (last axis): an HDF5 hyperslab read."""
        return np.asarray(
            self.array(key, record)[..., frames if frames is not None else slice(None)]
        )

    def close(self) -> None:
        """Close the file (if this process opened it)."""
        if self._file is not None and self._pid == os.getpid():
            for shard in self._shards.values():
                shard.close()
            self._file.close()
        self._file = None
        self._shards = {}

    def __getstate__(self) -> dict[str, Any]:  # pickled into a spawned worker: reopen there
        return {**self.__dict__, "_file": None, "_pid": -1, "_shards": {}}


class NpyReader:
    """Entries of an npy output, read on demand (the reading side of `NpyWriter`)."""

    def __init__(self, output: Path) -> None:
        self.output = output

    def array(self, key: str, record: dict[str, Any] | None = None) -> Any:
        """A read-only memory map of entry ``key``, its header checked against ``record``."""
        file = npy_file(self.output, key)
        try:
            fd, st = open_regular(os.fspath(file))  # never a FIFO or a device
        except OSError as exc:
            raise OutputError(f"cannot read entry {key!r} of {self.output}: "
                              f"{exc.strerror or exc}") from None  # fmt: skip
        with open(fd, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(fh)
            except ValueError as exc:
                raise OutputError(
                    f"entry {key!r} in {self.output}: {file} is not an npy file ({exc})"
                ) from None
            _check_stored(key, self.output, shape, dtype, record)
            offset = fh.tell()
            if fortran or st.st_size < offset + int(np.prod(shape)) * dtype.itemsize:
                raise OutputError(f"entry {key!r} in {self.output}: {file} is truncated")
            return np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=shape)

    def read(
        self, key: str, frames: slice | None = None, record: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Entry ``key``, or only ``frames`` of it (last axis): pages of a memory map."""
        span = frames if frames is not None else slice(None)
        return np.array(self.array(key, record)[..., span])

    def close(self) -> None:
        """Nothing to close: each read maps its file."""


class KaldiReader(NpyReader):
    """Entries of a Kaldi output, read on demand (the reading side of `KaldiWriter`):
    each a read-only memory map of its matrix in ``feats.ark``, at the offset its
    ``feats.scp`` line gives (the ark's path in that line is not used, so a moved
    output still reads), returned in melcli's (rows, frames) orientation; `read`
    and `close` are `NpyReader`'s."""

    def __init__(self, output: Path) -> None:
        super().__init__(output)
        self._index: dict[str, int] | None = None

    def index(self) -> dict[str, int]:
        """Key -> offset of its matrix in the ark, from the scp."""
        if self._index is None:
            try:
                text = (self.output / KALDI_SCP).read_bytes().decode("utf-8", "surrogatepass")
            except (OSError, UnicodeDecodeError) as exc:
                raise OutputError(f"cannot read {self.output / KALDI_SCP}: {exc}") from None
            index = {}
            for number, line in enumerate(text.splitlines(), 1):
                key, _, where = line.partition(" ")
                _, colon, offset = where.rpartition(":")
                if not (key and colon and offset.isdigit()):
                    raise OutputError(f"{self.output / KALDI_SCP}, line {number}: not "
                                      "'KEY ARK:OFFSET'")  # fmt: skip
                index[key] = int(offset)
            self._index = index
        return self._index

    def array(self, key: str, record: dict[str, Any] | None = None) -> Any:
        """A read-only view (rows, frames) of entry ``key``'s matrix, checked against
        ``record`` and the ark's size before anything is read."""
        offset = self.index().get(key)
        ark = self.output / KALDI_ARK
        if offset is None:
            raise OutputError(f"entry {key!r} is in the manifest of {self.output} but not in "
                              f"its {KALDI_SCP}")  # fmt: skip
        try:
            fd, st = open_regular(os.fspath(ark))
        except OSError as exc:
            raise OutputError(f"cannot read {ark}: {exc.strerror or exc}") from None
        with open(fd, "rb") as fh:
            fh.seek(offset)
            head = fh.read(_KALDI_HEADER)
            dtype = {t: d for d, t in _KALDI_TOKENS.items()}.get(head[2:5])
            if head[:2] != b"\0B" or dtype is None or head[5:6] + head[10:11] != b"\x04\x04":
                raise OutputError(f"entry {key!r}: {ark} holds no float matrix at {offset}")
            rows = int(np.frombuffer(head[6:10], "<i4")[0])
            cols = int(np.frombuffer(head[11:15], "<i4")[0])
            _check_stored(key, self.output, (cols, rows), dtype, record)
            end = offset + _KALDI_HEADER + rows * cols * dtype.itemsize
            if rows < 0 or cols < 0 or st.st_size < end:
                raise OutputError(f"entry {key!r} in {self.output}: {ark} is truncated")
            if rows * cols == 0:
                return np.zeros((cols, rows), dtype)
            return np.memmap(fh, dtype=dtype, mode="r", offset=offset + _KALDI_HEADER,
                             shape=(rows, cols)).T  # fmt: skip


def npy_unlisted(output: Path, man: dict[str, Any]) -> list[str]:
    """What an npy (or Kaldi) output directory holds that its manifest does not list."""
    if (output / KALDI_SCP).is_file() and man.get("output_format") == "kaldi":
        listed = {NPY_MANIFEST, KALDI_ARK, KALDI_SCP}
        with os.scandir(output) as it:
            return sorted(e.name + ("/" if e.is_dir() else "") for e in it
                          if e.name not in listed)  # fmt: skip
    listed = {NPY_MANIFEST}
    folders: set[str] = set()
    entries = man.get("entries")
    for key in entries.keys if isinstance(entries, manifest_mod.EntryTable) else ():
        listed.add(npy_file(Path(), key).as_posix())
        folders.update(str(p) for p in Path(key).parents if str(p) != ".")
    extras: list[str] = []
    stack = [(os.fspath(output), "")]  # no recursion: os.walk recurses (any depth here)
    while stack:
        top, rel = stack.pop()
        try:
            with os.scandir(top) as it:
                children = list(it)
        except OSError:
            continue
        for entry in children:
            name = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                if name in folders:
                    stack.append((entry.path, name + "/"))
                else:
                    extras.append(name + "/")
            elif entry.is_symlink() and name in folders:
                extras.append(name + "/")  # a linked folder is not one melcli made
            elif name not in listed:
                extras.append(name)
    return sorted(extras)


#: The reader of each format.
READERS: dict[str, type[H5Reader] | type[NpyReader]] = {
    "h5": H5Reader, "npy": NpyReader, "kaldi": KaldiReader,
}  # fmt: skip


def open_reader(output: Path, fmt: str) -> H5Reader | NpyReader:
    """A reader of the entries of the output ``output`` in format ``fmt``."""
    return READERS[fmt](output)
