"""Feature kinds and parameters, each declared in one place (issue 9, items 1-2).

A kind written outside melcli (tests/plugins/rolloff_kind.py: one module, one
registration line) gets a command with its own options, runs through the real
pipeline into a real output that melcli.open and inspect read, and its numbers
equal librosa's. Every Click option of a feature parameter is generated from its
declaration, with no default of its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import librosa
import numpy as np
import pytest

import melcli as melcli_lib
from melcli.cli import cli
from melcli.errors import ParameterError
from melcli.kinds import KINDS
from melcli.params import FeatureParams, declared
from tests.conftest import AudioFactory, assert_no_traceback

PLUGIN = Path(__file__).parent / "plugins" / "rolloff_kind.py"


def _plugin(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PLUGIN), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_a_new_kind_is_one_module_and_one_line(audio: AudioFactory, tmp_path: Path) -> None:
    audio.mix("a.wav", sr=16000, seconds=1.0)
    audio.sweep("sub/b.flac", sr=22050, seconds=0.6)
    out = tmp_path / "roll.h5"
    help_text = _plugin("rolloff", "--help", cwd=tmp_path)
    assert help_text.returncode == 0
    assert "Rolloff options:" in help_text.stdout and "--roll-percent" in help_text.stdout
    bad = _plugin("rolloff", audio.root, "-o", out, "--roll-percent", "1.5", cwd=tmp_path)
    assert bad.returncode == 2 and "--roll-percent" in bad.stderr
    assert_no_traceback(bad.stderr)
    run = _plugin("rolloff", audio.root, "-o", out, "--n-fft", "512", "--hop-length", "128",
                  "--power", "1", "--roll-percent", "0.5", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    shown = _plugin("inspect", out, cwd=tmp_path)
    assert shown.returncode == 0 and "melcli rolloff output" in shown.stdout, shown.stderr

    sys.path.insert(0, str(PLUGIN.parent))
    try:
        import rolloff_kind  # noqa: F401  (registers the kind in this process too)

        with melcli_lib.open(out) as feats:
            assert feats.params["roll_percent"] == 0.5
            assert feats.stats["count"] == sum(feats[k].shape[-1] for k in feats)
            for key in ("a.wav", "sub/b.flac"):
                y, sr = librosa.load(audio.root / key, sr=None)
                ref = librosa.feature.spectral_rolloff(
                    y=y, sr=sr, n_fft=512, hop_length=128, roll_percent=0.5, pad_mode="constant"
                )
                got = feats[key]
                assert got.shape == ref.shape == (1, feats.entry(key)["shape"][-1])
                # a frame whose cumulative sum lands exactly on the threshold may pick
                # the neighbouring bin (float32 sums in another order)
                same = np.isclose(got, ref, rtol=0, atol=1e-3)
                assert same.mean() > 0.97 and np.abs(got - ref).max() <= sr / 512 + 1e-3
    finally:
        sys.path.remove(str(PLUGIN.parent))
        KINDS.pop("rolloff", None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_feature_option_is_generated_from_its_declaration(kind: str) -> None:
    """One option per declared parameter, no Click default (so a given option can be
    told from a default: --like, presets), and no feature option that is not declared."""
    command = cli.commands[kind]
    options = {p.name: p for p in command.get_params(click.Context(command))}
    names = [d.name for d in declared(KINDS[kind])]
    assert set(names) <= set(options)
    for name in names:
        assert options[name].default is None, name
    # the run's own options are not parameters of the features
    assert not {"jobs", "backend", "output"} & set(KINDS[kind].field_names())


def test_parameter_errors_name_their_parameter() -> None:
    with pytest.raises(ParameterError) as exc:
        FeatureParams(kind="mel", n_fft=0)
    assert exc.value.param == "n_fft" and str(exc.value) == "n_fft=0 must be a positive integer"
    with pytest.raises(ParameterError) as exc:
        FeatureParams(kind="stft", n_mels=64)
    assert exc.value.param == "n_mels"
    with pytest.raises(ParameterError) as exc:
        FeatureParams(kind="nosuchkind")
    assert exc.value.param == "kind"


def test_kinds_carry_only_their_own_parameters() -> None:
    mel, stft = FeatureParams(kind="mel"), FeatureParams(kind="stft")
    assert "complex" not in mel.to_dict() and "n_mels" not in stft.to_dict()
    assert type(mel) is KINDS["mel"] and mel == FeatureParams.from_dict(mel.to_dict())
    # what melcli < 0.3 recorded for mel outputs is still read
    assert FeatureParams.from_dict({**mel.to_dict(), "complex": False}) == mel
    with pytest.raises(ParameterError):
        FeatureParams.from_dict({**mel.to_dict(), "complex": True})
