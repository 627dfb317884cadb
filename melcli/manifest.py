"""The JSON manifest: build it, write it atomically, read it back.

The text has one line per entry, so a rerun reads a large manifest one entry at
a time into an `EntryTable` (columns, not a dict per entry) and writes it back
by copying the kept entries' lines: the cost of a rerun grows with the entries
it changes, not with the dataset (a million entries: docs/benchmarks.md).
"""

from __future__ import annotations

import array
import datetime as _dt
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from melcli._version import __version__
from melcli.errors import OutputError

MANIFEST_VERSION = 1


def build(
    *,
    params: dict[str, Any],
    command: str,
    output_format: str,
    entries: list[dict[str, Any]] | EntryTable,
    failures: list[dict[str, Any]],
    frequencies: dict[int, list[float]],
    inputs: list[dict[str, str]] | None = None,
    root: str | None = None,
    created: str | None = None,
    warnings: list[str] | None = None,
    compression: str = "none",
    stats: dict[str, Any] | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Assemble the manifest of one output.

    Parameters
    ----------
    params : dict
        ``FeatureParams.to_dict()``: every resolved parameter.
    command : str
        The command line that produced the output.
    output_format : {'h5', 'npy', 'kaldi'}
    entries : list of dict or EntryTable
        One record per written entry, sorted here by key.
    failures : list of dict
        One record per failed input, sorted here by key.
    frequencies : dict
        Sample rate -> row frequencies in Hz at that rate.
    inputs : list of dict, optional
        The command-line inputs, ``{"given": ..., "absolute": ...}`` each
        (`melcli.runner.recorded_inputs`).
    root : str, optional
        ``--root``, absolute: every key is a path relative to it.
    created : str, optional
        UTC ISO 8601 time; now by default.
    warnings : list of str, optional
        What the parameters make of this data (`melcli.advice.data_warnings`).
    compression : str
        How an HDF5 output stores its entries (``--compression``).
    stats : dict, optional
        Per-row count / sum / sum of squares over every frame of every entry
        (`melcli.stats.RowStats`; None for complex STFT).
    preset : str, optional
        The ``--preset`` the parameters started from (`melcli.presets`).

    Returns
    -------
    dict
        JSON-serialisable; the same inputs give the same dict except ``created``.
    """
    table = entries if isinstance(entries, EntryTable) else EntryTable.from_records(entries)
    failures = sorted(failures, key=lambda f: (f["key"], f["source"]))
    return {
        "melcli_version": __version__,
        "manifest_version": MANIFEST_VERSION,
        "command": command,
        "inputs": inputs or [],
        "root": root,
        "created": created or utc_now(),
        "output_format": output_format,
        "compression": compression,
        "preset": preset,
        "params": params,
        "frequencies": {str(sr): freqs for sr, freqs in sorted(frequencies.items())},
        "entries": table,
        "failures": failures,
        "warnings": warnings or [],
        "stats": stats,
        "totals": {
            "inputs": len(table) + len(failures),
            "entries": len(table),
            "failures": len(failures),
            "duration": round(float(table.duration.sum()), 6),
            "samples": int(table.n_samples.sum()),
        },
    }


def utc_now() -> str:
    """Current UTC time, ISO 8601 with a ``Z`` suffix, second precision."""
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def dumps(manifest: dict[str, Any]) -> bytes:
    """Serialise as stable, readable UTF-8 JSON: one line per entry, failure and rate."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    pieces: list[bytes] = []
    for n, (key, value) in enumerate(manifest.items()):
        pieces.append(f"{',' if n else '{'}\n {one(key)}: ".encode())
        if isinstance(value, EntryTable):  # its lines as they are: one copy, by the join
            pieces += [b"[\n  ", *value.chunks(), b"\n ]"] if len(value) else [b"[]"]
            continue
        if isinstance(value, list) and value:
            body = "[\n" + ",\n".join(f"  {one(v)}" for v in value) + "\n ]"
        elif isinstance(value, dict) and value:
            body = "{\n" + ",\n".join(f"  {one(k)}: {one(v)}" for k, v in value.items()) + "\n }"
        else:
            body = one(value)
        pieces.append(body.encode())
    pieces.append(b"\n}\n")
    return b"".join(pieces)


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory so that a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str | bytes) -> None:
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
        with open(fd, "wb") as fh:
            fh.write(text.encode() if isinstance(text, str) else text)
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


