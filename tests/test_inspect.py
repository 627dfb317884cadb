"""inspect for pipelines and for planning (issue 14.10): --keys, the entries in
--json, one naming convention for outputs and inputs, nearest keys, a clear line
for an HDF5 file that is not melcli's, and a preview with a run's options."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from tests.conftest import AudioFactory, RunMelcli, assert_no_traceback


@pytest.fixture
def data(audio: AudioFactory) -> Path:
    audio.tone("spk1/a.wav", sr=16000, seconds=0.5)
    audio.tone("spk1/b.flac", sr=22050, seconds=0.7, channels=2)
    audio.tone("spk2/c.wav", sr=44100, seconds=0.3)
    audio.raw("spk2/broken.wav", b"RIFF not really")
    return audio.root


@pytest.mark.parametrize("out", ["o.h5", "o"])
def test_keys_one_per_line_for_outputs_and_inputs(
    data: Path, melcli: RunMelcli, tmp_path: Path, out: str
) -> None:
    assert melcli("mel", "in", "-o", out).returncode == 3
    proc = melcli("inspect", out, "--keys")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == "spk1/a.wav\nspk1/b.flac\nspk2/c.wav\n"
    proc = melcli("inspect", "in", "--keys")  # what a run would write: not the broken one
    assert proc.returncode == 0
    assert proc.stdout == "spk1/a.wav\nspk1/b.flac\nspk2/c.wav\n"


def test_json_has_the_entries_and_the_same_field_names_for_inputs(
    data: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    assert melcli("mel", "in", "-o", "o.h5").returncode == 3
    out = json.loads(melcli("inspect", "o.h5", "--json").stdout)
    inp = json.loads(melcli("inspect", "in", "--json").stdout)
    man = json.loads((tmp_path / "o.json").read_text())
    assert out["kind"] == inp["kind"] == "mel"
    assert out["total_entries"] == inp["total_files"] == 3
    assert out["total_duration"] == pytest.approx(inp["total_duration"])
    assert [e["key"] for e in out["entries"]] == [f["key"] for f in inp["files"]]
    for e, f, m in zip(out["entries"], inp["files"], man["entries"], strict=True):
        assert e["shape"] == f["shape"] == m["shape"]  # the preview is what the run wrote
        assert e["duration"] == pytest.approx(f["duration"])
        assert e["sample_rate"] == f["sample_rate"] and e["channels"] == f["channels"]
    for name in ("mel_shape", "duration", "entries_count"):
        assert name not in inp and (name != "duration" or name not in out)


@pytest.mark.parametrize(
    "options",
    [
        ("--sr", "16000", "--n-fft", "400", "--hop-length", "160", "--n-mels", "80"),
        ("--kind", "stft", "--n-fft", "512", "--win-length", "300", "--no-center"),
        ("--kind", "stft", "--keep-channels", "--sr", "8000"),
    ],
)
def test_preview_with_a_runs_options_gives_the_shapes_it_writes(
    data: Path, melcli: RunMelcli, tmp_path: Path, options: tuple[str, ...]
) -> None:
    kind = "stft" if "stft" in options else "mel"
    run_options = [o for o in options if o not in ("--kind", "stft")]
    assert melcli(kind, "in", "-o", "p.h5", *run_options).returncode == 3
    man = json.loads((tmp_path / "p.json").read_text())
    preview = json.loads(melcli("inspect", "in", "--json", *options).stdout)
    assert preview["kind"] == kind
    assert [f["shape"] for f in preview["files"]] == [e["shape"] for e in man["entries"]]
    assert [f["sample_rate"] for f in preview["files"]] == [
        e["sample_rate"] for e in man["entries"]
    ]
    with h5py.File(tmp_path / "p.h5") as f:
        assert [list(f[f"features/{e['key']}"].shape) for e in man["entries"]] == [
            p["shape"] for p in preview["files"]
        ]
    text = melcli("inspect", "in", *options).stdout
    assert f"{kind} shape" in text.splitlines()[0]


def test_preview_options_on_an_output_are_a_usage_error(
    data: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    assert melcli("mel", "in", "-o", "o.h5").returncode == 3
    proc = melcli("inspect", "o.h5", "--n-fft", "512")
    assert proc.returncode == 2
    assert "--n-fft previews what a run would give for audio inputs" in proc.stderr
    proc = melcli("inspect", "in", "--kind", "stft", "--n-mels", "40")
    assert proc.returncode == 2 and "--n-mels applies to --kind mel" in proc.stderr


def test_unknown_key_suggests_the_nearest(data: Path, melcli: RunMelcli, tmp_path: Path) -> None:
    assert melcli("mel", "in", "-o", "o.h5").returncode == 3
    proc = melcli("inspect", "o.h5", "--key", "spk1/a.wv")
    assert_no_traceback(proc.stderr)
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("melcli: error: no entry 'spk1/a.wv' in o.h5; did you mean: spk1/a.wav")
    assert line.endswith("? (melcli inspect o.h5 --keys lists them)")


def test_hdf5_file_that_is_not_melcli_is_one_clear_line(melcli: RunMelcli, tmp_path: Path) -> None:
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2, 3]
    proc = melcli("inspect", "other.h5")
    assert proc.returncode == 1
    assert proc.stderr == "melcli: error: other.h5 is not a melcli output: no /manifest\n"


def test_a_file_named_like_hdf5_that_is_not_is_one_clear_line(
    melcli: RunMelcli, tmp_path: Path
) -> None:
    """Not treated as audio ('0 files, 1 unreadable', exit 0): it was meant as an output."""
    (tmp_path / "bad.h5").write_bytes(b"garbage bytes, not HDF5")
    proc = melcli("inspect", "bad.h5")
    assert proc.returncode == 1
    assert proc.stderr == "melcli: error: bad.h5 is not a melcli output: not an HDF5 file\n"
    proc = melcli("mel", "x", "-o", "y.h5", "--like", "bad.h5")
    assert proc.returncode == 2 and "--like bad.h5: bad.h5 is not a melcli output" in proc.stderr
