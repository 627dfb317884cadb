"""Turn command-line inputs into a sorted list of (source, key): never opens audio."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from melcli.errors import InputError

#: Suffixes counted as audio in a directory walk: what libsndfile reads.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    "wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "aifc", "au", "snd",
    "caf", "w64", "rf64",
)  # fmt: skip


@dataclass(frozen=True, order=True)
class Source:
    """One input file and the key its features are stored under.

    Attributes
    ----------
    key : str
        Relative POSIX path (never absolute, never containing ``..``).
    path : str
        Absolute path of the file (symlinks not resolved).
    """

    key: str
    path: str


@dataclass
class Discovery:
    """What `discover` found.

    Attributes
    ----------
    sources : list of Source
    warnings : list of str
        Paths skipped on purpose (a directory reached twice).
    unreadable : list of str
        Key prefixes of directories that could not be listed ('' for a whole
        root): an incremental run keeps the entries under them as they were.
    errors : list of str
        One message per unreadable directory.
    """

    sources: list[Source]
    warnings: list[str]
    unreadable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def printable(text: str) -> str:
    """``text`` as valid UTF-8: undecodable bytes of a file name become ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse_extensions(text: str) -> tuple[str, ...]:
    """``"wav, .FLAC"`` -> ``("wav", "flac")``."""
    exts = tuple(e.strip().lstrip(".").lower() for e in text.split(",") if e.strip())
    if not exts:
        raise InputError("--ext needs at least one suffix, e.g. --ext wav,flac")
    return exts


def read_path_list(stream: TextIO, *, null: bool) -> list[str]:
    """Paths from a stdin list: one per line, or NUL-separated with ``null``."""
    text = stream.read()
    parts = text.split("\0") if null else text.splitlines()
    return [p for p in parts if p.strip()] if not null else [p for p in parts if p]


def _safe_key(path: str) -> str:
    """Key for a path named explicitly: relative paths keep their directories."""
    norm = posixpath.normpath(path.replace(os.sep, "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or "/../" in norm:
        return printable(posixpath.basename(norm))
    return printable(norm)


def _walk(root: str, exts: frozenset[str], found: Discovery) -> Iterator[Source]:
    """Files under ``root`` with an audio suffix, sorted, hidden names skipped.

    Symlinked files and directories are followed; a directory reached twice (a
    symlink loop) is walked once and reported.
    """
    seen: set[tuple[int, int]] = set()
    abs_root = os.path.abspath(root)
    warnings = found.warnings

    def unreadable(directory: str, rel: str, exc: OSError) -> None:
        found.errors.append(f"cannot read directory {printable(directory)}: {exc.strerror}")
        found.unreadable.append(rel)

    def visit(directory: str, rel: str) -> Iterator[Source]:
        try:
            st = os.stat(directory)
        except OSError as exc:
            unreadable(directory, rel, exc)
            return
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            warnings.append(
                f"skipped {printable(directory)}: directory already walked (symlink loop)"
            )
            return
        seen.add(ident)
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            unreadable(directory, rel, exc)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                yield from visit(entry.path, child_rel)
            elif entry.name.rsplit(".", 1)[-1].lower() in exts and "." in entry.name:
                # broken symlinks are kept: decoding reports them as failures
                yield Source(printable(child_rel), entry.path)

    yield from visit(abs_root, "")


def discover(
    inputs: Sequence[str],
    *,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    stdin: TextIO | None = None,
    null: bool = False,
) -> Discovery:
    """Expand inputs to the sorted, de-duplicated list of sources.

    Parameters
    ----------
    inputs : sequence of str
        Directories (walked recursively), files (always tried, keyed by their
        name) and ``-`` (a list of paths on ``stdin``, keyed by their relative
        path, or their name if absolute or outside the current directory).
    extensions : iterable of str
        Suffixes (no dot, lower case) that count as audio in a directory walk.
    stdin : text stream, optional
        Where ``-`` reads from.
    null : bool
        The stdin list is NUL-separated (``find -print0``).

    Returns
    -------
    Discovery

    Raises
    ------
    InputError
        A command-line input that does not exist, or two different files that
        map to the same key.
    """
    exts = frozenset(extensions)
    result = Discovery([], [])
    found: list[Source] = []
    for item in inputs:
        if item == "-":
            if stdin is None:
                raise InputError("'-' given but no standard input is available")
            for path in read_path_list(stdin, null=null):
                if os.path.isdir(path):
                    found.extend(_walk(path, exts, result))
                else:  # missing files are kept and fail (recorded) when decoded
                    found.append(Source(_safe_key(path), os.path.abspath(path)))
        elif os.path.isdir(item):
            found.extend(_walk(item, exts, result))
        elif os.path.lexists(item):
            name = posixpath.basename(item.replace(os.sep, "/"))
            found.append(Source(printable(name), os.path.abspath(item)))
        else:
            raise InputError(f"input not found: {item}")
    by_key: dict[str, Source] = {}
    for src in found:
        other = by_key.get(src.key)
        if other is None:
            by_key[src.key] = src
        elif os.path.realpath(other.path) != os.path.realpath(src.path):
            raise InputError(
                f"two inputs map to the same key {src.key!r}: {other.path} and {src.path}; "
                "give their common parent directory instead"
            )
    _check_nesting(by_key)
    result.sources = sorted(by_key.values())
    return result


def _check_nesting(by_key: dict[str, Source]) -> None:
    """Refuse keys that cannot coexist in an output tree.

    ``x.wav`` and ``x.wav/inner.wav`` (an HDF5 dataset cannot also be a group),
    ``a.wav`` and ``a.wav.npy/b.wav`` (the file ``a.wav.npy`` cannot also be a
    directory), and ``manifest.json/...`` (the npy manifest's name).
    """
    for key in sorted(by_key):
        parts = key.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            other = by_key.get(prefix) or (
                by_key.get(prefix[: -len(".npy")]) if prefix.endswith(".npy") else None
            )
            if other is not None:
                raise InputError(
                    f"keys {other.key!r} ({other.path}) and {key!r} ({by_key[key].path}) "
                    "cannot both be stored: one would be a folder of the other; "
                    "rename one of them or process them separately"
                )
        if len(parts) > 1 and parts[0] == "manifest.json":
            raise InputError(
                f"key {key!r} ({by_key[key].path}) would collide with the npy output's "
                "manifest.json; rename that folder"
            )