def loads(text: bytes, where: str, label: str = "its manifest") -> dict[str, Any]:
    """Parse and check (`validate`) a manifest; its ``entries`` as an `EntryTable`.

    The text `dumps` writes is read one entry line at a time; any other JSON
    (edited by hand) is parsed whole, then checked the same way.

    Raises
    ------
    OutputError
        ``<where> is not a melcli output: ...``, one line.
    """
    marker = b'\n "entries": [\n  '
    spans: tuple[array.array[int], array.array[int]] | None = None
    at = text.find(marker)
    end = text.find(b"\n ]", at) if at >= 0 else -1
    if end > 0:  # JSON strings escape newlines: every raw newline ends a line
        spans, pos = (array.array("q"), array.array("q")), at + len(marker)
        starts, ends = spans
        while True:
            nl = text.find(b"\n", pos, end)
            if nl < 0:
                starts.append(pos)
                ends.append(end)
                break
            if text[nl - 1 : nl] != b"," or text[nl + 1 : nl + 3] != b"  ":
                spans = None
                break
            starts.append(pos)
            ends.append(nl - 1)
            pos = nl + 3
    if spans is not None:
        data = _parse(text[:at] + b'\n "entries": []' + text[end + 3 :], where, label)
        validate(data, where)
        data["entries"] = EntryTable.from_lines(text, spans, where)
    else:
        data = _parse(text, where, label)
        records = data.get("entries") if isinstance(data, dict) else None
        validate({**data, "entries": []} if isinstance(records, list) else data, where)
        data["entries"] = EntryTable.from_records(records or [], where)
    data["entries"].origin = text
    return data


