"""Turn command-line inputs into a sorted list of (source, key): never opens audio.

Also the one way melcli opens an input for reading (`open_regular`): only
regular files, never blocking on a FIFO or touching a device.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from melcli.errors import InputError

#: Suffixes counted as audio in a directory walk: what libsndfile reads.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    "wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "aifc", "au", "snd",
    "caf", "w64", "rf64",
)  # fmt: skip


@dataclass(frozen=True, order=True, slots=True)
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
    unreadable_dirs : list of UnreadableDir
        The same directories, for the manifest's failures.
    """

    sources: list[Source]
    warnings: list[str]
    unreadable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unreadable_dirs: list[UnreadableDir] = field(default_factory=list)


@dataclass(frozen=True)
class UnreadableDir:
    """A directory that could not be listed.

    Attributes
    ----------
    prefix : str
        Key prefix of the entries under it ('' for a whole input directory).
    path : str
        The directory (printable).
    reason : str
        Why, e.g. ``Permission denied``.
    """

    prefix: str
    path: str
    reason: str


def printable(text: str) -> str:
    """``text`` as valid UTF-8: undecodable bytes of a file name become ``\\xNN``.

    Injective, so two names never share a key: a name that has a backslash or
    an undecodable byte is escaped whole (``\\`` -> ``\\\\``, byte -> ``\\xNN``),
    so an escaped name always holds a backslash that an unchanged name cannot:
    the literal name ``x\\xff.wav`` becomes ``x\\\\xff.wav``, distinct from
    ``x<0xff>.wav``'s ``x\\xff.wav``. Every other name is unchanged.
    """
    if "\\" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    text = text.replace("\\", "\\\\")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse_extensions(text: str) -> tuple[str, ...]:
    """``"wav, .FLAC"`` -> ``("wav", "flac")``."""
    exts = tuple(e.strip().lstrip(".").lower() for e in text.split(",") if e.strip())
    if not exts:
        raise InputError("--ext needs at least one suffix, e.g. --ext wav,flac")
    return exts


def read_path_list(stream: IO[str] | IO[bytes], *, null: bool) -> list[str]:
    """Paths from a stdin list: one per line, or NUL-separated with ``null``.

    The list is read as bytes (a text stream's ``buffer``) and each name decoded
    with `os.fsdecode`, so names that are not valid UTF-8 survive whatever the
    locale. Lines are split on ``\\n`` only: ``\\r``, U+0085 and U+2028 are
    parts of names. Blank lines are skipped.

    Raises
    ------
    InputError
        A NUL byte in a newline-separated list (a ``-print0`` list without ``-0``).
    """
    raw = getattr(stream, "buffer", stream).read()
    data = raw if isinstance(raw, bytes) else os.fsencode(raw)
    if null:
        return [os.fsdecode(p) for p in data.split(b"\0") if p]
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if b"\0" in line:
            raise InputError(
                f"line {number} of the list on standard input contains a NUL byte; "
                "for a NUL-separated list (find -print0) add -0"
            )
    return [os.fsdecode(p) for p in lines if p.strip()]


