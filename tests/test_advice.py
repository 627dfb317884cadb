"""Nothing silent (issue 14, items 3, 4, 5 and 16): warnings about the data are
printed even with -q, said once, recorded in the manifest and shown by inspect;
a parameter that makes every input fail is one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import AudioFactory, RunMelcli, assert_no_traceback, stderr_lines


def _warnings(stderr: str) -> list[str]:
    return stderr_lines(stderr, "melcli: warning:")


def _mixed(audio: AudioFactory) -> None:
    audio.tone("a/low.wav", sr=8000, seconds=0.3)
    audio.tone("a/mid.flac", sr=16000, seconds=0.3)
    audio.tone("b/high.wav", sr=22050, seconds=0.3)


def test_quiet_run_still_warns_about_empty_filters_and_records_it(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """The README's cron recipe uses -q: 91 of 256 bands all zeros must not pass silently."""
    audio.tone("x.wav", sr=22050, seconds=0.5)
    proc = melcli("mel", "in", "-o", "e.h5", "--n-mels", "256", "--n-fft", "256", "-q")
    assert proc.returncode == 0, proc.stderr
    lines = _warnings(proc.stderr)
    assert (
        len(lines) == 1 and "empty filters: 91 of 256 bands are all zeros at 22050 Hz" in lines[0]
    )
    assert "n_mels=256 is too many bands for n_fft=256" in lines[0]
    assert "wrote" not in proc.stderr  # -q still hides the summary
    man = json.loads((tmp_path / "e.json").read_text())
    assert man["warnings"] == [lines[0].removeprefix("melcli: warning: ")]
    shown = melcli("inspect", "e.h5")
    assert f"warning:    {man['warnings'][0]}" in shown.stdout
    info = json.loads(melcli("inspect", "e.h5", "--json").stdout)
    assert info["warnings"] == man["warnings"]
    # librosa agrees about how many bands are empty
    import warnings

    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa says the same: that is the point
        fb = librosa.filters.mel(sr=22050, n_fft=256, n_mels=256)
    assert int(np.count_nonzero(fb.max(axis=1) == 0)) == 91


def test_mixed_sample_rates_said_once_and_recorded(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    _mixed(audio)
    proc = melcli("mel", "in", "-o", "m.h5", "-q")
    assert proc.returncode == 0, proc.stderr
    lines = [w for w in _warnings(proc.stderr) if "sample rates" in w]
    assert lines == [
        "melcli: warning: 3 sample rates in the inputs (8000, 16000, 22050 Hz): features are "
        "not comparable across rates (other frequency grids and frame rates); consider --sr"
    ]
    man = json.loads((tmp_path / "m.json").read_text())
    assert any("3 sample rates" in w for w in man["warnings"])
    proc = melcli("mel", "in", "-o", "r.h5", "--sr", "16000", "-q")
    assert proc.returncode == 0 and "sample rates" not in proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["warnings"] == []


def test_incremental_rerun_recomputes_warnings_over_the_whole_output(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """A file at a new rate added to a one-rate output: the output now mixes rates."""
    audio.tone("a.wav", sr=16000, seconds=0.3)
    assert melcli("mel", "in", "-o", "o.h5").returncode == 0
    assert json.loads((tmp_path / "o.json").read_text())["warnings"] == []
    audio.tone("b.wav", sr=44100, seconds=0.3)
    proc = melcli("mel", "in", "-o", "o.h5", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "2 sample rates in the inputs (16000, 44100 Hz)" in proc.stderr
    assert any(
        "2 sample rates" in w for w in json.loads((tmp_path / "o.json").read_text())["warnings"]
    )
    proc = melcli("mel", "in", "-o", "o.h5", "-q")  # nothing to do: nothing printed
    assert proc.returncode == 0 and proc.stderr == ""


def test_fmax_above_every_nyquist_is_one_line_before_any_work(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    _mixed(audio)
    proc = melcli("mel", "in", "-o", "f.h5", "--fmax", "16000")
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: --fmax 16000 is above the Nyquist frequency of all 3 inputs (max 11025 Hz); "
        "use --sr 32000 or a lower --fmax"
    )
    assert "skipped" not in proc.stderr
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.json").exists()
    # when some inputs can take it, the others are ordinary failures
    audio.tone("c/hi.wav", sr=44100, seconds=0.3)
    proc = melcli("mel", "in", "-o", "f.h5", "--fmax", "16000")
    assert proc.returncode == 3, proc.stderr
    assert len(stderr_lines(proc.stderr, "melcli: skipped")) == 3


def test_fmin_above_some_rates_names_the_real_cause(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """--fmin 9000 on 8-22 kHz audio: the low-rate files fail for fmin, and no
    warning blames n_mels for it."""
    _mixed(audio)
    proc = melcli("mel", "in", "-o", "g.h5", "--fmin", "9000")
    assert proc.returncode == 3, proc.stderr
    assert "empty filters" not in proc.stderr and "too high" not in proc.stderr
    skipped = stderr_lines(proc.stderr, "melcli: skipped")
    assert len(skipped) == 2 and all("fmin=9000 Hz is not below fmax" in s for s in skipped)
    proc = melcli("mel", "in/a", "-o", "h.h5", "--fmin", "9000")
    assert proc.returncode == 2
    assert "--fmin 9000 is not below fmax at the rate of any of the 2 inputs" in proc.stderr
    # a narrow range that really leaves bands without a bin says so, with the range
    proc = melcli("mel", "in/b", "-o", "n.h5", "--fmin", "10900", "--n-mels", "64", "-q")
    assert proc.returncode == 0, proc.stderr
    (line,) = _warnings(proc.stderr)
    assert "bands over 10900-11025 Hz" in line and "wider --fmin/--fmax range" in line


def test_input_shorter_than_n_fft_warned_once_and_recorded(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """librosa warns that n_fft is too large for a 10-sample input; so does melcli, once."""
    audio.write("tiny.wav", np.full(10, 0.1, np.float32), 16000)
    audio.write("tiny2.wav", np.full(100, 0.1, np.float32), 16000)
    audio.tone("ok.wav", sr=16000, seconds=0.5)
    proc = melcli("mel", "in", "-o", "s.h5", "-q")
    assert proc.returncode == 0, proc.stderr
    (line,) = _warnings(proc.stderr)
    assert line == (
        "melcli: warning: 2 inputs are shorter than n_fft=2048 samples (e.g. tiny.wav: "
        "10 samples): their frames are mostly padding; consider a smaller --n-fft"
    )
    man = json.loads((tmp_path / "s.json").read_text())
    assert man["warnings"] == [line.removeprefix("melcli: warning: ")]