def _parse(text: bytes, where: str, label: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise OutputError(f"{where} is not a melcli output: {label}: {exc}") from None


def read_entries(path: str | os.PathLike[str], where: str) -> dict[str, Any]:
    """Load and check a manifest file, its entries as an `EntryTable` (`loads`).

    Raises
    ------
    OutputError
        Not readable, or not a melcli output's manifest.
    """
    return loads(read_bytes(path), where)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a manifest file (never opening a FIFO or a device)."""
    from melcli.discover import open_regular

    try:
        fd, _ = open_regular(os.fspath(path))
        with open(fd, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise OutputError(f"cannot read manifest {path}: {exc}") from None


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
_ITEMSIZE = {name: np.dtype(name).itemsize for name in _DTYPES}


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
        elif data["output_format"] not in ("h5", "npy", "kaldi"):
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


class EntryTable:
    """The entries of a manifest, compact enough for a million of them.

    A list of dicts costs about 1.5 KB per entry (1.5 GB at a million, most of
    a rerun's memory); here each entry is its JSON text as the manifest holds it
    (one line, in one shared buffer) plus the columns a rerun reads, about
    350 bytes per entry in all. Rows are sorted by key.

    Attributes
    ----------
    keys : list of str
    source_size, source_mtime : ndarray
        -1 / NaN where the manifest has null.
    hashes : list of (str or None), or None
        ``source_hash`` per row; None when no row has one.
    duration, n_samples, nbytes, sample_rate : ndarray
        Per row; ``nbytes`` is the size of the feature array.
    origin : bytes or None
        The whole manifest text the rows were read from (`loads`).
    untouched : bool
        Read from an HDF5 output not modified since melcli wrote it
        (`melcli.store.read_manifest`).
    """

    #: Between two entries in the manifest's text (`dumps`).
    SEP = b",\n  "

    def __init__(self, buf: bytes | list[Any], starts: np.ndarray, ends: np.ndarray,
                 columns: dict[str, Any]) -> None:  # fmt: skip
        self._buf = buf  # the text, or its pieces (`merged`), joined when needed
        self.starts = starts
        self.ends = ends
        self.keys: list[str] = columns["keys"]
        # a source is mostly a shared directory + the key: stored so, 8 bytes a row
        self._heads: list[str] = columns["heads"]
        self._whole: np.ndarray = columns["whole"]
        self.source_size: np.ndarray = columns["source_size"]
        self.source_mtime: np.ndarray = columns["source_mtime"]
        self.hashes: list[str | None] | None = columns["hashes"]
        self.duration: np.ndarray = columns["duration"]
        self.n_samples: np.ndarray = columns["n_samples"]
        self.nbytes: np.ndarray = columns["nbytes"]
        self.sample_rate: np.ndarray = columns["sample_rate"]
        self.origin: bytes | None = None
        self.untouched = False  # see `melcli.store.read_manifest`
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def buf(self) -> bytes:
        """The entries' text: one JSON object per row, `SEP` between them."""
        if isinstance(self._buf, list):
            self._buf = self.SEP.join(self._buf)
        return self._buf

    def chunks(self) -> list[Any]:
        """`buf` in pieces (bytes-like), as `dumps` writes it without joining it."""
        if not isinstance(self._buf, list):
            return [self._buf]
        out: list[Any] = []
        for piece in self._buf:
            out += [self.SEP, piece] if out else [piece]
        return out

    def source(self, i: int) -> str:
        """The ``source`` of row ``i``."""
        return self._heads[i] if self._whole[i] else self._heads[i] + self.keys[i]

    def row(self, key: str) -> int | None:
        """The row of ``key``, or None."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        return self._index.get(key)

    def line(self, i: int) -> bytes:
        """Row ``i`` as the JSON text of its entry."""
        return self.buf[self.starts[i] : self.ends[i]]

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict (parsed on demand)."""
        return dict(json.loads(self.line(i)))

    def stat(self, i: int) -> dict[str, Any]:
        """The ``source_size``/``source_mtime``/``source_hash`` fields of row ``i``."""
        size, mtime = int(self.source_size[i]), float(self.source_mtime[i])
        out: dict[str, Any] = {"source_size": None if size < 0 else size,
                               "source_mtime": None if mtime != mtime else mtime}  # fmt: skip
        if self.hashes is not None and self.hashes[i] is not None:
            out["source_hash"] = self.hashes[i]
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.record(i) for i in range(len(self)))

    @classmethod
    def from_lines(
        cls,
        buf: bytes,
        spans: tuple[array.array[int], array.array[int]],
        where: str,
        parsed: list[dict[str, Any]] | None = None,
    ) -> EntryTable:
        """Parse and check (`validate`) each entry of ``buf`` (starts, ends); ``parsed``:
        the records those lines were dumped from (nothing to parse)."""
        cols = _Columns()
        if parsed is not None:
            for n, e in enumerate(parsed):
                cols.add(e, n, where)
        else:
            loads = json.loads
            for n, (start, end) in enumerate(zip(*spans, strict=True)):
                cols.add(loads(buf[start:end]), n, where)
        starts = np.frombuffer(spans[0], np.int64)
        ends = np.frombuffer(spans[1], np.int64)
        table = cls(buf, starts, ends, cols.done())
        if table.keys != sorted(table.keys) or len(set(table.keys)) != len(table):
            table = table.sorted_unique(where)
        return table

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], where: str = "") -> EntryTable:
        """A table of ``records`` (checked, sorted by key)."""
        recs = list(records)
        for n, e in enumerate(recs):  # checked before sorting: a record may have no key
            if not _fine([e]):
                problem = _problem(e, "entry") or "has an invalid field"
                raise OutputError(f"{where} is not a melcli output: entry {n} {problem}")
        recs.sort(key=lambda e: e["key"])
        lines = [json.dumps(r, ensure_ascii=False, allow_nan=False).encode() for r in recs]
        buf = cls.SEP.join(lines)
        spans: tuple[array.array[int], array.array[int]] = (array.array("q"), array.array("q"))
        pos = 0
        for line in lines:
            spans[0].append(pos)
            spans[1].append(pos + len(line))
            pos += len(line) + len(cls.SEP)
        del lines
        return cls.from_lines(buf, spans, where, parsed=recs)

    def sorted_unique(self, where: str) -> EntryTable:
        """A hand-edited manifest out of order: rebuilt in key order; a key twice is refused."""
        seen = set()
        for k in self.keys:
            if k in seen:
                raise OutputError(f"{where} is not a melcli output: the key {k!r} is listed twice")
            seen.add(k)
        return EntryTable.from_records([self.record(i) for i in range(len(self))], where)

    def merged(self, rows: Sequence[int], new: EntryTable) -> EntryTable:
        """Rows ``rows`` (ascending) of this table and every row of ``new``, in key order.

        The kept rows' text is copied in runs (consecutive rows are consecutive
        in ``buf``), so keeping a million entries costs a few large copies.
        """
        kept = np.asarray(rows, np.int64)
        total = len(kept) + len(new)
        is_new = np.zeros(total, bool)
        keys: list[str] = []
        heads: list[str] = []
        hashes: list[str | None] = []
        i = j = 0
        for n in range(total):  # merge two sorted key lists
            if j == len(new) or (i < len(kept) and self.keys[kept[i]] < new.keys[j]):
                t, r = self, int(kept[i])
                i += 1
            else:
                t, r = new, j
                is_new[n] = True
                j += 1
            keys.append(t.keys[r])
            heads.append(t._heads[r])
            hashes.append(t.hashes[r] if t.hashes is not None else None)
        src_row = np.empty(total, np.int64)
        src_row[~is_new] = kept
        src_row[is_new] = np.arange(len(new))
        any_hash = any(h is not None for h in hashes)
        columns: dict[str, Any] = {"keys": keys, "heads": heads,
                                   "hashes": hashes if any_hash else None}  # fmt: skip
        for name in (*_Columns.NUMERIC, "_whole"):
            col = np.empty(total, getattr(self, name).dtype)
            col[~is_new] = getattr(self, name)[kept]
            col[is_new] = getattr(new, name)
            columns[name.strip("_")] = col
        # runs of consecutive rows of one table: one copy each
        cut = np.flatnonzero((np.diff(is_new) != 0) | (np.diff(src_row) != 1)) + 1
        pieces: list[Any] = []
        starts = np.empty(total, np.int64)
        ends = np.empty(total, np.int64)
        pos = 0
        for a, b in zip(np.r_[0, cut], np.r_[cut, total], strict=True):
            if a == b:
                continue
            t = new if is_new[a] else self
            first, last = src_row[a], src_row[b - 1]
            base = int(t.starts[first])
            pieces.append(memoryview(t.buf)[base : int(t.ends[last])])
            starts[a:b] = t.starts[first : last + 1] - base + pos
            ends[a:b] = t.ends[first : last + 1] - base + pos
            pos += int(t.ends[last]) - base + len(self.SEP)
        return EntryTable(pieces, starts, ends, columns)


