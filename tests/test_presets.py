"""Presets (issue 10): each reproduces its reference's own output, computed by the real
library (golden files of tests/reference/make_golden.py: torch is too heavy for CI),
through the command line; the command line overrides a preset and says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import melcli as melcli_lib
from melcli import presets
from melcli.params import FeatureParams, declared
from tests.conftest import RunMelcli, assert_no_traceback

REFERENCE = Path(__file__).parent / "reference"
GOLDEN = np.load(REFERENCE / "golden.npz")
CALLS = json.loads((REFERENCE / "golden.json").read_text())
INPUTS = sorted(CALLS["inputs"])


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """The golden inputs (1 s excerpts of sample_audio/: 16, 22.05, 44.1, 48 kHz, mono and
    stereo), checked against the hashes the golden file records."""
    import hashlib

    root = tmp_path / "in"
    root.mkdir()
    for name, info in CALLS["inputs"].items():
        src = REFERENCE / info["file"]
        assert hashlib.sha256(src.read_bytes()).hexdigest() == info["sha256"]
        shutil.copy(src, root / f"{name}.flac")
    return root


@pytest.mark.parametrize(("kind", "golden"), [("mel", "torchaudio_mel"),
                                              ("mfcc", "torchaudio_mfcc")])  # fmt: skip
def test_torchaudio_presets_equal_torchaudio(
    melcli: RunMelcli, inputs: Path, tmp_path: Path, kind: str, golden: str
) -> None:
    out = tmp_path / f"{kind}.h5"
    proc = melcli(kind, inputs, "-o", out, "--preset", "torchaudio")
    assert proc.returncode == 0, proc.stderr
    with melcli_lib.open(out) as feats:
        assert json.loads((tmp_path / f"{kind}.json").read_text())["preset"] == "torchaudio"
        for name in INPUTS:
            ref = GOLDEN[f"{golden}/{name}"]  # (channels, rows, frames), torchaudio's float32
            got = feats[f"{name}.flac"]
            assert got.shape == ref.shape, (name, got.shape, ref.shape)
            err = float(np.abs(got - ref).max()) / float(np.abs(ref).max())
            assert err <= 1e-4, (name, err)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_preset_equals_what_whisper_transcribe_computes(
    melcli: RunMelcli, inputs: Path, tmp_path: Path, n_mels: int
) -> None:
    """16 kHz mono inputs (Whisper's own rate: no resampler in between). Its traps: the
    frame centred on the end is dropped (N // 160 frames), zeros follow the audio (not
    the reflection), and the max - 8 clip sees every frame touching the audio."""
    out = tmp_path / "w.h5"
    wanted = [name for name, info in CALLS["inputs"].items() if info["sr"] == 16000]
    args = [str(inputs / f"{name}.flac") for name in wanted]
    proc = melcli("mel", *args, "-o", out, "--preset", "whisper", "--n-mels", str(n_mels))
    assert proc.returncode == 0, proc.stderr
    with melcli_lib.open(out) as feats:
        for name in wanted:
            ref = GOLDEN[f"whisper_{n_mels}/{name}"]  # (n_mels, N // 160)
            got = feats[f"{name}.flac"]
            assert got.shape == ref.shape == (n_mels, CALLS["inputs"][name]["samples"] // 160)
            err = float(np.abs(got - ref).max()) / float(np.abs(ref).max())
            assert err <= 1e-4, (name, err)


def test_whisper_preset_skips_a_file_shorter_than_one_hop(
    melcli: RunMelcli, tmp_path: Path
) -> None:
    import soundfile as sf

    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "tiny.wav", np.full(100, 0.1, np.float32), 16000)
    sf.write(tmp_path / "in" / "ok.wav", np.full(1000, 0.1, np.float32), 16000)
    proc = melcli("mel", tmp_path / "in", "-o", tmp_path / "w.h5", "--preset", "whisper")
    assert proc.returncode == 3
    assert "skipped tiny.wav: too short: 100 samples < hop_length=160" in proc.stderr
    with melcli_lib.open(tmp_path / "w.h5") as feats:
        assert feats["ok.wav"].shape == (80, 1000 // 160)


def test_options_override_a_preset_and_say_so(
    melcli: RunMelcli, inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.h5"
    proc = melcli("mfcc", inputs, "-o", out, "--preset", "TorchAudio", "--n-mfcc", "13",
                  "--mono")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "melcli: --preset torchaudio, overriding n_mfcc 40 -> 13" in proc.stderr
    assert "overriding mono False -> True" in proc.stderr
    params = json.loads((tmp_path / "m.json").read_text())["params"]
    want = {**presets.get("mfcc", "torchaudio").values, "n_mfcc": 13, "mono": True}
    assert {k: params[k] for k in want} == want
    shown = melcli("inspect", out)
    assert "preset:     torchaudio" in shown.stdout


def test_bad_preset_use_is_a_usage_error(melcli: RunMelcli, inputs: Path, tmp_path: Path) -> None:
    for args, says in (
        (["mel", "--preset", "whisperx"], "--preset"),
        (["stft", "--preset", "torchaudio"], "No such option"),
        (["mel", "--preset", "torchaudio", "--like", str(tmp_path)], "give one of them"),
    ):
        proc = melcli(*args[:1], inputs, "-o", tmp_path / "x.h5", *args[1:])
        assert proc.returncode == 2 and says in proc.stderr, (args, proc.stderr)
        assert_no_traceback(proc.stderr)


def test_presets_lists_every_preset_and_its_values(melcli: RunMelcli) -> None:
    text = melcli("presets")
    assert text.returncode == 0
    listed = json.loads(melcli("presets", "--json").stdout)
    assert {(p["kind"], p["name"]) for p in listed} == set(presets.PRESETS)
    for p in listed:
        assert f"melcli {p['kind']} --preset {p['name']}" in text.stdout
        assert p["reference"] in text.stdout
        # every value is a valid parameter of its kind, and every parameter has a value
        params = FeatureParams(kind=p["kind"], **p["values"])
        assert {d.name for d in declared(type(params))} <= set(p["values"]), p["name"]


def test_inspect_previews_a_preset(melcli: RunMelcli, inputs: Path) -> None:
    proc = melcli("inspect", inputs, "--kind", "mel", "--preset", "whisper", "--json")
    assert proc.returncode == 0, proc.stderr
    shapes = {f["key"]: f["shape"] for f in json.loads(proc.stdout)["files"]}
    for name, info in CALLS["inputs"].items():  # resampled to 16 kHz, N // 160 frames
        n = -(-info["samples"] * 16000 // info["sr"])
        assert shapes[f"{name}.flac"] == [80, n // 160], name
    wrong = melcli("inspect", inputs, "--kind", "stft", "--preset", "whisper")
    assert wrong.returncode == 2 and "not a preset of stft" in wrong.stderr
