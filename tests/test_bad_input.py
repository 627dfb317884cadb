"""Bad input: a clear message, nothing lost.

Every bad file is skipped with exactly one ``melcli: skipped <key>: <reason>``
line on stderr, recorded in the manifest's failures, every other file is
written and the exit status is 3; all inputs bad is exit 1 with nothing
written; bad usage is exit 2 before any work; Ctrl-C is 130 and SIGTERM 143
with nothing left at OUTPUT.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import soundfile as sf
from conftest import (
    AudioFactory,
    Invoke,
    RunMelcli,
    assert_no_traceback,
    melcli_command,
    sine,
    stderr_lines,
)

GOOD = ["good_a.wav", "sub/good_b.flac"]


def write_goods(audio: AudioFactory) -> None:
    audio.tone("good_a.wav", sr=16000, seconds=0.5)
    audio.sweep("sub/good_b.flac", sr=16000, seconds=0.5)


def wav_bytes(tmp: Path, n: int = 8000, subtype: str = "PCM_16") -> bytes:
    path = tmp / "scratch.wav"
    sf.write(path, sine(440, 16000, n / 16000), 16000, subtype=subtype)
    data = path.read_bytes()
    path.unlink()
    return data


def flac_bytes(tmp: Path) -> bytes:
    path = tmp / "scratch.flac"
    y = np.random.default_rng(7).uniform(-0.5, 0.5, 16000)
    sf.write(path, y, 16000)
    data = path.read_bytes()
    path.unlink()
    return data


def float_wav_with(audio: AudioFactory, name: str, value: float) -> Path:
    y = sine(440, 16000, 0.5)
    y[1000] = value
    y[3000] = value
    return audio.write(name, y, 16000, subtype="FLOAT")


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name -> (make the bad file, extra CLI args, regex the reason must match)
BadCase = tuple[Callable[[AudioFactory, Path], Any], list[str], str]
BAD_CASES: dict[str, BadCase] = {
    "empty.wav": (lambda a, t: a.raw("empty.wav", b""), [], r"empty"),
    "truncated_header.wav": (
        lambda a, t: a.raw("truncated_header.wav", wav_bytes(t)[:30]), [], r"cannot decode"),
    "truncated.flac": (lambda a, t: a.raw("truncated.flac", half(flac_bytes(t))), [],
                       r"cannot decode"),
    "text.wav": (lambda a, t: a.raw("text.wav", b"I am a shopping list, not audio.\n" * 30), [],
                 r"cannot decode"),
    "random.wav": (lambda a, t: a.raw("random.wav", np.random.default_rng(0).bytes(5000)), [],
                   r"cannot decode"),
    # these bytes make libsndfile try its MP3 decoder, whose libmpg123 chats on fd 2
    "random.mp3": (lambda a, t: a.raw("random.mp3", np.random.default_rng(1).bytes(20000)), [],
                   r"cannot decode"),
    "short.wav": (lambda a, t: a.write("short.wav", sine(440, 16000, 0.01), 16000),
                  ["--no-center", "--n-fft", "512"], r"too short.*160.*512"),
    "nan.wav": (lambda a, t: float_wav_with(a, "nan.wav", np.nan), [], r"NaN"),
    "inf.wav": (lambda a, t: float_wav_with(a, "inf.wav", np.inf), [], r"Inf"),
    # 0.9 x an on-bin tone: |X|**2 peaks at (0.9 * 512)**2 > 65504, float16's largest
    "loud.wav": (lambda a, t: a.tone("loud.wav", freq=500, sr=16000, seconds=0.5, amp=0.9),
                 ["--dtype", "float16", "--n-mels", "8", "--norm", "none", "--n-fft", "1600"],
                 r"overflow float16"),
    "eight_khz.wav": (lambda a, t: a.tone("eight_khz.wav", freq=300, sr=8000, seconds=0.5),
                      ["--fmax", "6000"], r"fmax.*6000.*Nyquist.*4000"),
}  # fmt: skip


def check_skipped(stderr: str, key: str, reason_re: str) -> None:
    """Exactly one ``melcli: skipped <key>: <reason>`` line, and no other noise about it."""
    lines = stderr_lines(stderr, f"melcli: skipped {key}: ")
    assert len(lines) == 1, stderr
    assert re.search(reason_re, lines[0]), lines[0]
    assert len(stderr_lines(stderr, "melcli: skipped ")) == 1, stderr
    assert_no_traceback(stderr)
    # every stderr line is melcli's own (no library chatter such as libmpg123's "Note: ...")
    assert all(line.startswith("melcli: ") for line in stderr.splitlines()), stderr


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_bad_file_is_skipped_and_recorded(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, case: str, fmt: str
) -> None:
    make, args, reason_re = BAD_CASES[case]
    write_goods(audio)
    bad = make(audio, tmp_path)
    out = tmp_path / ("o.h5" if fmt == "h5" else "o")
    r = invoke("mel", audio.root, "-o", out, "-j1", *args)
    assert r.exit_code == 3, r.stderr
    assert r.stdout == f"{out}\n"
    check_skipped(r.stderr, case, reason_re)
    man = json.loads((out.with_suffix(".json") if fmt == "h5" else out / "manifest.json")
                     .read_text())  # fmt: skip
    assert [e["key"] for e in man["entries"]] == GOOD
    assert len(man["failures"]) == 1
    fail = man["failures"][0]
    assert fail["key"] == case and fail["source"] == str(bad)
    assert re.search(reason_re, fail["reason"])
    assert fail["reason"] in r.stderr
    assert man["totals"]["failures"] == 1 and man["totals"]["entries"] == 2
    if fmt == "h5":
        with h5py.File(out) as f:
            assert sorted(f["features"]) == ["good_a.wav", "sub"]
            assert case not in f["features"]
    else:
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == [
            f"{k}.npy" for k in GOOD]  # fmt: skip


def test_all_bad_cases_at_once_subprocess(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """The real executable, -j2, every decode failure in one run."""
    write_goods(audio)
    cases = {k: v for k, v in BAD_CASES.items() if not v[1]}  # no per-case options
    for make, _, _ in cases.values():
        make(audio, tmp_path)
    out = tmp_path / "all.h5"
    r = melcli("mel", audio.root, "-o", out, "-j2")
    assert r.returncode == 3, r.stderr
    assert r.stdout == f"{out}\n"
    assert_no_traceback(r.stderr)
    assert all(line.startswith("melcli: ") for line in r.stderr.splitlines()), r.stderr
    for key, (_, _, reason_re) in cases.items():
        [line] = stderr_lines(r.stderr, f"melcli: skipped {key}: ")
        assert re.search(reason_re, line), line
    man = json.loads((tmp_path / "all.json").read_text())
    assert sorted(f["key"] for f in man["failures"]) == sorted(cases)
    assert [e["key"] for e in man["entries"]] == GOOD


def test_broken_symlink_is_skipped(audio: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    write_goods(audio)
    (audio.root / "gone.wav").symlink_to(tmp_path / "does-not-exist.wav")
    out = tmp_path / "o.h5"
    r = invoke("mel", audio.root, "-o", out, "-j1")
    assert r.exit_code == 3, r.stderr
    check_skipped(r.stderr, "gone.wav", r"broken symlink|not found")


def test_missing_file_in_stdin_list(audio: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    write_goods(audio)
    out = tmp_path / "o.h5"
    r = invoke("mel", "-", "-o", out, "-j1", input="in/good_a.wav\nin/missing.wav\n")
    assert r.exit_code == 3, r.stderr
    check_skipped(r.stderr, "in/missing.wav", r"not found")


# ---------------------------------------------------------------------------
# inputs that are unusual but fine
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale,power", [("db", 2.0), ("db", 1.0), ("log", 2.0)])
def test_silence_gives_finite_values(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, scale: str, power: float
) -> None:
    audio.write("silence.wav", np.zeros(16000, np.float32), 16000)
    audio.write("silence_st.flac", np.zeros((2, 8000), np.float32), 22050)
    out = tmp_path / "s.h5"
    r = invoke("mel", audio.root, "-o", out, "-j1", "--scale", scale, "--power", str(power),
               "--keep-channels")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    with h5py.File(out) as f:
        for key in ("silence.wav", "silence_st.flac"):
            data = f["features"][key][()]
            assert np.isfinite(data).all()
            floor = 20 / power * np.log10(1e-10) if scale == "db" else np.log(1e-10)
            np.testing.assert_allclose(data, floor, rtol=1e-5)


def test_silence_with_top_db_is_finite(audio: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    audio.write("silence.wav", np.zeros(16000, np.float32), 16000)
    out = tmp_path / "s"
    r = invoke("stft", audio.root, "-o", out, "-j1", "--scale", "db", "--top-db", "80")
    assert r.exit_code == 0, r.stderr
    assert np.isfinite(np.load(out / "silence.wav.npy", allow_pickle=False)).all()


def test_short_file_is_fine_with_center(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    audio.write("tiny.wav", sine(440, 16000, 0.01), 16000)  # 160 samples < n_fft
    out = tmp_path / "t.h5"
    r = invoke("mel", audio.root, "-o", out, "-j1")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out) as f:
        assert f["features/tiny.wav"].shape == (128, 1)


# ---------------------------------------------------------------------------
# nothing usable: exit 1, nothing written
# ---------------------------------------------------------------------------
def assert_nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not out.with_suffix(".json").exists()
    work = tmp_path / f".{out.name}.melcli-work"  # where the new output was being built
    assert not list(work.glob("new-*"))


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_all_inputs_bad(audio: AudioFactory, invoke: Invoke, tmp_path: Path, fmt: str) -> None:
    for name in ("empty.wav", "text.wav", "random.wav"):
        BAD_CASES[name][0](audio, tmp_path)
    out = tmp_path / ("bad.h5" if fmt == "h5" else "bad")
    r = invoke("mel", audio.root, "-o", out, "-j1")
    assert r.exit_code == 1
    assert r.stdout == ""
    assert len(stderr_lines(r.stderr, "melcli: skipped ")) == 3
    assert "melcli: error:" in r.stderr
    assert_no_traceback(r.stderr)
    assert_nothing_written(tmp_path, out)


def test_all_inputs_bad_subprocess(audio: AudioFactory, melcli: RunMelcli, tmp_path: Path) -> None:
    BAD_CASES["nan.wav"][0](audio, tmp_path)
    BAD_CASES["random.mp3"][0](audio, tmp_path)
    out = tmp_path / "bad.h5"
    r = melcli("mel", audio.root, "-o", out, "-j2")
    assert r.returncode == 1
    assert r.stdout == ""
    assert_no_traceback(r.stderr)
    assert all(line.startswith("melcli: ") for line in r.stderr.splitlines()), r.stderr
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("setup", ["empty-dir", "no-audio-suffix", "ext-filter"])
def test_no_audio_found(audio: AudioFactory, invoke: Invoke, tmp_path: Path, setup: str) -> None:
    args: list[str] = []
    if setup == "no-audio-suffix":
        audio.raw("notes.txt", b"text")
        audio.raw(".hidden.wav", wav_bytes(tmp_path))
    elif setup == "ext-filter":
        audio.tone("a.wav", seconds=0.2)
        args = ["--ext", "flac"]
    out = tmp_path / "n.h5"
    r = invoke("mel", audio.root, "-o", out, "-j1", *args)
    assert r.exit_code == 1
    assert "no audio found" in r.stderr and str(audio.root) in r.stderr
    assert r.stdout == ""
    assert_nothing_written(tmp_path, out)


def test_output_directory_missing(audio: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    audio.tone("a.wav", seconds=0.2)
    out = tmp_path / "no" / "such" / "dir" / "o.h5"
    r = invoke("mel", audio.root, "-o", out, "-j1")
    assert r.exit_code == 1
    assert "melcli: error:" in r.stderr and str(tmp_path / "no") in r.stderr
    assert r.stdout == ""
    assert_no_traceback(r.stderr)
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------------------
# --fail-fast
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["a_empty.wav", "a_nan.wav"])
def test_fail_fast_stops_at_the_first_failure(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, bad: str
) -> None:
    write_goods(audio)
    if bad == "a_empty.wav":  # fails when its header is read
        audio.raw("a_empty.wav", b"")
        audio.raw("b_text.wav", b"not audio" * 10)
    else:  # fails when it is computed
        float_wav_with(audio, "a_nan.wav", np.nan)
        float_wav_with(audio, "b_inf.wav", np.inf)
    out = tmp_path / "ff.h5"
    r = invoke("mel", audio.root, "-o", out, "-j1", "--fail-fast")
    assert r.exit_code == 1
    assert r.stdout == ""
    assert_no_traceback(r.stderr)
    skipped = stderr_lines(r.stderr, "melcli: skipped ")
    assert len(skipped) == 1, r.stderr  # it stopped there
    first = skipped[0].split()[2].rstrip(":")
    errors = stderr_lines(r.stderr, "melcli: error: ")
    assert len(errors) == 1 and "fail-fast" in errors[0]
    assert first in errors[0], f"the error names {errors[0]!r}, the failure was {first}"
    assert_nothing_written(tmp_path, out)


def test_without_fail_fast_the_same_inputs_give_exit_3(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    write_goods(audio)
    audio.raw("a_empty.wav", b"")
    float_wav_with(audio, "a_nan.wav", np.nan)
    r = invoke("mel", audio.root, "-o", tmp_path / "o.h5", "-j1")
    assert r.exit_code == 3
    assert len(stderr_lines(r.stderr, "melcli: skipped ")) == 2


# ---------------------------------------------------------------------------
# usage errors: exit 2, before any work, a message naming the bad value
# ---------------------------------------------------------------------------
WINDOW_NAMES = ["rectangular", "hann", "hamming", "blackman", "bartlett", "gaussian:STD",
                "kaiser:BETA", "flattop"]  # fmt: skip
USAGE_CASES = [
    ("mel", ["--n-fft", "0"], r"n.fft.*0.*positive"),
    ("mel", ["--n-fft", "-512"], r"n.fft.*-512"),
    ("stft", ["--hop-length", "0"], r"hop.length.*0.*positive"),
    ("stft", ["--hop-length", "-3"], r"hop.length.*-3"),
    ("mel", ["--win-length", "0"], r"win.length.*0.*positive"),
    ("mel", ["--win-length", "4096"], r"win.length.*4096.*n.fft.*2048"),
    ("stft", ["--n-fft", "256", "--win-length", "400"], r"win.length.*400.*256"),
    ("mel", ["--n-mels", "0"], r"n.mels.*0"),
    ("mel", ["--fmin", "8000", "--fmax", "4000"], r"fmin.*8000.*fmax.*4000"),
    ("mel", ["--fmin", "300", "--fmax", "300"], r"fmin.*300.*fmax.*300"),
    ("mel", ["--fmin", "-1"], r"fmin.*-1"),
    ("mel", ["--fmax", "-100"], r"fmax.*-100"),
    ("mel", ["--sr", "16000", "--fmax", "9000"], r"fmax.*9000.*Nyquist"),
    ("mel", ["--window", "triangle"], r"unknown window 'triangle'.*"
     + ".*".join(WINDOW_NAMES)),
    ("stft", ["--window", "kaiser"], r"kaiser.*BETA"),
    ("stft", ["--window", "gaussian"], r"gaussian.*STD"),
    ("stft", ["--window", "kaiser:abc"], r"abc.*not a number"),
    ("stft", ["--window", "gaussian:-2"], r"gaussian:-2"),
    ("stft", ["--window", "hann:3"], r"hann.*no parameter"),
    ("mel", ["--power", "0"], r"power.*0"),
    ("mel", ["--power", "-2"], r"power.*-2"),
    ("mel", ["--amin", "0"], r"amin.*0"),
    ("mel", ["--top-db", "80"], r"top.db.*--scale db"),
    ("mel", ["--scale", "db", "--top-db", "-5"], r"top.db.*-5"),
    ("mel", ["--scale", "db", "--power", "1.5"], r"power.*1.5"),
    ("stft", ["--complex", "--scale", "db"], r"complex"),
    ("stft", ["--complex", "--dtype", "float16"], r"complex.*float"),
    ("mel", ["--complex"], r"--complex"),
    ("mel", ["--sr", "0"], r"--sr.*0"),
    ("mel", ["-j", "0"], r"jobs.*0"),
    ("mel", ["--dtype", "int8"], r"int8"),
    ("mel", ["--pad-mode", "wrap"], r"wrap"),
    ("mel", ["--scale", "loud"], r"loud"),
    ("mel", ["--format", "wav"], r"wav"),
    ("mel", ["--mel-scale", "bark"], r"bark"),
    ("mel", ["--norm", "l2"], r"l2"),
    ("mel", ["--n-fft", "many"], r"many"),
]  # fmt: skip


@pytest.mark.parametrize(
    "command,args,message", USAGE_CASES, ids=[" ".join(c[1]) for c in USAGE_CASES]
)
def test_usage_errors(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, command: str, args: list[str],
    message: str,
) -> None:  # fmt: skip
    audio.tone("a.wav", seconds=0.2)
    out = tmp_path / "u.h5"
    r = invoke(command, audio.root, "-o", out, *args)
    assert r.exit_code == 2, r.stderr
    assert r.stdout == ""
    assert re.search(message, " ".join(r.stderr.split())), r.stderr
    assert "Usage:" in r.stderr or "Error" in r.stderr
    assert_no_traceback(r.stderr)
    assert_nothing_written(tmp_path, out)
    assert not list(tmp_path.glob(".u.h5*work*"))


def test_usage_error_subprocess(audio: AudioFactory, melcli: RunMelcli, tmp_path: Path) -> None:
    audio.tone("a.wav", seconds=0.2)
    r = melcli("mel", audio.root, "-o", tmp_path / "u.h5", "--window", "sinc")
    assert r.returncode == 2
    assert "unknown window 'sinc'" in r.stderr
    for name in WINDOW_NAMES:
        assert name in r.stderr
    assert r.stdout == ""
    assert_no_traceback(r.stderr)


def test_missing_input_is_a_usage_error(invoke: Invoke, tmp_path: Path) -> None:
    r = invoke("mel", tmp_path / "nope", "-o", tmp_path / "o.h5")
    assert r.exit_code == 2
    assert "nope" in r.stderr
    assert not (tmp_path / "o.h5").exists()


def test_two_inputs_with_the_same_key_are_refused(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    audio.tone("one/a.wav", seconds=0.2)
    audio.tone("two/a.wav", freq=880, seconds=0.2)
    out = tmp_path / "k.h5"
    r = invoke("mel", audio.root / "one", audio.root / "two", "-o", out, "-j1")
    assert r.exit_code == 2
    assert "a.wav" in r.stderr and "same key" in r.stderr
    assert_nothing_written(tmp_path, out)


def test_missing_output_option(audio: AudioFactory, invoke: Invoke) -> None:
    audio.tone("a.wav", seconds=0.2)
    r = invoke("mel", audio.root)
    assert r.exit_code == 2 and "--output" in r.stderr


# ---------------------------------------------------------------------------
# Ctrl-C and SIGTERM on the real executable
# ---------------------------------------------------------------------------
def long_corpus(audio: AudioFactory) -> None:
    """40 files of 20 s: seconds of work with the options used below."""
    y = (0.1 * audio.rng.standard_normal(16000 * 20)).astype(np.float32)
    for i in range(40):
        audio.write(f"long/f{i:02d}.wav", y, 16000)


def start_and_wait_for_progress(
    args: list[str], tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start melcli with a progress bar; return once it has finished a first file."""
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(
            [*melcli_command(), *args, "--progress"], stdout=subprocess.PIPE, stderr=fh,
            stdin=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if re.search(rb"\b[1-9]\d*/\d+\b", err.read_bytes()):  # tasks: heavy files are split
            return proc, err
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"melcli did not start working: {err.read_text(errors='replace')}")


