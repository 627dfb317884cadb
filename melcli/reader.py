"""Read a melcli output back: ``melcli.open(path)`` -> a read-only mapping of arrays.

An HDF5 file, an npy output directory, or either's manifest (``feats.json``,
``feats/manifest.json``). Entries are read on access; ``read(key, frames=...)``
reads only those frames (an HDF5 hyperslab, a memory map of the ``.npy``). The
HDF5 file is opened lazily in each process, so a mapping opened in a parent
works in forked DataLoader / multiprocessing workers (HDF5 handles must not
cross a fork).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from melcli.errors import OutputError


class Features(Mapping[str, np.ndarray]):
    """The entries of one melcli output, by key (see `open`).

    Attributes
    ----------
    path : Path
        The HDF5 file or the npy output directory.
    format : {'h5', 'npy'}
    manifest : dict
        The output's manifest (``entries`` as a `melcli.manifest.EntryTable`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from melcli import writers

        self.path, self.format = _locate(Path(path))
        self.manifest = writers.read_manifest(self.path, self.format)
        self._table = self.manifest["entries"]
        self._file: Any = None
        self._pid = -1

    # -- the mapping ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._table.row(key) is not None

    def __getitem__(self, key: str) -> np.ndarray:
        return self.read(key)

    def read(self, key: str, frames: slice | None = None) -> np.ndarray:
        """Entry ``key`` as a numpy array, or only ``frames`` of it (last axis).

        Only the requested frames are read from disk.

        Raises
        ------
        KeyError
            No such entry.
        """
        record = self.entry(key)
        span = frames if frames is not None else slice(None)
        if self.format == "h5":
            data = self._h5()[f"features/{key}"]
            return np.asarray(data[..., span])
        arr = np.load(self.path / f"{key}.npy", mmap_mode="r", allow_pickle=False)
        if list(arr.shape) != record["shape"]:
            raise OutputError(f"{self.path}: {key}.npy holds {arr.shape}, not {record['shape']}")
        return np.array(arr[..., span])

    # -- what the manifest says -------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """Every resolved parameter (``FeatureParams.from_dict`` accepts it)."""
        return dict(self.manifest["params"])

    @property
    def stats(self) -> dict[str, Any] | None:
        """Per feature row over every frame of every entry: ``{"count", "mean",
        "std"}`` (population std; numpy arrays), for global normalisation.
        None for complex STFT outputs and outputs written before melcli kept them."""
        from melcli.params import FeatureParams
        from melcli.stats import RowStats

        rows = FeatureParams.from_dict(self.manifest["params"]).n_bins
        totals = RowStats.from_dict(self.manifest.get("stats"), rows)
        return None if totals is None else totals.summary()

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The recorded failures: ``key``, ``source``, ``reason``, ..."""
        return list(self.manifest["failures"])

    def entry(self, key: str) -> dict[str, Any]:
        """The manifest record of entry ``key`` (shape, rate, duration, source, ...)."""
        row = self._table.row(key) if isinstance(key, str) else None
        if row is None:
            raise KeyError(key)
        return self._table.record(row)

    def frequencies(self, key: str) -> np.ndarray:
        """Frequency in Hz of each row of entry ``key`` (FFT bins or mel band centres)."""
        rate = self.entry(key)["sample_rate"]
        return np.asarray(self.manifest["frequencies"][str(rate)], dtype=np.float64)

    def times(self, key: str) -> np.ndarray:
        """Time in seconds of the centre of each frame of entry ``key``.

        ``t * hop / sr`` with ``center`` (as ``librosa.frames_to_time``), else
        ``(t * hop + n_fft // 2) / sr``.
        """
        rec, p = self.entry(key), self.manifest["params"]
        offset = 0 if p["center"] else p["n_fft"] // 2
        frames = np.arange(rec["shape"][-1])
        return (frames * p["hop_length"] + offset) / rec["sample_rate"]

    # -- files ---------------------------------------------------------------------
    def _h5(self) -> Any:
        import h5py

        if self._file is None or self._pid != os.getpid():  # a fork: never reuse the handle
            from h5py import h5f, h5p

            # no sieve buffer: a crop of frames reads one small span per row (an entry
            # is rows x frames), not 64 KB around each (half of a long entry)
            fapl = h5p.create(h5p.FILE_ACCESS)
            fapl.set_sieve_buf_size(0)
            fid = h5f.open(os.fsencode(self.path), h5f.ACC_RDONLY, fapl=fapl)
            self._file = h5py.File(fid)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        """Close the HDF5 file (if this process opened it)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> Features:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # pickled into a spawned worker: reopen there
        return {**self.__dict__, "_file": None, "_pid": -1}

    def __repr__(self) -> str:
        return f"<melcli.Features {self.path} ({self.format}, {len(self)} entries)>"


class EntryReader:
    """Reads entries whole from an output, the HDF5 file opened once (no manifest read)."""

    def __init__(self, output: Path, fmt: str) -> None:
        self.output, self.format = output, fmt
        self._file: Any = None

    def read(self, key: str) -> np.ndarray:
        """Entry ``key``'s array."""
        if self.format == "npy":
            return np.load(self.output / f"{key}.npy", allow_pickle=False)
        if self._file is None:
            import h5py

            self._file = h5py.File(self.output, "r")
        return np.asarray(self._file[f"features/{key}"][()])

    def close(self) -> None:
        """Close the HDF5 file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _locate(path: Path) -> tuple[Path, str]:
    """The output a path names, and its format: an HDF5 file, an npy directory, or
    the manifest of either."""
    from melcli import inspect as insp

    kind = insp.kind_of(path)
    if kind in ("h5", "npy"):
        return path, kind
    if kind == "manifest":
        if path.name == "manifest.json" and path.parent.is_dir():
            return path.parent, "npy"
        from melcli import manifest as manifest_mod

        recorded = manifest_mod.read(path).get("output")
        h5 = path.parent / recorded if isinstance(recorded, str) else insp.h5_beside(path)
        return h5, "h5"
    raise OutputError(
        f"{path} is not a melcli output (an HDF5 file, an npy directory or a manifest)"
    )


def open(path: str | os.PathLike[str]) -> Features:  # noqa: A001 (melcli.open, like io.open)
    """Open a melcli output for reading.

    Parameters
    ----------
    path : str or path-like
        ``feats.h5``, an npy output directory ``feats/``, or a manifest
        (``feats.json``, ``feats/manifest.json``).

    Returns
    -------
    Features
        A read-only mapping key -> array, also a context manager.

    Raises
    ------
    OutputError
        Not a readable melcli output.
    """
    return Features(path)