#: What `file_kind` calls each type of file that is not a regular file.
_KINDS = (
    (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
)  # fmt: skip


def file_kind(mode: int) -> str:
    """``'FIFO'``, ``'socket'``, ``'character device'``, ... for a ``st_mode``."""
    return next((name for test, name in _KINDS if test(mode)), "special file")


class NotRegularFile(OSError):
    """An input that is not a regular file (FIFO, socket, device): never read.

    Attributes
    ----------
    stat : os.stat_result
        What the path is.
    """

    def __init__(self, path: str, st: os.stat_result) -> None:
        kind = file_kind(st.st_mode)
        super().__init__(f"not a regular file ({kind})")
        self.filename = path
        self.stat = st
        self.reason = "is a directory" if kind == "directory" else f"not a regular file ({kind})"


def os_reason(path: str, exc: OSError) -> str:
    """One line for an input that could not be stat-ed or opened.

    Only a non-regular file is a lasting property of the file (see
    `melcli.errors.DecodeError`'s ``permanent``); the others are retried on the next run.
    """
    if isinstance(exc, NotRegularFile):
        return exc.reason
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "broken symlink" if os.path.islink(path) else "file not found"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "is a directory"
    return f"cannot open: {exc.strerror or exc}"


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open an input for reading, only if it is a regular file.

    The path is checked with ``stat`` first, so a FIFO, socket or device is never
    opened at all (opening a FIFO blocks until a writer comes; opening some
    devices has effects). It is then opened non-blocking and checked again on
    the descriptor, so a FIFO swapped in between the two cannot block: what is
    read is what was checked. Symlinks are followed.

    Returns
    -------
    fd : int
        A blocking, close-on-exec descriptor; the caller closes it.
    stat : os.stat_result
        Of the opened file.

    Raises
    ------
    NotRegularFile
        A FIFO, socket, device or directory.
    OSError
        Missing, unreadable, name too long, ...
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(path, st)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, st)
        os.set_blocking(fd, True)  # reads of a regular file never wait on a writer
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def valid_key(key: str) -> bool:
    """True for a key melcli could have made: relative, no ``.``/``..``/empty parts.

    Keys from a manifest are checked with this before they name a file, so a
    crafted manifest cannot point outside its output.
    """
    return (
        bool(key)
        and not key.startswith("/")
        and all(p not in ("", ".", "..") for p in key.split("/"))
    )


