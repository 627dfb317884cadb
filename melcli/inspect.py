"""What is in an output, or what an input would give: returns plain dicts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from melcli import manifest as manifest_mod
from melcli.errors import InputError, OutputError
from melcli.params import FeatureParams


def _size_on_disk(path: Path) -> int:
    """Bytes of a file, or of the files in a tree (walked without recursion)."""
    if path.is_file():
        return path.stat().st_size
    total, stack = 0, [os.fspath(path)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file():
                    total += entry.stat().st_size
    return total


def _h5_beside(manifest: Path) -> Path:
    """The HDF5 file a ``<stem>.json`` manifest describes (``.h5`` or ``.hdf5``)."""
    for suffix in (".h5", ".hdf5"):
        if manifest.with_suffix(suffix).exists():
            return manifest.with_suffix(suffix)
    return manifest.with_suffix(".h5")


def kind_of(path: Path) -> str:
    """Classify ``path``: 'h5', 'npy', 'manifest' or 'audio'."""
    if path.is_dir():
        return "npy" if (path / "manifest.json").is_file() else "audio"
    if path.suffix.lower() == ".json":
        return "manifest"
    with open(path, "rb") as fh:
        if fh.read(8) == b"\x89HDF\r\n\x1a\n":
            return "h5"
    return "audio"


def _summary(man: dict[str, Any], path: Path, size: int) -> dict[str, Any]:
    shapes = [e["shape"] for e in man["entries"]]
    frames = [s[-1] for s in shapes]
    return {
        "path": str(path),
        "format": man["output_format"],
        "melcli_version": man["melcli_version"],
        "command": man["command"],
        "created": man["created"],
        "params": man["params"],
        "entries": len(man["entries"]),
        "failures": man["failures"],
        "duration": man["totals"]["duration"],
        "frames": [min(frames), max(frames)] if frames else None,
        "shape_min": [min(s) for s in zip(*shapes, strict=False)] if shapes else None,
        "shape_max": [max(s) for s in zip(*shapes, strict=False)] if shapes else None,
        "dtype": sorted({e["dtype"] for e in man["entries"]}),
        "sample_rates": sorted({e["sample_rate"] for e in man["entries"]}),
        "size_bytes": size,
    }


def _stats(key: str, arr: Any, record: dict[str, Any] | None) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(arr)
    if np.iscomplexobj(a):
        a = np.abs(a)
    finite = a[np.isfinite(a)] if a.size else a
    return {
        "key": key,
        "shape": list(a.shape),
        "dtype": str(np.asarray(arr).dtype),
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "mean": float(finite.astype(np.float64).mean()) if finite.size else None,
        "non_finite": int(a.size - finite.size),
        "record": record,
    }


def inspect_output(path: Path, key: str | None = None) -> dict[str, Any]:
    """Describe an HDF5 output, an npy output directory or a manifest file.

    Parameters
    ----------
    path : Path
    key : str, optional
        Also load this entry and report min / max / mean / non-finite count.

    Raises
    ------
    OutputError
        Unreadable output or unknown key.
    """
    kind = kind_of(path)
    if kind == "h5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                man = json.loads(f["manifest"][()])
                info = _summary(man, path, path.stat().st_size)
                if key is not None:
                    name = f"features/{key}"
                    if name not in f:
                        raise OutputError(f"no entry {key!r} in {path}")
                    rec = next((e for e in man["entries"] if e["key"] == key), None)
                    info["entry"] = _stats(key, f[name][()], rec)
        except (OSError, KeyError, ValueError) as exc:
            raise OutputError(f"cannot read {path}: {exc}") from None
        return info
    if kind == "npy" or kind == "manifest":
        man_path = path / "manifest.json" if kind == "npy" else path
        man = manifest_mod.read(man_path)
        root = man_path.parent
        recorded = man.get("output")  # a sidecar put elsewhere with --manifest names its file
        data_path = path.parent / recorded if isinstance(recorded, str) else _h5_beside(path)
        if man["output_format"] == "h5" and kind == "manifest":
            size = data_path.stat().st_size if data_path.exists() else 0
        else:
            size = _size_on_disk(root)
        info = _summary(man, path, size)
        if key is not None:
            rec = next((e for e in man["entries"] if e["key"] == key), None)
            if rec is None:
                raise OutputError(f"no entry {key!r} in {path}")
            if man["output_format"] == "h5":
                return inspect_output(data_path, key) | {"path": str(path)}
            import numpy as np

            info["entry"] = _stats(key, np.load(root / f"{key}.npy", allow_pickle=False), rec)
        return info
    raise InputError(f"{path} is not a melcli output")


def inspect_audio(inputs: list[str], extensions: tuple[str, ...]) -> dict[str, Any]:
    """Describe what ``melcli mel INPUTS`` would process, with default parameters.

    Returns
    -------
    dict
        ``files``: per file key, path, container, subtype, rate, channels,
        frames, duration and the default mel shape; ``errors``: unreadable
        files with reasons; totals.
    """
    from melcli import audio
    from melcli.discover import discover
    from melcli.errors import DecodeError

    found = discover(inputs, extensions=extensions)
    default = FeatureParams(kind="mel")
    files: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for src in found.sources:
        try:
            info = audio.probe(src.path)
        except DecodeError as exc:
            errors.append({"key": src.key, "source": src.path, "reason": str(exc)})
            continue
        files.append(
            {
                "key": src.key,
                "source": src.path,
                "format": info.format,
                "subtype": info.subtype,
                "sample_rate": info.sample_rate,
                "channels": info.channels,
                "frames": info.frames,
                "duration": round(info.duration, 6),
                "mel_shape": [default.n_mels, default.n_frames(info.frames)],
                "size_bytes": os.path.getsize(src.path),
            }
        )
    return {
        "inputs": inputs,
        "files": files,
        "errors": errors,
        "warnings": found.warnings,
        "total_files": len(files),
        "total_duration": round(sum(f["duration"] for f in files), 6),
    }
