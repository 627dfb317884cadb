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
    root: str | None = None,
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
    root : str, optional
        ``--root``, absolute: every key is a path relative to it.
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
        "root": root,
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
        Not readable, not JSON, or not a melcli manifest. A manifest whose
        content is used is checked further with `validate`.
    """
    from melcli.discover import open_regular

    try:
        fd, _ = open_regular(os.fspath(path))  # a FIFO named *.json would block open()
        with open(fd, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:
        raise OutputError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(data, dict) or "melcli_version" not in data or "params" not in data:
        raise OutputError(f"{path} is not a melcli manifest")
    return data


_Number = (int, float)
#: The fields of a manifest, its entries and its failures that melcli reads back.
_FIELDS: dict[str, tuple[tuple[str, Any], ...]] = {
    "manifest": (("melcli_version", str), ("command", str), ("created", str),
                 ("output_format", str), ("params", dict), ("entries", list),
                 ("failures", list), ("totals", dict)),
    "entry": (("key", str), ("source", str), ("sample_rate", int), ("channels", int),
              ("duration", _Number), ("shape", list), ("dtype", str)),
    "failure": (("key", str), ("source", str), ("reason", str)),
}  # fmt: skip
#: What melcli stores (``--dtype``, and complex with ``stft --complex``).
_DTYPES = frozenset({"float16", "float32", "float64", "complex64", "complex128"})


def _problem(record: Any, kind: str) -> str | None:
    """What is wrong with one record of ``kind`` (None: nothing melcli reads is wrong)."""
    from melcli.discover import valid_key

    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    for name, types in _FIELDS[kind]:
        if not isinstance(record.get(name), types):
            return f"has no valid {name!r}"
    if kind == "manifest":
        return None
    if not valid_key(record["key"]):
        return f"has the key {record['key']!r}, not a relative path inside it"
    if kind == "failure":
        return None
    shape = record["shape"]
    if len(shape) not in (2, 3) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return f"has an invalid shape {shape!r}"
    if record["dtype"] not in _DTYPES or record["sample_rate"] <= 0:
        return f"has an invalid dtype or rate ({record['dtype']!r}, {record['sample_rate']!r})"
    return None


def _fine(entries: list[Any]) -> bool:
    """`_problem` finds nothing in any entry: the same checks, written for speed."""
    from melcli.discover import valid_key

    dtypes, number = _DTYPES, _Number
    try:
        for e in entries:
            shape = e["shape"]
            if not (
                type(e["key"]) is str and valid_key(e["key"]) and type(e["source"]) is str
                and type(e["sample_rate"]) is int and e["sample_rate"] > 0
                and type(e["channels"]) is int and isinstance(e["duration"], number)
                and e["dtype"] in dtypes and type(shape) is list and 2 <= len(shape) <= 3
                and type(shape[0]) is int and type(shape[1]) is int
                and type(shape[-1]) is int and min(shape) >= 0
            ):  # fmt: skip
                return False
    except (KeyError, TypeError):
        return False
    return True


def validate(data: Any, where: str) -> dict[str, Any]:
    """Check that ``data`` is a melcli manifest, down to every field melcli reads back.

    Keys must be keys melcli could have made (`melcli.discover.valid_key`): a
    crafted ``../secret`` never names a file.

    Parameters
    ----------
    data : object
        Parsed JSON.
    where : str
        Named in the error (the output or manifest path).

    Returns
    -------
    dict
        ``data``.

    Raises
    ------
    OutputError
        ``<where> is not a melcli output: <what is wrong>``, one line.
    """
    problem = _problem(data, "manifest")
    if problem is None:
        if not isinstance(data["params"].get("kind"), str):
            problem = "has no 'kind' in its params"
        elif not isinstance(data["totals"].get("duration"), _Number):
            problem = "has no 'duration' in its totals"
        elif data["output_format"] not in ("h5", "npy"):
            problem = f"has an unknown output_format {data['output_format']!r}"
    if problem is not None:
        raise OutputError(f"{where} is not a melcli output: its manifest {problem}")
    for kind, records in (("entry", data["entries"]), ("failure", data["failures"])):
        if kind == "entry" and _fine(records):  # the usual case, 1M entries in about a second
            continue
        for i, record in enumerate(records):
            problem = _problem(record, kind)
            if problem is not None:
                raise OutputError(f"{where} is not a melcli output: {kind} {i} {problem}")
    return data
