"""Output writers: one `Writer` interface, an HDF5 and an npy implementation.

Writers are created, fed and closed only in the parent process. Each builds
its result beside the output under a temporary name and moves it into place
only in `Writer.commit`, after it is flushed to disk, so an existing output is
never half-overwritten and an aborted run leaves nothing at the output path.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from melcli import manifest as manifest_mod
from melcli.errors import OutputError
from melcli.pipeline import EntryMeta

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


def _os_error(action: str, path: Path, exc: OSError) -> OutputError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"disk full while {action} {path}: {exc.strerror}")
    return OutputError(f"cannot {action} {path}: {exc.strerror or exc}")


class Writer(Protocol):
    """What the run loop needs from an output."""

    path: Path
    format: str

    def add(self, meta: EntryMeta, data: np.ndarray) -> None:
        """Store one entry (called once per key, in any order)."""

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
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            self._file: Any = h5py.File(self.tmp, "w")
        except OSError as exc:
            raise OutputError(f"cannot create {self.tmp}: {exc}") from None

    def add(self, meta: EntryMeta, data: np.ndarray) -> None:  # noqa: D102
        try:
            ds = self._file.create_dataset(f"features/{meta.key}", data=data)
        except OSError as exc:
            raise OutputError(f"cannot write {meta.key} to {self.tmp}: {exc}") from None
        ds.attrs["sample_rate"] = meta.sample_rate
        ds.attrs["n_samples"] = meta.n_samples
        ds.attrs["duration"] = meta.duration
        ds.attrs["channels"] = meta.channels
        ds.attrs["source"] = meta.source
        ds.attrs["frequencies"] = f"/frequencies/{meta.sample_rate}"

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
            f.create_dataset("manifest", data=manifest_mod.dumps(manifest), dtype=h5py.string_dtype())
            f.flush()
            f.close()
            _fsync_file(self.tmp)
            os.replace(self.tmp, self.path)
            manifest_mod.fsync_dir(self.path.parent)
        except OSError as exc:
            self.abort()
            raise _os_error("writing", self.path, exc) from None
        manifest_mod.write_atomic(manifest_path(self.path, "h5"), manifest_mod.dumps(manifest))

    def abort(self) -> None:  # noqa: D102
        try:
            if self._file.id.valid:
                self._file.close()
        except Exception:  # closing a broken file must not hide the first error
            pass
        self.tmp.unlink(missing_ok=True)


class NpyWriter:
    """A directory tree: ``<key>.npy`` per entry, ``manifest.json`` beside them."""

    format = "npy"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            self.tmp.mkdir()
        except OSError as exc:
            raise _os_error("creating", self.tmp, exc) from None

    def add(self, meta: EntryMeta, data: np.ndarray) -> None:  # noqa: D102
        target = self.tmp / f"{meta.key}.npy"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, data, allow_pickle=False)
        except OSError as exc:
            raise _os_error("writing", target, exc) from None

    def add_frequencies(self, sample_rate: int, freqs: np.ndarray) -> None:  # noqa: D102
        pass  # the manifest's "frequencies" holds them for this format

    def commit(self, manifest: dict[str, Any]) -> None:  # noqa: D102
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        try:
            manifest_mod.write_atomic(self.tmp / "manifest.json", manifest_mod.dumps(manifest))
            os.sync()  # one call flushes every .npy written, instead of an fsync per file
            if self.path.is_dir() and not self.path.is_symlink():
                os.rename(self.path, old)
            elif self.path.exists() or self.path.is_symlink():
                self.path.unlink()
            os.rename(self.tmp, self.path)
            manifest_mod.fsync_dir(self.path.parent)
        except OSError as exc:
            if old.exists() and not self.path.exists():
                os.rename(old, self.path)
            self.abort()
            raise _os_error("writing", self.path, exc) from None
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:  # noqa: D102
        shutil.rmtree(self.tmp, ignore_errors=True)


def open_writer(output: str | os.PathLike[str], fmt: str) -> Writer:
    """Create the writer for ``output`` in format ``fmt`` ('h5' or 'npy')."""
    path = Path(output).absolute()
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {output}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write {output}: directory {path.parent} is not writable")
    return H5Writer(path) if fmt == "h5" else NpyWriter(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
