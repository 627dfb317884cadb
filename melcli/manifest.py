"""The JSON manifest: build it, write it atomically, read it back."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from melcli._version import __version__
from melcli.errors import OutputError

MANIFEST_VERSION = 1


def build(
    *,
    params: dict[str, Any],
    command: str,
    output_format: str,
    entries: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    frequencies: dict[int, list[float]],
    inputs: list[dict[str, str]] | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """Assemble the manifest of one output.

    Parameters
    ----------
    params : dict
        ``FeatureParams.to_dict()``: every resolved parameter.
    command : str
        The command line that produced the output.
    output_format : {'h5', 'npy'}
    entries, failures : list of dict
        One record per written entry / failed input, sorted here by key.
    frequencies : dict
        Sample rate -> row frequencies in Hz at that rate.
    inputs : list of dict, optional
        The command-line inputs, ``{"given": ..., "absolute": ...}`` each
        (`melcli.runner.recorded_inputs`).
    created : str, optional
        UTC ISO 8601 time; now by default.

    Returns
    -------
    dict
        JSON-serialisable; the same inputs give the same dict except ``created``.
    """
    entries = sorted(entries, key=lambda e: e["key"])
    failures = sorted(failures, key=lambda f: (f["key"], f["source"]))
    return {
        "melcli_version": __version__,
        "manifest_version": MANIFEST_VERSION,
        "command": command,
        "inputs": inputs or [],
        "created": created or utc_now(),
        "output_format": output_format,
        "params": params,
        "frequencies": {str(sr): freqs for sr, freqs in sorted(frequencies.items())},
        "entries": entries,
        "failures": failures,
        "totals": {
            "inputs": len(entries) + len(failures),
            "entries": len(entries),
            "failures": len(failures),
            "duration": round(sum(e["duration"] for e in entries), 6),
            "samples": sum(e["n_samples"] for e in entries),
        },
    }


def utc_now() -> str:
    """Current UTC time, ISO 8601 with a ``Z`` suffix, second precision."""
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def dumps(manifest: dict[str, Any]) -> str:
    """Serialise as stable, readable JSON: one line per entry, failure and rate."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    parts = []
    for key, value in manifest.items():
        if isinstance(value, list) and value:
            body = "[\n" + ",\n".join(f"  {one(v)}" for v in value) + "\n ]"
        elif isinstance(value, dict) and value:
            body = "{\n" + ",\n".join(f"  {one(k)}: {one(v)}" for k, v in value.items()) + "\n }"
        else:
            body = one(value)
        parts.append(f" {one(key)}: {body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory so that a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a flushed temporary file and a rename.

    Raises
    ------
    OutputError
        When the file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)  # a leftover of a killed run with this pid (never followed)
        # O_EXCL|O_NOFOLLOW: a link planted at the temporary name is not written through
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644)
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a manifest file.

    Raises
    ------
    OutputError
        Not readable, not JSON, or not a melcli manifest.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(data, dict) or "melcli_version" not in data or "params" not in data:
        raise OutputError(f"{path} is not a melcli manifest")
    return data
