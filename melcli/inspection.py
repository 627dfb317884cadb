"""``melcli inspect``: what is in an output, or what an input would give, as plain dicts.

Outputs are read through the storage layer (`melcli.store`: format detection,
the per-format readers and their checks against the manifest)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from melcli import manifest as manifest_mod
from melcli import store
from melcli.discover import valid_key
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


def _h5_size(path: Path) -> int:
    """Bytes of an HDF5 output: the file and its shard files (``--shards``), if any."""
    shards = store.shards_dir(path)
    size = path.stat().st_size if path.exists() else 0
    return size + (_size_on_disk(shards) if shards.is_dir() and not shards.is_symlink() else 0)


def _summary(man: dict[str, Any], path: Path, size: int) -> dict[str, Any]:
    entries = [
        {"key": e["key"], "shape": e["shape"], "duration": e["duration"],
         "sample_rate": e["sample_rate"], "channels": e["channels"], "dtype": e["dtype"]}
        for e in man["entries"]
    ]  # fmt: skip
    shapes = [e["shape"] for e in entries]
    frames = [s[-1] for s in shapes]
    return {
        "path": str(path),
        "kind": man["params"]["kind"],
        "format": man["output_format"],
        "compression": man.get("compression", "none"),
        "melcli_version": man["melcli_version"],
        "command": man["command"],
        "preset": man.get("preset"),
        "created": man["created"],
        "params": man["params"],
        "total_entries": len(entries),
        "total_failures": len(man["failures"]),
        "total_duration": man["totals"]["duration"],
        "entries": entries,
        "failures": man["failures"],
        "warnings": [w for w in man.get("warnings", []) if isinstance(w, str)],
        "stats": _stats_summary(man),
        "frames": [min(frames), max(frames)] if frames else None,
        "shape_min": [min(s) for s in zip(*shapes, strict=False)] if shapes else None,
        "shape_max": [max(s) for s in zip(*shapes, strict=False)] if shapes else None,
        "dtype": sorted({e["dtype"] for e in entries}),
        "sample_rates": sorted({e["sample_rate"] for e in entries}),
        "size_bytes": size,
    }


def _stats_summary(man: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded dataset statistics: count, per-row mean and std (None if absent)."""
    from melcli.stats import RowStats

    try:
        rows = FeatureParams.from_dict(man["params"]).n_bins
    except (ValueError, TypeError, KeyError):
        return None
    totals = RowStats.from_dict(man.get("stats"), rows)
    if totals is None:
        return None
    summary = totals.summary()
    return {"count": summary["count"], "mean": summary["mean"].tolist(),
            "std": summary["std"].tolist()}  # fmt: skip


#: Entry statistics are computed over blocks of frames of at most this many
#: values, so memory stays bounded whatever the entry's size.
STATS_BLOCK = 1 << 22