def wait_for_group_exit(pgid: int) -> None:
    """Workers must not outlive the run (they would keep burning CPU)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail("worker processes were still running 20 s after melcli exited")


@pytest.mark.parametrize(
    "sig,jobs,fmt,code",
    [
        pytest.param(signal.SIGINT, "2", "h5", 130, id="ctrl-c-j2-h5"),
        pytest.param(signal.SIGINT, "1", "npy", 130, id="ctrl-c-j1-npy"),
        pytest.param(signal.SIGTERM, "2", "npy", 143, id="sigterm-j2-npy"),
    ],
)
def test_interrupt_leaves_nothing_at_output(
    audio: AudioFactory, tmp_path: Path, sig: signal.Signals, jobs: str, fmt: str, code: int
) -> None:
    long_corpus(audio)
    out = tmp_path / ("out.h5" if fmt == "h5" else "out")
    args = ["mel", str(audio.root), "-o", str(out), "-j", jobs, "--n-mels", "8",
            "--hop-length", "16"]  # fmt: skip
    proc, err = start_and_wait_for_progress(args, tmp_path)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole process group
    else:
        os.kill(proc.pid, sig)  # `kill PID`: the main process only
    stdout, _ = proc.communicate(timeout=60)
    wait_for_group_exit(proc.pid)
    stderr = err.read_text(errors="replace")
    assert proc.returncode == code, stderr
    assert stdout == b""
    assert_no_traceback(stderr)
    assert "interrupted" in stderr if sig == signal.SIGINT else "terminated" in stderr
    assert not out.exists()
    assert not out.with_suffix(".json").exists()
    work = tmp_path / f".{out.name}.melcli-work"  # kept for a resume, without the new output
    assert not list(work.glob("new-*")) and not list(work.glob("old-*"))