class _Columns:
    """Builds the columns of an `EntryTable`, one checked record at a time."""

    NUMERIC = ("source_size", "source_mtime", "duration", "n_samples", "nbytes", "sample_rate")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.heads: list[str] = []
        self.whole = array.array("b")
        self._interned: dict[str, str] = {}
        self.hashes: list[str | None] = []
        self.any_hash = False
        self.num = {name: array.array("q")
                    for name in ("source_size", "n_samples", "nbytes", "sample_rate")}  # fmt: skip
        self.mtime = array.array("d")
        self.duration = array.array("d")

    def add(self, e: Any, n: int, where: str) -> None:
        if not _fine([e]):
            problem = _problem(e, "entry") or "has an invalid field"
            raise OutputError(f"{where} is not a melcli output: entry {n} {problem}")
        self.keys.append(e["key"])
        source, key = e["source"], e["key"]
        whole = not source.endswith(key)
        head = source if whole else source[: len(source) - len(key)]
        self.heads.append(head if whole else self._interned.setdefault(head, head))
        self.whole.append(whole)
        h = e.get("source_hash")
        self.hashes.append(h if isinstance(h, str) else None)
        self.any_hash = self.any_hash or isinstance(h, str)
        size, mtime = e.get("source_size"), e.get("source_mtime")
        num = self.num
        num["source_size"].append(size if type(size) is int else -1)
        self.mtime.append(float(mtime) if isinstance(mtime, (int, float)) else float("nan"))
        self.duration.append(float(e["duration"]))
        samples = e.get("n_samples")
        num["n_samples"].append(samples if type(samples) is int else 0)
        count = 1
        for d in e["shape"]:
            count *= d
        num["nbytes"].append(count * _ITEMSIZE[e["dtype"]])
        num["sample_rate"].append(e["sample_rate"])

    def done(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keys": self.keys, "heads": self.heads,
                               "whole": np.frombuffer(self.whole, np.int8).astype(bool),
                               "hashes": self.hashes if self.any_hash else None,
                               "source_mtime": np.frombuffer(self.mtime, np.float64),
                               "duration": np.frombuffer(self.duration, np.float64)}  # fmt: skip
        for name, arr in self.num.items():
            out[name] = np.frombuffer(arr, np.int64)
        return out