def _stats(key: str, arr: Any, record: dict[str, Any]) -> dict[str, Any]:
    """min / max / mean / non-finite count of an entry, read block by block.

    ``arr`` is an h5py dataset or a memory map of the right shape and dtype
    (checked against ``record`` by the caller); complex values count by magnitude.
    """
    import numpy as np

    shape = tuple(arr.shape)
    step = max(1, STATS_BLOCK // max(1, int(np.prod(shape[:-1]))))
    lo, hi, total, finite = np.inf, -np.inf, 0.0, 0
    for start in range(0, shape[-1] if shape else 0, step):
        block = np.asarray(arr[..., start : start + step])
        if np.iscomplexobj(block):
            block = np.abs(block)
        values = block[np.isfinite(block)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
            total += float(values.sum(dtype=np.float64))
            finite += values.size
    return {
        "key": key,
        "shape": list(shape),
        "dtype": str(arr.dtype),
        "min": lo if finite else None,
        "max": hi if finite else None,
        "mean": total / finite if finite else None,
        "non_finite": int(np.prod(shape)) - finite,
        "record": record,
    }


def _record(man: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """The manifest record of entry ``key``; OutputError naming what ``key`` is instead."""
    rec = next((e for e in man["entries"] if e["key"] == key), None)
    if rec is not None:
        return rec
    raise no_such_entry(key, [e["key"] for e in man["entries"]], path)


def no_such_entry(key: str, keys: list[str], path: Path) -> OutputError:
    """The error for a ``--key`` that is not an entry of ``path``: what it is instead (a
    folder of entries), or the nearest keys."""
    import difflib

    inside = [k for k in keys if k.startswith(key + "/")]
    if inside:
        return OutputError(
            f"{key!r} in {path} is a folder of {len(inside)} entries, not an entry "
            f"(e.g. {inside[0]!r})"
        )

    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    hint = f"; did you mean: {', '.join(near)}?" if near else ""
    return OutputError(
        f"no entry {key!r} in {path}{hint} (melcli inspect {path} --keys lists them)"
    )


def inspect_output(path: Path, key: str | None = None) -> dict[str, Any]:
    """Describe an HDF5 output, an npy output directory or a manifest file.

    Parameters
    ----------
    path : Path
    key : str, optional
        Also report this entry's min / max / mean / non-finite count (read in
        blocks of frames, after its size is checked against its record).

    Raises
    ------
    OutputError
        Unreadable output, not a melcli output (a crafted manifest), or a
        ``key`` that is not one of its entries.
    """
    if key is not None and not valid_key(key):
        raise OutputError(f"--key {key!r} is not an entry key (a relative path, e.g. speech/a.wav)")
    kind = store.detect(path)
    if kind == "h5":
        reader = store.H5Reader(path)
        try:
            man = store.h5_manifest(reader.file(), str(path))
            info = _summary(man, path, _h5_size(path))
            if key is not None:
                rec = _record(man, key, path)
                info["entry"] = _stats(key, reader.array(key, rec), rec)
        except OSError as exc:
            raise OutputError(f"cannot read {path}: {exc}") from None
        finally:
            reader.close()
        return info
    if kind in store.DIR_FORMATS or kind == "manifest":
        man_path = path / store.NPY_MANIFEST if kind in store.DIR_FORMATS else path
        man = manifest_mod.validate(manifest_mod.read(man_path), str(path))
        root = man_path.parent
        data_path = store.described_h5(path, man)
        if man["output_format"] == "h5" and kind == "manifest":
            size = _h5_size(data_path)
        else:
            size = _size_on_disk(root)
        info = _summary(man, path, size)
        if key is not None:
            rec = _record(man, key, path)
            if man["output_format"] == "h5":
                if not data_path.exists():
                    raise OutputError(f"{data_path}, which {path} describes, is missing")
                return inspect_output(data_path, key) | {"path": str(path)}
            entries = store.open_reader(root, man["output_format"])
            info["entry"] = _stats(key, entries.array(key, rec), rec)
        return info
    raise InputError(f"{path} is not a melcli output")


def inspect_audio(
    inputs: list[str], extensions: tuple[str, ...], params: FeatureParams | None = None
) -> dict[str, Any]:
    """Describe what ``melcli mel INPUTS`` (or ``stft``) would process.

    Parameters
    ----------
    inputs : list of str
    extensions : tuple of str
    params : FeatureParams, optional
        The parameters of the run to preview (default: ``melcli mel``'s).

    Returns
    -------
    dict
        ``files``: per file key, path, container, subtype, native rate,
        channels, frames, duration, and the ``shape`` of its entry with these
        parameters (at ``sample_rate``, the rate it would be computed at);
        ``errors``: unreadable files with reasons; totals.
    """
    from melcli import audio
    from melcli.discover import discover
    from melcli.errors import DecodeError

    found = discover(inputs, extensions=extensions)
    default = params or FeatureParams(kind="mel")
    files: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for src in found.sources:
        try:
            info = audio.probe(src.path)
        except DecodeError as exc:
            errors.append({"key": src.key, "source": src.path, "reason": str(exc)})
            continue
        rate = default.sr or info.sample_rate
        n = -(-info.frames * rate // info.sample_rate)  # samples after resampling (soxr)
        shape = [default.n_bins, default.n_frames(n)]
        if not default.mono:  # a channel axis for every entry, as the run writes
            shape.insert(0, info.channels)
        files.append(
            {
                "key": src.key,
                "source": src.path,
                "format": info.format,
                "subtype": info.subtype,
                "native_sample_rate": info.sample_rate,
                "sample_rate": rate,
                "channels": info.channels,
                "frames": info.frames,
                "duration": round(info.duration, 6),
                "shape": shape,
                "size_bytes": os.path.getsize(src.path),
            }
        )
    return {
        "inputs": inputs,
        "kind": default.kind,
        "params": default.to_dict(),
        "files": files,
        "errors": errors,
        "warnings": found.warnings,
        "total_files": len(files),
        "total_duration": round(sum(f["duration"] for f in files), 6),
    }
