"""Hostile input (issue 3, section 5): a torture corpus built by the tests.

The corpus is made with numpy / soundfile / os only (no sox, ffmpeg or espeak:
CI lacks them) next to a few good files, then melcli runs over it:

* once through the real ``melcli`` executable in a subprocess (npy output), with
  the DAC capabilities dropped when running as root so that a ``chmod 000``
  file really is unreadable, and
* once in-process through click's ``CliRunner`` (HDF5 output),

and every case is checked on its own (one parametrized test per case): a bad
file gives exactly one ``melcli: skipped <key>: <reason>`` line on stderr and one
record (key, source, reason) in the manifest's ``failures``; a good or
legitimately fine file is written with the documented shape and read back with
h5py / ``np.load(allow_pickle=False)``. Runs are never allowed a traceback, and
no written path escapes OUTPUT.

Cases that need an event in the middle of a run (a file removed between
discovery and decoding, a simulated ``PermissionError``) run in-process with
monkeypatched hooks; key collisions and path-escape attempts have their own runs.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

import melcli.audio
import melcli.discover
from melcli.cli import cli

# ---------------------------------------------------------------------------
# helpers (kept here on purpose: this file does not depend on conftest.py)
# ---------------------------------------------------------------------------
N_FFT, HOP, N_MELS = 512, 128, 40
#: The main runs: every flag a case needs at once (each case says why it is there).
MAIN_FLAGS = [
    "--keep-channels",  # 8-channel case: shape (8, bins, frames)
    "--scale", "db",  # all-zero audio must give finite dB
    "--fmax", "6000",  # explicit fmax: above the Nyquist frequency of the 8 kHz file
    "--n-fft", str(N_FFT), "--n-mels", str(N_MELS),
    "--no-progress",
]  # fmt: skip
SKIP_PREFIX = "melcli: skipped "


def melcli_executable() -> list[str]:
    """The real console script (beside this interpreter, else on PATH, else -m)."""
    beside = Path(sys.executable).parent / "melcli"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("melcli")
    return [found] if found else [sys.executable, "-m", "melcli"]


#: Runs its argv[1:] after dropping CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from
#: the bounding set, so that root obeys file modes (a chmod 000 file is then
#: really unreadable). Not root: file modes already apply, nothing to drop.
DROP_DAC_CAPS = r"""
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            sys.exit("cannot drop DAC capabilities: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"""


def run_subprocess(
    args: Sequence[str | os.PathLike[str]], *, cwd: Path, drop_dac: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real executable (optionally as a root that obeys file modes)."""
    cmd = melcli_executable()
    if drop_dac:  # the launcher execs cmd[0] with argv cmd (so -m melcli needs the interpreter)
        cmd = [
            sys.executable,
            "-c",
            DROP_DAC_CAPS,
            *(cmd if len(cmd) == 1 else [sys.executable, *cmd]),
        ]
    return subprocess.run(
        [*cmd, *map(str, args)], cwd=cwd, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip


def _show_on_stderr(message: Any, category: Any, filename: str, lineno: int, *a: Any) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno))


def invoke(
    args: Sequence[str | os.PathLike[str]], *, cwd: Path, input: str | None = None
) -> Result:
    """Run ``melcli.cli.cli`` in-process; a Python exception fails the test with its traceback."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings():
            # as in the real executable: warnings are printed (to the captured
            # stderr), not raised as pytest's filterwarnings=error would
            warnings.simplefilter("default")
            warnings.showwarning = _show_on_stderr
            result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    finally:
        os.chdir(old)
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        pytest.fail(f"melcli raised instead of reporting:\n{tb}\nstderr:\n{result.stderr}")
    return result


def shown(key: str) -> str:
    """A key as one stderr line can show it: control characters escaped."""
    return key if key.isprintable() else key.encode("unicode_escape").decode("ascii")


def assert_safe_key(key: str) -> None:
    """Keys are relative POSIX paths: never absolute, no '..' / '.' / empty parts."""
    assert key and not key.startswith("/") and not os.path.isabs(key), key
    assert all(p not in ("", ".", "..") for p in key.split("/")), key


def assert_inside(output: Path) -> list[Path]:
    """Every path under an npy OUTPUT is a real file/dir inside it; returns the files."""
    root = os.path.realpath(output)
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(output, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            assert not p.is_symlink(), f"symlink in output: {p}"
            real = os.path.realpath(p)
            assert os.path.commonpath([root, real]) == root, f"{p} escapes {output}"
        files.extend(Path(dirpath) / n for n in filenames)
    return files


def skipped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(SKIP_PREFIX)]


def assert_skip_lines_match(stderr: str, failures: list[dict[str, Any]]) -> None:
    """Exactly one ``melcli: skipped <key>: <reason>`` line per failure, and no other."""
    expected = Counter(f"{SKIP_PREFIX}{shown(f['key'])}: {f['reason']}" for f in failures)
    assert Counter(skipped_lines(stderr)) == expected, stderr


def frames(n: int) -> int:
    """Frame count with --center (the default): 1 + n // hop."""
    return 1 + n // HOP


# ---------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------
@dataclass
class Case:
    """One torture case.

    ``fails``: expected to be skipped and recorded; ``reason``: a regex the
    recorded reason must match. Otherwise ``shape`` is the expected entry shape
    (``keys`` may hold several entries, for the cases that write several).
    """

    id: str
    keys: list[str]
    #: True: must fail; False: must be written; None: either, as long as it is
    #: a clear failure or finite features.
    fails: bool | None
    reason: str = ""
    shape: tuple[int, ...] | None = None
    check: Callable[[np.ndarray], None] | None = None
    #: Fails only where file modes apply (the subprocess drops root's DAC caps).
    unreadable: bool = False
    note: str = ""


@dataclass
class Corpus:
    root: Path
    cases: list[Case] = field(default_factory=list)
    #: Sources (resolved) that must each be written exactly once.
    once: list[Path] = field(default_factory=list)

    def case(self, case_id: str) -> Case:
        return next(c for c in self.cases if c.id == case_id)


def _tone(sr: int, n: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(n) / sr
    chans = [0.5 * np.sin(2 * np.pi * freq * (1 + 0.37 * c) * t + c) for c in range(channels)]
    y = np.stack(chans, axis=1) if channels > 1 else chans[0]
    return y.astype(np.float32)


def _wav_bytes(sr: int = 16000, n: int = 8000) -> bytes:
    path_free = __import__("io").BytesIO()
    sf.write(path_free, _tone(sr, n), sr, format="WAV", subtype="PCM_16")
    return path_free.getvalue()


def _write(path: Path, y: np.ndarray, sr: int, fmt: str = "WAV", subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, format=fmt, subtype=subtype)
    return path


def _random_bytes(rng: np.random.Generator, n: int = 4096) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def build_corpus(root: Path) -> Corpus:
    """Write every torture case (and a few good files) under ``root``.

    Legitimately fine (written; a run over only these exits 0, see
    `test_fine_cases_alone_exit_0`): a directory named x.wav (it is a directory,
    walked like any other), symlink loops (each directory walked once, a warning),
    one sample and shorter-than-n_fft with --center (padding gives one frame),
    all-zero audio in dB (finite: the amin floor), 8 channels with --keep-channels,
    192 kHz, names with spaces / unicode / quotes / a newline, and chmod 000 when
    running as root with its DAC override (root can read it). Everything else is a
    recorded failure: the run exits 3.
    """
    rng = np.random.default_rng(31337)
    c = Corpus(root)
    add = c.cases.append
    mel = lambda ch, n: (ch, N_MELS, frames(n))  # noqa: E731 - (channels, bins, frames)

    # good files: they must all be written whatever else is in the corpus
    _write(root / "good/speech.wav", _tone(16000, 9600), 16000)
    _write(root / "good/music.flac", _tone(44100, 17640, channels=2), 44100, "FLAC")
    _write(root / "good/tone.ogg", _tone(22050, 11025), 22050, "OGG", "VORBIS")
    add(Case("good-wav", ["good/speech.wav"], False, shape=mel(1, 9600)))
    add(Case("good-flac-stereo", ["good/music.flac"], False, shape=mel(2, 17640)))
    # Vorbis frame count is the codec's: only the rank and bins are fixed
    add(
        Case(
            "good-ogg",
            ["good/tone.ogg"],
            False,
            check=lambda a: _assert(a.shape[:2] == (1, N_MELS) and a.shape[2] > 80, a.shape),
        )
    )

    wav = _wav_bytes()
    (root / "zero.wav").write_bytes(b"")
    add(Case("zero-byte", ["zero.wav"], True, r"no audio|empty|unknown format|decode"))
    (root / "trunc_header.wav").write_bytes(wav[:20])
    add(Case("truncated-header", ["trunc_header.wav"], True, r"decode|malformed|truncat"))
    # Header promises 8000 samples, only half of the data is there. v1 lists
    # "truncated" among the files that are skipped, so this must be a failure,
    # not silently shorter features.
    (root / "trunc_data.wav").write_bytes(wav[: 44 + (len(wav) - 44) // 2])
    add(
        Case(
            "header-promises-more",
            ["trunc_data.wav"],
            True,
            r"truncat|short|header|decode",
            note="v1: truncated files are skipped",
        )
    )
    for ext in ("wav", "flac", "mp3", "ogg"):
        (root / f"random.{ext}").write_bytes(_random_bytes(rng))
        add(Case(f"random-{ext}", [f"random.{ext}"], True, r"decode|format|no audio"))
    (root / "text.wav").write_text("this is not audio, just a text file\n" * 40)
    add(Case("text-as-wav", ["text.wav"], True, r"decode|format"))

    # a directory named x.wav is walked like any directory: its file is fine
    _write(root / "x.wav/inner.wav", _tone(16000, 4000), 16000)
    add(Case("directory-named-wav", ["x.wav/inner.wav"], False, shape=mel(1, 4000)))

    os.symlink("does-not-exist.wav", root / "broken.wav")
    add(Case("broken-symlink", ["broken.wav"], True, r"broken symlink|not found|no such"))

    # symlink loops among directories: walked once each, reported as a warning;
    # each real file is written exactly once (legitimately fine)
    loops = root / "loops"
    _write(loops / "A/a.wav", _tone(16000, 3000), 16000)
    _write(loops / "B/b.wav", _tone(16000, 3100), 16000)
    os.symlink("../B", loops / "A/toB")
    os.symlink("../A", loops / "B/toA")
    (loops / "self").mkdir()
    os.symlink(".", loops / "self/me")
    c.once += [loops / "A/a.wav", loops / "B/b.wav"]

    locked = _write(root / "locked.wav", _tone(16000, 5000), 16000)
    os.chmod(locked, 0)
    add(
        Case(
            "unreadable-chmod-000",
            ["locked.wav"],
            True,
            r"permission",
            unreadable=True,
            shape=mel(1, 5000),
        )
    )

    _write(root / "one_sample.wav", np.array([0.25], dtype=np.float32), 16000)
    add(
        Case(
            "one-sample",
            ["one_sample.wav"],
            False,
            shape=mel(1, 1),
            note="fine with --center (padded); fails with --no-center (see below)",
        )
    )
    _write(root / "short.wav", _tone(16000, 300), 16000)
    add(Case("shorter-than-n-fft-centered", ["short.wav"], False, shape=mel(1, 300)))

    _write(root / "silence.wav", np.zeros(4000, np.float32), 16000, subtype="FLOAT")
    add(
        Case(
            "all-zero-db",
            ["silence.wav"],
            False,
            shape=mel(1, 4000),
            check=lambda a: _assert(
                np.isfinite(a).all() and np.allclose(a, -100.0, atol=1e-3), (a.min(), a.max())
            ),
        )
    )
    y = _tone(16000, 4000)
    y[[10, 999, 3000]] = np.nan
    _write(root / "nan.wav", y, 16000, subtype="FLOAT")
    add(Case("nan-float-wav", ["nan.wav"], True, r"NaN"))
    y = _tone(16000, 4000)
    y[5], y[6] = np.inf, -np.inf
    _write(root / "inf.wav", y, 16000, subtype="FLOAT")
    add(Case("inf-float-wav", ["inf.wav"], True, r"Inf"))

    # a legal float WAV with huge but finite samples: |X|**2 overflows float32
    y = _tone(16000, 4000)
    y[100] = 3e38
    _write(root / "huge.wav", y, 16000, subtype="FLOAT")
    add(
        Case(
            "huge-finite-float-samples",
            ["huge.wav"],
            None,
            r"overflow|range|too large|huge",
            note="either a clear failure or finite features; never NaN written",
        )
    )

    _write(root / "eight_ch.wav", _tone(16000, 4000, channels=8), 16000)
    add(
        Case(
            "eight-channels",
            ["eight_ch.wav"],
            False,
            shape=mel(8, 4000),
            check=lambda a: _assert(
                len({float(a[i].max()) for i in range(8)}) > 1, "channels must differ"
            ),
        )
    )
    _write(root / "rate8k.wav", _tone(8000, 4000), 8000)
    add(Case("8khz-fmax-6000", ["rate8k.wav"], True, r"Nyquist"))
    _write(root / "rate192k.wav", _tone(192000, 19200, freq=3000.0), 192000)
    add(Case("192khz", ["rate192k.wav"], False, shape=mel(1, 19200)))

    names = {
        "space": "names/with  spaces .wav",
        "unicode": "names/ünïcødé 音声 🎵.flac",
        "quotes": 'names/it\'s "quoted" `x`.wav',
        "newline": "names/new\nline.wav",
    }
    for case_id, name in names.items():
        fmt = "FLAC" if name.endswith(".flac") else "WAV"
        _write(root / name, _tone(16000, 2000), 16000, fmt)
        add(Case(f"name-{case_id}", [name], False, shape=mel(1, 2000)))
    bad_name = "names/bad\nname 'q\" ü.ogg"
    (root / bad_name).write_bytes(_random_bytes(rng))
    add(Case("bad-file-with-newline-name", [bad_name], True, r"decode|format"))

    # not audio by suffix, or hidden: not discovered at all (neither entry nor failure)
    (root / "notes.txt").write_text("not audio")
    (root / ".hidden.wav").write_bytes(_random_bytes(rng))
    (root / ".hidden_dir").mkdir()
    (root / ".hidden_dir/h.wav").write_bytes(_random_bytes(rng))
    return c


def _assert(cond: bool, info: object) -> None:
    assert cond, info


# ---------------------------------------------------------------------------
# the two main runs over the whole corpus
# ---------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    corpus: Corpus
    output: Path
    exit_code: int
    stdout: str
    stderr: str
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]
    #: Whether file modes apply in this run (chmod 000 is unreadable).
    modes_apply: bool


def _load_npy(output: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    files = assert_inside(output)
    expected = {output / f"{e['key']}.npy" for e in manifest["entries"]} | {
        output / "manifest.json"
    }
    assert set(files) == expected, sorted(map(str, set(files) ^ expected))
    return {e["key"]: np.load(output / f"{e['key']}.npy", allow_pickle=False)
            for e in manifest["entries"]}  # fmt: skip


def _load_h5(output: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(output, "r") as f:
        names: list[str] = []
        f["features"].visititems(
            lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None
        )
        assert sorted(names) == sorted(e["key"] for e in manifest["entries"])
        for e in manifest["entries"]:
            ds = f["features"][e["key"]]
            assert ds.attrs["sample_rate"] == e["sample_rate"]
            assert ds.attrs["source"] == e["source"]
            out[e["key"]] = ds[()]
        assert json.loads(f["manifest"][()]) == manifest
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("torture") / "in")


@pytest.fixture(scope="module")
def subprocess_run(corpus: Corpus) -> Run:
    """The real executable, npy output, two workers, file modes enforced even for root."""
    out = corpus.root.parent / "feats"
    proc = run_subprocess(
        ["mel", corpus.root, "-o", out, "-j", "2", *MAIN_FLAGS], cwd=corpus.root.parent,
        drop_dac=True,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 3, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return Run("subprocess-npy", corpus, out, proc.returncode, proc.stdout, proc.stderr,
               manifest, _load_npy(out, manifest), modes_apply=True)  # fmt: skip


@pytest.fixture(scope="module")
def inprocess_run(corpus: Corpus) -> Run:
    """CliRunner, HDF5 output, in-process (-j 1); as root the chmod 000 file is readable."""
    out = corpus.root.parent / "feats.h5"
    res = invoke(["mel", corpus.root, "-o", out, "-j", "1", *MAIN_FLAGS], cwd=corpus.root.parent)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.exit_code == 3, res.stderr
    manifest = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    return Run("cli-runner-h5", corpus, out, res.exit_code, res.stdout, res.stderr, manifest,
               _load_h5(out, manifest), modes_apply=os.geteuid() != 0)  # fmt: skip


@pytest.fixture(params=["subprocess_run", "inprocess_run"])
def run(request: pytest.FixtureRequest) -> Run:
    return request.getfixturevalue(request.param)


def _case_ids() -> list[str]:
    """Case ids without touching the disk: build the corpus once in a scratch dir."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return [c.id for c in build_corpus(Path(d) / "in").cases]


@pytest.mark.parametrize("case_id", _case_ids())
def test_case(run: Run, case_id: str) -> None:
    """Each torture case on its own: recorded failure with one stderr line, or written entry."""
    case = run.corpus.case(case_id)
    failures = {f["key"]: f for f in run.manifest["failures"]}
    entries = {e["key"]: e for e in run.manifest["entries"]}
    fails = case.fails and (run.modes_apply or not case.unreadable)
    for key in case.keys:
        assert_safe_key(key)
        if case.fails is None:
            fails = key in failures
        if fails:
            assert key not in entries, (
                f"{case.id}: {key!r} was written; expected a failure ({case.note})"
            )
            assert key in failures, f"{case.id}: no failure recorded for {key!r}"
            rec = failures[key]
            assert rec["source"] == str(run.corpus.root / key)
            reason = rec["reason"]
            assert reason and "\n" not in reason and not reason.startswith("internal error"), reason
            assert re.search(case.reason, reason, re.I), f"{case.id}: unclear reason {reason!r}"
            line = f"{SKIP_PREFIX}{shown(key)}: {reason}"
            assert skipped_lines(run.stderr).count(line) == 1, run.stderr
        else:
            assert key not in failures, f"{case.id}: {failures.get(key)}"
            assert key in entries, f"{case.id}: {key!r} not written"
            rec, data = entries[key], run.arrays[key]
            assert rec["source"] == str(run.corpus.root / key)
            assert list(data.shape) == rec["shape"] and str(data.dtype) == rec["dtype"] == "float32"
            assert np.isfinite(data).all()
            if case.shape is not None:
                assert data.shape == case.shape, case.id
            if case.check is not None:
                case.check(data)


def test_run_as_a_whole(run: Run) -> None:
    """Exit 3, stdout clean, one skip line per failure, nothing undiscovered, keys safe."""
    assert run.exit_code == 3
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    assert run.stdout.strip() == str(run.output)
    # one clear line per event: nothing but melcli's own lines (no Python warnings)
    assert [ln for ln in run.stderr.splitlines() if not ln.startswith("melcli: ")] == []
    assert_skip_lines_match(run.stderr, run.manifest["failures"])
    for rec in run.manifest["failures"]:
        assert set(rec) >= {"key", "source", "reason"}
    keys = [e["key"] for e in run.manifest["entries"]] + [
        f["key"] for f in run.manifest["failures"]
    ]
    assert len(keys) == len(set(keys))
    for key in keys:
        assert_safe_key(key)
        assert not any(part.startswith(".") for part in key.split("/")), key  # hidden: skipped
        assert not key.endswith(".txt")
    expected = {k for c in run.corpus.cases for k in c.keys}
    loop_keys = set(keys) - expected
    # the only keys not named by a case are the two files inside the symlink loop
    assert {posixpath.basename(k) for k in loop_keys} == {"a.wav", "b.wav"}, loop_keys
    totals = run.manifest["totals"]
    assert totals["entries"] == len(run.manifest["entries"])
    assert totals["failures"] == len(run.manifest["failures"])


def test_symlink_loops_walked_once(run: Run) -> None:
    """A loop among directories: each real file written exactly once, a warning, no hang."""
    by_real = Counter(os.path.realpath(e["source"]) for e in run.manifest["entries"])
    for path in run.corpus.once:
        assert by_real[os.path.realpath(path)] == 1, (path, by_real)
    assert re.search(r"melcli: warning: .*symlink loop", run.stderr), run.stderr


def test_both_outputs_agree(subprocess_run: Run, inprocess_run: Run) -> None:
    """npy with -j 2 in a subprocess and HDF5 with -j 1 in-process: same numbers."""
    a, b = subprocess_run, inprocess_run
    common = set(a.arrays) & set(b.arrays)
    assert len(common) >= 15
    for key in common:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)


# ---------------------------------------------------------------------------
# --no-center: too short for one frame
# ---------------------------------------------------------------------------
def test_no_center_short_files(tmp_path: Path) -> None:
    root = tmp_path / "nc"
    _write(root / "short.wav", _tone(16000, 300), 16000)  # < n_fft
    _write(root / "one_sample.wav", np.array([0.5], np.float32), 16000)
    _write(root / "exact.wav", _tone(16000, N_FFT), 16000)  # exactly one frame
    _write(root / "good.wav", _tone(16000, 4000), 16000)
    out = tmp_path / "nc.h5"
    res = invoke(["stft", root, "-o", out, "--no-center", "--n-fft", str(N_FFT), "-j", "1"],
                 cwd=tmp_path)  # fmt: skip
    assert res.exit_code == 3, res.stderr
    man = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sorted(f["key"] for f in man["failures"]) == ["one_sample.wav", "short.wav"]
    for f in man["failures"]:
        assert re.search(r"too short", f["reason"]), f
        assert f["source"] == str(root / f["key"])
    assert_skip_lines_match(res.stderr, man["failures"])
    arrays = _load_h5(out, man)
    bins = N_FFT // 2 + 1
    assert arrays["exact.wav"].shape == (bins, 1)
    assert arrays["good.wav"].shape == (bins, 1 + (4000 - N_FFT) // HOP)


# ---------------------------------------------------------------------------
# extreme float samples through the default (mono: downmixed) path
# ---------------------------------------------------------------------------
def test_extreme_float_samples_mono(tmp_path: Path) -> None:
    """+Inf in one channel and -Inf in the other at the same frame; huge finite
    samples (3e38, legal in a float WAV) in one or both channels. Each is a clear
    skip line (with a true reason) or finite features; no Python warnings on stderr."""
    root = tmp_path / "x"
    y = _tone(16000, 4000, channels=2)
    y[10, 0], y[10, 1] = np.inf, -np.inf
    _write(root / "inf_pair.wav", y, 16000, subtype="FLOAT")
    y = _tone(16000, 4000, channels=2)
    y[10, :] = 3e38
    _write(root / "huge_stereo.wav", y, 16000, subtype="FLOAT")
    y = _tone(16000, 4000)
    y[10] = 3e38
    _write(root / "huge_mono.wav", y, 16000, subtype="FLOAT")
    _write(root / "good.wav", _tone(16000, 4000), 16000)
    out = tmp_path / "o.h5"
    res = invoke(["mel", root, "-o", out, "-j", "1"], cwd=tmp_path)
    assert res.exit_code == 3, res.stderr
    assert [ln for ln in res.stderr.splitlines() if not ln.startswith("melcli: ")] == []
    man = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert_skip_lines_match(res.stderr, man["failures"])
    arrays = _load_h5(out, man)
    failures = {f["key"]: f["reason"] for f in man["failures"]}
    assert re.search(r"2 NaN/Inf", failures["inf_pair.wav"]), failures  # two Inf in the file
    for key in ("huge_stereo.wav", "huge_mono.wav"):
        if key in failures:  # none of its samples is NaN/Inf: the reason must not say so
            assert "NaN" not in failures[key] and re.search(r"overflow|range|large", failures[key])
        else:
            assert np.isfinite(arrays[key]).all(), f"{key}: non-finite features written"
    assert "good.wav" in arrays


# ---------------------------------------------------------------------------
# the legitimately fine cases alone: exit 0
# ---------------------------------------------------------------------------
def test_fine_cases_alone_exit_0(tmp_path: Path) -> None:
    """One sample, a directory named x.wav, symlink loops, odd names, 8 channels,
    192 kHz and silence in dB are not errors: a run over only them exits 0."""
    root = tmp_path / "fine"
    _write(root / "one_sample.wav", np.array([0.25], np.float32), 16000)
    _write(root / "x.wav/inner.wav", _tone(16000, 2000), 16000)
    _write(root / "loop/a.wav", _tone(16000, 2000), 16000)
    os.symlink("..", root / "loop/up")
    _write(root / "n/with space 'q' \"dq\" ü 音\nnl.wav", _tone(16000, 2000), 16000)
    _write(root / "eight.wav", _tone(16000, 2000, channels=8), 16000)
    _write(root / "hi.wav", _tone(192000, 9600), 192000)
    _write(root / "zeros.wav", np.zeros(2000, np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "fine_out"
    res = invoke(["mel", root, "-o", out, "-j", "1", *MAIN_FLAGS], cwd=tmp_path)
    assert res.exit_code == 0, res.stderr
    assert not skipped_lines(res.stderr)
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert man["failures"] == []
    arrays = _load_npy(out, man)
    assert len(arrays) == 7
    assert arrays["eight.wav"].shape == (8, N_MELS, frames(2000))
    assert arrays["one_sample.wav"].shape == (1, N_MELS, 1)
    assert all(np.isfinite(a).all() for a in arrays.values())
    for key in arrays:
        assert_safe_key(key)


# ---------------------------------------------------------------------------
# events in the middle of a run (in-process hooks)
# ---------------------------------------------------------------------------
def _small_corpus(root: Path) -> list[Path]:
    return [
        _write(root / "a.wav", _tone(16000, 3000), 16000),
        _write(root / "victim.wav", _tone(16000, 3000), 16000),
        _write(root / "z.wav", _tone(16000, 3000), 16000),
    ]


def _check_one_failure(res: Result, out: Path, key: str, reason: str) -> dict[str, Any]:
    assert "Traceback" not in res.stderr
    assert res.exit_code == 3, res.stderr
    man = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert [f["key"] for f in man["failures"]] == [key]
    assert re.search(reason, man["failures"][0]["reason"], re.I), man["failures"]
    assert_skip_lines_match(res.stderr, man["failures"])
    arrays = _load_h5(out, man)
    assert sorted(arrays) == sorted({"a.wav", "victim.wav", "z.wav"} - {key})
    return man


def test_file_removed_after_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file list is made, then the file disappears before its header is read."""
    root = tmp_path / "in"
    _small_corpus(root)
    real = melcli.discover.discover

    def discover_then_remove(*a: Any, **kw: Any) -> Any:
        found = real(*a, **kw)
        assert "victim.wav" in [s.key for s in found.sources]
        (root / "victim.wav").unlink()
        return found

    monkeypatch.setattr(melcli.discover, "discover", discover_then_remove)
    out = tmp_path / "o.h5"
    res = invoke(["mel", root, "-o", out, "-j", "1", "--no-progress"], cwd=tmp_path)
    _check_one_failure(res, out, "victim.wav", r"not found|no such|removed|missing")


def test_file_removed_between_probe_and_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header was read (the file was there), then it is removed before decoding."""
    root = tmp_path / "in"
    _small_corpus(root)
    real = melcli.audio.probe
    probed: list[str] = []

    def probe_then_remove(path: str) -> Any:
        info = real(path)
        probed.append(path)
        if path.endswith("victim.wav"):
            os.unlink(path)
        return info

    monkeypatch.setattr(melcli.audio, "probe", probe_then_remove)
    out = tmp_path / "o.h5"
    res = invoke(["mel", root, "-o", out, "-j", "1", "--no-progress"], cwd=tmp_path)
    assert any(p.endswith("victim.wav") for p in probed)  # the hook really ran
    _check_one_failure(res, out, "victim.wav", r"not found|no such|removed|missing")


def test_file_replaced_by_directory_before_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed and a directory created under the same name before decoding."""
    root = tmp_path / "in"
    _small_corpus(root)
    real = melcli.audio.probe

    def probe_then_swap(path: str) -> Any:
        info = real(path)
        if path.endswith("victim.wav"):
            os.unlink(path)
            os.mkdir(path)
        return info

    monkeypatch.setattr(melcli.audio, "probe", probe_then_swap)
    out = tmp_path / "o.h5"
    res = invoke(["mel", root, "-o", out, "-j", "1", "--no-progress"], cwd=tmp_path)
    _check_one_failure(res, out, "victim.wav", r"directory|decode")


def test_simulated_permission_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS refusing to open one file (what a non-root user gets): skipped as
    'permission denied', the others written."""
    root = tmp_path / "in"
    _small_corpus(root)
    victim = str(root / "victim.wav")
    real_open = melcli.audio.open_regular
    calls: list[str] = []

    def guarded(path: str) -> Any:
        if path == victim:
            calls.append(path)
            raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    monkeypatch.setattr(melcli.audio, "open_regular", guarded)
    out = tmp_path / "o.h5"
    res = invoke(["mel", root, "-o", out, "-j", "1", "--no-progress"], cwd=tmp_path)
    assert calls
    _check_one_failure(res, out, "victim.wav", r"permission denied")


def test_simulated_permission_error_during_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Header readable, then reading the data is refused (permission changed mid-run)."""
    root = tmp_path / "in"
    _small_corpus(root)
    victim = str(root / "victim.wav")
    real_open = melcli.audio.open_regular
    calls: list[str] = []

    def guarded(path: str) -> Any:
        if path == victim:
            calls.append(path)
            if len(calls) > 1:  # the header was read; decoding is refused
                raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    monkeypatch.setattr(melcli.audio, "open_regular", guarded)
    out = tmp_path / "o.h5"
    res = invoke(["mel", root, "-o", out, "-j", "1", "--no-progress"], cwd=tmp_path)
    assert len(calls) == 2
    _check_one_failure(res, out, "victim.wav", r"permission denied")


# ---------------------------------------------------------------------------
# keys: collisions and escapes
# ---------------------------------------------------------------------------
def test_two_roots_same_key_refused_before_work(tmp_path: Path) -> None:
    """r1/a.wav and r2/a.wav both map to key 'a.wav': exit 2 naming both, nothing written."""
    for r in ("r1", "r2"):
        _write(tmp_path / r / "a.wav", _tone(16000, 2000), 16000)
        _write(tmp_path / r / f"only_{r}.wav", _tone(16000, 2000), 16000)
    for args in (
        ["r1", "r2"],  # two directory roots
        ["r1", "r2/a.wav"],  # a root and a file named directly
        [str(tmp_path / "r1/a.wav"), str(tmp_path / "r2/a.wav")],  # two files, absolute
    ):
        out = tmp_path / "o.h5"
        res = invoke(["mel", *args, "-o", out, "-j", "1"], cwd=tmp_path)
        assert res.exit_code == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr
        assert str(tmp_path / "r1/a.wav") in res.stderr and str(tmp_path / "r2/a.wav") in res.stderr
        assert "'a.wav'" in res.stderr
        assert not out.exists() and not out.with_suffix(".json").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r1", "r2"]  # no lock/work left


def test_two_roots_same_key_via_subprocess(tmp_path: Path) -> None:
    for r in ("r1", "r2"):
        _write(tmp_path / r / "a.wav", _tone(16000, 2000), 16000)
    proc = run_subprocess(["mel", "r1", "r2", "-o", "o"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "r1/a.wav" in proc.stderr and "r2/a.wav" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "o").exists()


def test_same_file_twice_is_not_a_collision(tmp_path: Path) -> None:
    """The same file reached twice (named twice, and via a symlink) is one entry: exit 0."""
    _write(tmp_path / "r/a.wav", _tone(16000, 2000), 16000)
    os.symlink("r", tmp_path / "alias")
    out = tmp_path / "o"
    res = invoke(["mel", "r", "r/a.wav", "alias", "-o", out, "-j", "1"], cwd=tmp_path)
    assert res.exit_code == 0, res.stderr
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [e["key"] for e in man["entries"]] == ["a.wav"]


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_key_prefix_collision_across_roots(tmp_path: Path, fmt: str) -> None:
    """Root 1 holds a file x.wav, root 2 a directory x.wav/ with inner.wav: keys
    'x.wav' and 'x.wav/inner.wav' are distinct, but in HDF5 /features/x.wav cannot
    be both a dataset and a group. Either refuse before work (exit 2) or skip one
    (exit 3); never a traceback, never lose the other files."""
    _write(tmp_path / "r1/x.wav", _tone(16000, 2000), 16000)
    _write(tmp_path / "r1/other.wav", _tone(16000, 2000), 16000)
    _write(tmp_path / "r2/x.wav/inner.wav", _tone(16000, 2000), 16000)
    out = tmp_path / ("o.h5" if fmt == "h5" else "o")
    proc = run_subprocess(["mel", "r1", "r2", "-o", out, "-j", "1"], cwd=tmp_path)
    _assert_collision_handled(proc, out, fmt, {"x.wav", "x.wav/inner.wav"}, {"other.wav"})


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_key_vs_npy_name_collision(tmp_path: Path, fmt: str) -> None:
    """One root holds a.wav and a directory a.wav.npy/ with b.wav: in the npy layout
    'a.wav' -> a.wav.npy (a file) and 'a.wav.npy/b.wav' -> a.wav.npy/b.wav.npy
    (inside a directory of the same name). Hostile names must not sink the run."""
    _write(tmp_path / "r/a.wav", _tone(16000, 2000), 16000)
    _write(tmp_path / "r/a.wav.npy/b.wav", _tone(16000, 2000), 16000)
    _write(tmp_path / "r/c.wav", _tone(16000, 2000), 16000)
    out = tmp_path / ("o.h5" if fmt == "h5" else "o")
    proc = run_subprocess(["mel", "r", "-o", out, "-j", "1"], cwd=tmp_path)
    _assert_collision_handled(proc, out, fmt, {"a.wav", "a.wav.npy/b.wav"}, {"c.wav"})


def _assert_collision_handled(
    proc: subprocess.CompletedProcess[str], out: Path, fmt: str, clash: set[str], others: set[str]
) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2, 3), f"exit {proc.returncode}: {proc.stderr}"
    if proc.returncode == 2:  # refused before work, naming the clash
        assert all(k in proc.stderr for k in clash), proc.stderr
        assert not out.exists()
        return
    man_path = out.with_suffix(".json") if fmt == "h5" else out / "manifest.json"
    man = json.loads(man_path.read_text(encoding="utf-8"))
    arrays = _load_h5(out, man) if fmt == "h5" else _load_npy(out, man)
    written = set(arrays)
    assert others <= written
    failed = {f["key"] for f in man["failures"]}
    assert clash <= written | failed and written.isdisjoint(failed)
    assert (proc.returncode == 3) == bool(failed)
    assert_skip_lines_match(proc.stderr, man["failures"])


def test_paths_never_escape_output(tmp_path: Path) -> None:
    """Inputs named with '..', absolute paths, './' and symlinks pointing outside:
    keys stay relative without '..', and every written file is inside OUTPUT."""
    outside = tmp_path / "outside"
    _write(outside / "up.wav", _tone(16000, 2000), 16000)
    _write(outside / "abs.wav", _tone(16000, 2000), 16000)
    _write(outside / "arg.wav", _tone(16000, 2000), 16000)
    work = tmp_path / "deep/work"
    _write(work / "d/e/f.wav", _tone(16000, 2000), 16000)
    _write(work / "in/g.wav", _tone(16000, 2000), 16000)
    os.symlink(outside / "up.wav", work / "in/link_out.wav")
    os.symlink(outside, work / "in/linkdir")
    stdin_list = "\n".join([
        "../../outside/up.wav",  # relative, escaping the cwd
        str(outside / "abs.wav"),  # absolute
        "./d/../d/e/f.wav",  # '..' inside, stays under cwd
    ]) + "\n"  # fmt: skip
    out = work / "feats"
    res = invoke(["mel", "-", "in", "../../outside/arg.wav", "-o", "feats", "-j", "1"],
                 cwd=work, input=stdin_list)  # fmt: skip
    assert res.exit_code == 0, res.stderr
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    keys = sorted(e["key"] for e in man["entries"])
    for key in keys:
        assert_safe_key(key)
    assert keys == sorted([
        "up.wav", "abs.wav", "d/e/f.wav", "g.wav", "link_out.wav",
        "linkdir/abs.wav", "linkdir/arg.wav", "linkdir/up.wav", "arg.wav",
    ])  # fmt: skip
    arrays = _load_npy(out, man)  # checks every file is inside OUTPUT
    assert len(arrays) == len(keys)
    for p in tmp_path.rglob("*.npy"):  # nothing written beside or above OUTPUT
        assert os.path.commonpath([out, p]) == str(out), p


def test_output_inside_input_root_rerun(tmp_path: Path) -> None:
    """OUTPUT inside the walked input root: its .npy/.json are not audio, and a rerun
    is a no-op (exit 0), not a run over its own outputs."""
    root = tmp_path / "data"
    _write(root / "a.wav", _tone(16000, 2000), 16000)
    for _ in range(2):
        res = invoke(["mel", root, "-o", root / "feats", "-j", "1"], cwd=tmp_path)
        assert res.exit_code == 0, res.stderr
        man = json.loads((root / "feats/manifest.json").read_text(encoding="utf-8"))
        assert [e["key"] for e in man["entries"]] == ["a.wav"] and man["failures"] == []


def test_unlistable_directory(tmp_path: Path) -> None:
    """A sub-directory that cannot be listed (chmod 000, enforced in a subprocess
    without root's DAC override): an error line (shown even with -q), the rest is
    written, the directory is a recorded failure (exit 3); a rerun while it is
    unreadable keeps its entries."""
    root = tmp_path / "in"
    _write(root / "ok.wav", _tone(16000, 2000), 16000)
    _write(root / "closed/hidden_from_us.wav", _tone(16000, 2000), 16000)
    os.chmod(root / "closed", 0)
    try:
        proc = run_subprocess(["mel", root, "-o", tmp_path / "o", "-j", "1"], cwd=tmp_path,
                              drop_dac=True)  # fmt: skip
    finally:
        os.chmod(root / "closed", stat.S_IRWXU)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 3, proc.stderr
    assert re.search(r"melcli: error: cannot read directory .*closed", proc.stderr), proc.stderr
    man = json.loads((tmp_path / "o/manifest.json").read_text(encoding="utf-8"))
    assert [e["key"] for e in man["entries"]] == ["ok.wav"]
    assert [f["key"] for f in man["failures"]] == ["closed"]
    # readable again: its file is added; unreadable again: its entry is kept, not removed
    proc = run_subprocess(["mel", root, "-o", tmp_path / "o", "-j", "1"], cwd=tmp_path)
    assert "added 1, updated 0, removed 0, unchanged 1" in proc.stderr, proc.stderr
    os.chmod(root / "closed", 0)
    try:
        proc = run_subprocess(["mel", root, "-o", tmp_path / "o", "-j", "1", "-q"], cwd=tmp_path,
                              drop_dac=True)  # fmt: skip
    finally:
        os.chmod(root / "closed", stat.S_IRWXU)
    assert proc.returncode == 3, proc.stderr
    assert "cannot read directory" in proc.stderr  # even with -q
    man = json.loads((tmp_path / "o/manifest.json").read_text(encoding="utf-8"))
    assert [e["key"] for e in man["entries"]] == ["closed/hidden_from_us.wav", "ok.wav"]
