"""Failures carry their own permanence (issue 9, item 3): the manifest says which
failures recur until the file changes, and reruns act on that, not on message text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import AudioFactory, RunMelcli, stderr_lines


def test_failure_records_say_whether_they_recur(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    audio.tone("ok.wav")
    audio.raw("junk.wav", b"not audio at all" * 10)
    audio.raw("empty.wav", b"")
    audio.write("nan.wav", np.full(800, np.nan, np.float32), 16000, subtype="FLOAT")
    proc = melcli("mel", "in", "-o", "o", "-j", "1")
    assert proc.returncode == 3, proc.stderr
    failures = {
        f["key"]: f for f in json.loads((tmp_path / "o/manifest.json").read_text())["failures"]
    }
    assert set(failures) == {"junk.wav", "empty.wav", "nan.wav"}
    assert all(f["permanent"] is True for f in failures.values()), failures
    # carried over: no skip line, nothing decoded again
    proc = melcli("mel", "in", "-o", "o", "-j", "1")
    assert proc.returncode == 3 and stderr_lines(proc.stderr, "melcli: skipped") == []


def test_a_record_without_permanence_is_retried_once(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """A manifest written before melcli recorded `permanent`: its failures are tried
    again once, then recorded with it."""
    audio.tone("ok.wav")
    audio.raw("junk.wav", b"not audio at all" * 10)
    assert melcli("mel", "in", "-o", "o", "-j", "1").returncode == 3
    path = tmp_path / "o/manifest.json"
    man = json.loads(path.read_text())
    for f in man["failures"]:
        del f["permanent"]
    path.write_text(json.dumps(man, indent=1))
    proc = melcli("mel", "in", "-o", "o", "-j", "1")
    assert (
        stderr_lines(proc.stderr, "melcli: skipped")
        == ["melcli: skipped junk.wav: cannot decode: Format not recognised"]
        or len(stderr_lines(proc.stderr, "melcli: skipped")) == 1
    )
    assert json.loads(path.read_text())["failures"][0]["permanent"] is True
    proc = melcli("mel", "in", "-o", "o", "-j", "1")
    assert stderr_lines(proc.stderr, "melcli: skipped") == []
