"""Output writers: one `Writer` interface, an HDF5 and an npy implementation.

Writers are created, fed and closed only in the parent process, at the end of
a run, from finished entries (new arrays, or entries of the previous output
copied byte for byte). Each builds its result beside the output under a
temporary name and moves it into place only in `Writer.commit`, after it is
flushed to disk, so an existing output is never half-overwritten and an
aborted run leaves nothing at the output path.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from melcli import manifest as manifest_mod
from melcli.errors import OutputError
from melcli.workdir import disk_error, fault_point, hidden_sibling

FORMATS = ("h5", "npy")
H5_SUFFIXES = (".h5", ".hdf5")


def guess_format(output: str | os.PathLike[str]) -> str:
    """``h5`` for ``*.h5`` / ``*.hdf5``, else ``npy`` (a directory of .npy files)."""
    return "h5" if Path(output).suffix.lower() in H5_SUFFIXES else "npy"


def manifest_path(output: str | os.PathLike[str], fmt: str) -> Path:
    """Where the JSON manifest of an output lives.

    ``feats.h5`` -> ``feats.json`` beside it; ``feats/`` -> ``feats/manifest.json``.
    """
    out = Path(output)
    return out.with_suffix(".json") if fmt == "h5" else out / "manifest.json"


def read_manifest(output: Path, fmt: str) -> dict[str, Any]:
    """The manifest of an existing output (for HDF5, the copy inside the file).

    Raises
    ------
    OutputError
        Not a readable melcli output of this format.
    """
    if fmt == "npy":
        if not output.is_dir():
            raise OutputError(f"{output} is not a melcli npy output directory")
        return manifest_mod.read(output / "manifest.json")
    import h5py

    try:
        with h5py.File(output, "r") as f:
            man = json.loads(f["manifest"][()])
    except (OSError, KeyError, ValueError) as exc:
        raise OutputError(f"{output} is not a readable melcli HDF5 output ({exc})") from None
    if not isinstance(man, dict) or "params" not in man:
        raise OutputError(f"{output} is not a melcli HDF5 output")
    return man


def check_key(key: str) -> None:
    """Refuse keys that could escape the output (absolute, ``..``, empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise OutputError(f"unsafe key {key!r}")


class Writer(Protocol):
    """What the assembly step needs from an output."""

    path: Path
    format: str
    warnings: list[str]

    def add(self, record: dict[str, Any], pieces: Iterable[tuple[int, np.ndarray]]) -> None:
        """Store one new entry of shape ``record['shape']`` from (first frame, array) pieces.

        Keys arrive sorted, once each; a whole file is one piece at frame 0.
        """

    def copy_entry(self, record: dict[str, Any], old_output: Path) -> None:
        """Copy an unchanged entry byte for byte from the previous output."""

    def add_frequencies(self, sample_rate: int, freqs: np.ndarray) -> None:
        """Store the row frequencies (Hz) of entries at ``sample_rate``."""

    def commit(self, manifest: dict[str, Any]) -> None:
        """Flush, then move the result and its manifest into place atomically."""

    def abort(self) -> None:
        """Remove everything temporary; the output path is left untouched."""


class H5Writer:
    """One HDF5 file: ``/features/<key>`` datasets, ``/frequencies/<rate>``, ``/manifest``."""

    format = "h5"

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = path
        self.tmp = hidden_sibling(path, f".tmp-{os.getpid()}")
        self.warnings: list[str] = []
        self._old: Any = None
        try:
            self._file: Any = h5py.File(self.tmp, "w")
        except OSError as exc:
            raise OutputError(f"cannot create {self.tmp}: {exc}") from None

    def add(self, record: dict[str, Any], pieces: Iterable[tuple[int, np.ndarray]]) -> None:  # noqa: D102
        check_key(record["key"])
        name = f"features/{record['key']}"
        shape = tuple(record["shape"])
        try:
            ds = None
            for frame, data in pieces:
                if ds is None and frame == 0 and data.shape == shape:
                    ds = self._file.create_dataset(name, data=data)  # a whole file
                    continue
                if ds is None:
                    ds = self._file.create_dataset(name, shape=shape, dtype=record["dtype"])
                ds[..., frame : frame + data.shape[-1]] = data
            if ds is None:
                raise OutputError(f"no data for {record['key']}")
            _numeric_attrs(ds, record)
            ds.attrs["source"] = record["source"]
            ds.attrs["frequencies"] = f"/frequencies/{record['sample_rate']}"
        except OSError as exc:
            raise disk_error("writing", self.tmp, exc, needed=entry_nbytes(record)) from None
        fault_point("assemble")

    def copy_entry(self, record: dict[str, Any], old_output: Path) -> None:  # noqa: D102
        import h5py

        if self._old is None:
            self._old = h5py.File(old_output, "r")
        name = f"features/{record['key']}"
        parent = self._file.require_group(posixpath.dirname(name))
        try:
            self._old.copy(self._old[name], parent, name=posixpath.basename(name))
        except OSError as exc:
            raise disk_error("writing", self.tmp, exc) from None
        fault_point("assemble")

    def add_frequencies(self, sample_rate: int, freqs: np.ndarray) -> None:  # noqa: D102
        name = f"frequencies/{sample_rate}"
        if name not in self._file:
            self._file.create_dataset(name, data=np.asarray(freqs, dtype=np.float64))

    def commit(self, manifest: dict[str, Any]) -> None:  # noqa: D102
        import h5py

        f = self._file
        try:
            f.attrs["melcli_version"] = manifest["melcli_version"]
            f.attrs["command"] = manifest["command"]
            f.attrs["created"] = manifest["created"]
            f.attrs["params"] = json.dumps(manifest["params"], sort_keys=True)
            f.create_dataset(
                "manifest", data=manifest_mod.dumps(manifest), dtype=h5py.string_dtype()
            )
            f.flush()
            f.close()
            self._close_old()
            manifest_mod.fsync_path(self.tmp)
            fault_point("rename")
            os.replace(self.tmp, self.path)
            manifest_mod.fsync_path(self.path.parent)
        except OSError as exc:
            self.abort()
            raise disk_error("writing", self.tmp, exc) from None
        fault_point("after-rename")
        # The sidecar is a copy of /manifest; a crash or a write error right here
        # leaves it stale, and the next run repairs it from the HDF5 file (see
        # runner.repair_sidecar): the output itself is complete, so only warn.
        try:
            manifest_mod.write_atomic(manifest_path(self.path, "h5"), manifest_mod.dumps(manifest))
        except OutputError as exc:
            self.warnings.append(f"{exc}; the manifest inside {self.path.name} is complete")

    def _close_old(self) -> None:
        if self._old is not None:
            self._old.close()
            self._old = None

    def abort(self) -> None:  # noqa: D102
        try:
            if self._file.id.valid:
                self._file.close()
        except Exception:  # closing a broken file must not hide the first error
            pass
        self._close_old()
        self.tmp.unlink(missing_ok=True)


class NpyWriter:
    """A directory tree: ``<key>.npy`` per entry, ``manifest.json`` beside them."""

    format = "npy"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = hidden_sibling(path, f".tmp-{os.getpid()}")
        self.warnings: list[str] = []
        try:
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir()
        except OSError as exc:
            raise disk_error("creating", self.tmp, exc) from None

    def _target(self, key: str) -> Path:
        check_key(key)
        target = self.tmp / f"{key}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add(self, record: dict[str, Any], pieces: Iterable[tuple[int, np.ndarray]]) -> None:  # noqa: D102
        shape = tuple(record["shape"])
        try:
            target = self._target(record["key"])
            out = None
            for frame, data in pieces:
                if out is None and frame == 0 and data.shape == shape:
                    np.save(target, data, allow_pickle=False)  # a whole file
                    break
                if out is None:  # the parts of a long file, written in place
                    out = np.lib.format.open_memmap(target, "w+", record["dtype"], shape)
                out[..., frame : frame + data.shape[-1]] = data
            if out is not None:
                out.flush()
                del out
        except OSError as exc:
            raise disk_error("writing", self.tmp, exc, needed=entry_nbytes(record)) from None
        fault_point("assemble")

    def copy_entry(self, record: dict[str, Any], old_output: Path) -> None:  # noqa: D102
        src = old_output / f"{record['key']}.npy"
        try:
            target = self._target(record["key"])
            try:
                os.link(src, target)  # the old tree is deleted after the swap
            except OSError:
                shutil.copy2(src, target)
        except OSError as exc:
            raise disk_error("writing", self.tmp, exc) from None
        fault_point("assemble")

    def add_frequencies(self, sample_rate: int, freqs: np.ndarray) -> None:  # noqa: D102
        pass  # the manifest's "frequencies" holds them for this format

    def commit(self, manifest: dict[str, Any]) -> None:  # noqa: D102
        old = hidden_sibling(self.path, f".old-{os.getpid()}")
        try:
            manifest_mod.write_atomic(self.tmp / "manifest.json", manifest_mod.dumps(manifest))
            _syncfs(self.tmp)  # one call flushes every .npy written, instead of one per file
            fault_point("rename")
            if self.path.is_dir() and not self.path.is_symlink():
                _exchange_or_rename(self.tmp, self.path, old)
            else:
                if self.path.exists() or self.path.is_symlink():
                    self.path.unlink()
                os.rename(self.tmp, self.path)
            manifest_mod.fsync_path(self.path.parent)
        except OSError as exc:
            self.abort()
            raise disk_error("writing", self.path, exc) from None
        fault_point("after-rename")
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:  # noqa: D102
        shutil.rmtree(self.tmp, ignore_errors=True)


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


def open_writer(output: Path, fmt: str) -> Writer:
    """Create the writer for ``output`` in format ``fmt`` ('h5' or 'npy')."""
    path = output.absolute()
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {output}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write {output}: directory {path.parent} is not writable")
    return H5Writer(path) if fmt == "h5" else NpyWriter(path)


_NUMERIC_ATTRS = (("sample_rate", "<i8"), ("n_samples", "<i8"), ("duration", "<f8"),
                  ("channels", "<i8"))  # fmt: skip


def _numeric_attrs(ds: Any, record: dict[str, Any]) -> None:
    """Scalar attributes through h5py's low-level API: the high-level one costs
    ~50 us per attribute, a third of writing a one-second clip's entry. They
    read back exactly as ``ds.attrs[name] = value`` would have stored them."""
    from h5py import h5a, h5s, h5t

    space = h5s.create(h5s.SCALAR)
    for name, dtype in _NUMERIC_ATTRS:
        tid = h5t.STD_I64LE if dtype == "<i8" else h5t.IEEE_F64LE
        attr = h5a.create(ds.id, name.encode(), tid, space)
        attr.write(np.asarray(record[name], dtype=dtype))


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
