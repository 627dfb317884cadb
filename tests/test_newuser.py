"""What a new user tripped over (issue 14): output suffixes, case of choices, the install.

Each test reproduces one report with the real executable and real files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from conftest import AudioFactory, RunMelcli, assert_no_traceback, stderr_lines

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def two(audio: AudioFactory) -> Path:
    audio.tone("a.wav", sr=16000, seconds=0.3)
    audio.sweep("b.flac", sr=16000, seconds=0.3)
    return audio.root


@pytest.mark.parametrize("name", ["feats.hdf", "feats.HDF5", "feats.h5"])
def test_hdf_suffixes_are_hdf5(melcli: RunMelcli, two: Path, tmp_path: Path, name: str) -> None:
    r = melcli("mel", two, "-o", name)
    assert r.returncode == 0, r.stderr
    assert not stderr_lines(r.stderr, "melcli: warning")
    with h5py.File(tmp_path / name, "r") as f:
        assert sorted(f["features"]) == ["a.wav", "b.flac"]


def test_other_suffix_warns_and_writes_npy(melcli: RunMelcli, two: Path, tmp_path: Path) -> None:
    r = melcli("mel", two, "-o", "out.txt", "-q")
    assert r.returncode == 0, r.stderr
    (warning,) = stderr_lines(r.stderr, "melcli: warning")
    assert "'.txt'" in warning and "--format" in warning
    assert (tmp_path / "out.txt" / "a.wav.npy").is_file()
    # an explicit --format is a choice: no warning
    r = melcli("mel", two, "-o", "other.txt", "--format", "npy")
    assert r.returncode == 0 and not stderr_lines(r.stderr, "melcli: warning"), r.stderr
    # a plain directory name has no suffix: no warning
    r = melcli("mel", two, "-o", "feats")
    assert r.returncode == 0 and not stderr_lines(r.stderr, "melcli: warning"), r.stderr


def test_choices_accept_any_case(melcli: RunMelcli, two: Path, tmp_path: Path) -> None:
    r = melcli("mel", two, "-o", "x.h5", "--scale", "dB", "--pad-mode", "Reflect",
               "--mel-scale", "HTK", "--norm", "None", "--dtype", "Float64", "--backend", "Fork",
               "--format", "H5")  # fmt: skip
    assert r.returncode == 0, r.stderr
    params = json.loads((tmp_path / "x.json").read_text())["params"]
    assert (params["scale"], params["pad_mode"], params["mel_scale"], params["norm"],
            params["dtype"]) == ("db", "reflect", "htk", "none", "float64")  # fmt: skip
    r = melcli("mel", two, "-o", "y.h5", "--scale", "decibel")
    assert r.returncode == 2 and "decibel" in r.stderr
    assert_no_traceback(r.stderr)


def test_package_metadata_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    """setuptools' license-table deprecation (issue 14.12): the build prints no warning."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import warnings; warnings.simplefilter('error');"
         "from setuptools.dist import Distribution;"
         "from setuptools.config.pyprojecttoml import apply_configuration;"
         f"apply_configuration(Distribution(), {str(ROOT / 'pyproject.toml')!r})"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_dry_run_counts_what_the_run_does(melcli: RunMelcli, audio: AudioFactory) -> None:
    """Issue 14.6: undecodable files were counted as 'add' by --dry-run."""
    audio.tone("a.wav", sr=16000, seconds=0.3)
    audio.tone("b.wav", sr=16000, seconds=0.3)
    audio.raw("bad.wav", b"RIFF not really a wav file at all" * 10)
    audio.raw("empty.flac", b"")
    dry = melcli("mel", audio.root, "-o", "x.h5", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    adds = [line for line in dry.stdout.splitlines() if line.startswith("add ")]
    assert adds == ["add a.wav", "add b.wav"]
    assert "would add 2, update 0, remove 0, keep 0 unchanged; failed 2" in dry.stdout
    real = melcli("mel", audio.root, "-o", "x.h5")
    assert real.returncode == 3
    assert "added 2, updated 0, removed 0, unchanged 0, failed 2" in real.stderr