def _safe_key(path: str) -> str:
    """Key for a path named explicitly: relative paths keep their directories."""
    norm = posixpath.normpath(path.replace(os.sep, "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or "/../" in norm:
        return printable(posixpath.basename(norm))
    return printable(norm)


def root_relative(path: str, root: str) -> str | None:
    """``path`` relative to the directory ``root`` ('' for the root itself), None if outside.

    Both are made absolute (`os.path.abspath`, from the current directory) and
    compared as written; failing that, with the symlinks of the root and of the
    file's own directory resolved (not of the file itself), so ``--root coll``
    matches ``$PWD/coll/x.wav`` when ``$PWD`` is reached through a link.
    """
    absolute, base = os.path.abspath(path), os.path.abspath(root)
    real = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    for p, b in ((absolute, base), (real, os.path.realpath(base))):
        if p == b:
            return ""
        prefix = b.rstrip(os.sep) + os.sep
        if p.startswith(prefix):
            return p[len(prefix) :].replace(os.sep, "/")
    return None


def _walk(root: str, exts: frozenset[str], found: Discovery, base: str = "") -> Iterator[Source]:
    """Files under ``root`` with an audio suffix, sorted, hidden names skipped.

    Keys are paths relative to ``root``, under ``base`` if given (``--root``).
    Depth first, each directory's entries in name order, without recursion (a
    tree thousands of levels deep is fine). Symlinked files and directories are
    followed; a directory reached twice (a symlink loop) is walked once and
    reported.
    """
    seen: set[tuple[int, int]] = set()
    warnings = found.warnings

    def unreadable(path: str, rel: str, exc: OSError, what: str = "directory ") -> None:
        found.errors.append(f"cannot read {what}{printable(path)}: {exc.strerror}")
        found.unreadable.append(rel)
        found.unreadable_dirs.append(UnreadableDir(rel, printable(path), str(exc.strerror)))

    def enter(directory: str, rel: str) -> Iterator[os.DirEntry[str]] | None:
        try:
            st = os.stat(directory)
        except OSError as exc:
            unreadable(directory, rel, exc)
            return None
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            warnings.append(
                f"skipped {printable(directory)}: directory already walked (symlink loop)"
            )
            return None
        seen.add(ident)
        try:
            with os.scandir(directory) as it:
                return iter(sorted(it, key=lambda e: e.name))
        except OSError as exc:
            unreadable(directory, rel, exc)
            return None

    top = enter(os.path.abspath(root), base)
    stack = [(top, base)] if top is not None else []
    while stack:
        entries, rel = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        child_rel = f"{rel}/{entry.name}" if rel else entry.name
        audio = entry.name.rsplit(".", 1)[-1].lower() in exts and "." in entry.name
        try:
            is_dir = entry.is_dir()  # follows symlinks; False for a broken one
        except OSError as exc:  # a symlink in a directory we may list but not search
            if not audio:  # it may be a directory: keep what it held
                unreadable(entry.path, child_rel, exc, "")
            is_dir = False
        if is_dir:
            sub = enter(entry.path, child_rel)
            if sub is not None:
                stack.append((sub, child_rel))
        elif audio:
            # broken symlinks are kept: decoding reports them as failures
            yield Source(printable(child_rel), entry.path)


def discover(
    inputs: Sequence[str],
    *,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    stdin: IO[str] | IO[bytes] | None = None,
    null: bool = False,
    root: str | None = None,
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
    stdin : text or binary stream, optional
        Where ``-`` reads from.
    null : bool
        The stdin list is NUL-separated (``find -print0``).
    root : str, optional
        ``--root``: every key is the input's path relative to this directory
        (`root_relative`), whatever the input came from.

    Returns
    -------
    Discovery

    Raises
    ------
    InputError
        A command-line input that does not exist, an input outside ``root``,
        or two different files that map to the same key.
    """
    exts = frozenset(extensions)
    result = Discovery([], [])
    found: list[Source] = []
    listed: set[Source] = set()  # named on stdin: the same-key advice differs
    outside: list[str] = []

    def walk(path: str) -> Iterator[Source]:  # a directory: keys under its path from the root
        rel = "" if root is None else root_relative(path, root)
        if rel is None:
            outside.append(printable(path))
            return iter(())
        return _walk(path, exts, result, rel)

    def named(path: str, key: str) -> Source | None:  # a file named on the command line or stdin
        if root is not None:
            rel = root_relative(path, root)
            if not rel:  # outside, or the root itself (not a file)
                outside.append(printable(path))
                return None
            key = printable(rel)
        return Source(key, os.path.abspath(path))

    for item in inputs:
        if item == "-":
            if stdin is None:
                raise InputError("'-' given but no standard input is available")
            for path in read_path_list(stdin, null=null):
                if os.path.isdir(path):
                    found.extend(walk(path))
                else:  # missing files are kept and fail (recorded) when decoded
                    src = named(path, _safe_key(path))
                    if src is not None:
                        found.append(src)
                        listed.add(src)
        elif os.path.isdir(item):
            found.extend(walk(item))
        elif os.path.lexists(item):
            src = named(item, printable(posixpath.basename(item.replace(os.sep, "/"))))
            if src is not None:
                found.append(src)
        else:
            raise InputError(f"input not found: {item}")
    if outside:
        shown = ", ".join(outside[:3]) + (
            f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        )
        where = printable(os.path.abspath(root or "."))
        raise InputError(
            f"{len(outside)} input{'s are' if len(outside) > 1 else ' is'} outside --root "
            f"{where}: {shown}; keys are paths relative to --root: give one that holds them all"
        )
    by_key: dict[str, Source] = {}
    for src in found:
        other = by_key.get(src.key)
        if other is None:
            by_key[src.key] = src
        elif os.path.realpath(other.path) != os.path.realpath(src.path):
            if other in listed or src in listed:
                common = os.path.commonpath(
                    [os.path.dirname(other.path), os.path.dirname(src.path)]
                )
                advice = (
                    f"give --root DIR so keys keep their folders (e.g. --root {printable(common)})"
                )
            else:
                advice = "give their common parent directory instead"
            raise InputError(
                f"two inputs map to the same key {src.key!r}: {other.path} and {src.path}; {advice}"
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
