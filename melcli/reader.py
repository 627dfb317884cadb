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
        from melcli import store

        self.path, self.format = store.locate(Path(path))
        self.manifest = store.read_manifest(self.path, self.format)
        self._table = self.manifest["entries"]
        self._reader = store.open_reader(self.path, self.format)

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
        OutputError
            What is stored is not what the manifest records (`melcli.store`).
        """
        return self._reader.read(key, frames, record=self.entry(key))

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
        """Frequency in Hz of each row of entry ``key`` (FFT bins or mel band centres; for
        mfcc, not frequencies but each row's coefficient number)."""
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

    def close(self) -> None:
        """Close the HDF5 file (if this process opened it)."""
        self._reader.close()

    def __enter__(self) -> Features:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<melcli.Features {self.path} ({self.format}, {len(self)} entries)>"


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
