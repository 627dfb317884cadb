"""--normalize mean|meanvar (issue 10): per-entry CMVN over frames, the last step, for every
kind; long files (streamed when resampled) give the whole file's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest

import melcli as melcli_lib
from tests.conftest import RunMelcli, assert_no_traceback

SAMPLES = Path(__file__).parents[1] / "sample_audio"


@pytest.mark.parametrize("how", ["mean", "meanvar"])
def test_log_mel_cmvn_equals_numpy_over_librosa(
    melcli: RunMelcli, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "n.h5"
    proc = melcli("mel", SAMPLES / "speech", "-o", out, "--scale", "log", "--normalize", how,
                  "--sr", "16000", "--keep-channels")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with melcli_lib.open(out) as feats:
        assert feats.params["normalize"] == how
        for key in feats:
            y, sr = librosa.load(SAMPLES / "speech" / key, sr=16000, mono=False)
            logmel = np.log(np.maximum(librosa.feature.melspectrogram(y=y, sr=sr), 1e-10))
            want = logmel - logmel.mean(axis=-1, keepdims=True)
            if how == "meanvar":
                want /= logmel.std(axis=-1, keepdims=True)
            got = feats[key]  # (channels, mels, frames): --keep-channels
            assert got.size == want.size and got.shape[-2:] == want.shape[-2:]
            np.testing.assert_allclose(got, want.reshape(got.shape), rtol=0, atol=2e-4)
        stats = feats.stats
        assert stats is not None and np.abs(stats["mean"]).max() < 1e-5  # every entry centred


def test_normalize_is_refused_with_complex(melcli: RunMelcli, tmp_path: Path) -> None:
    proc = melcli("stft", SAMPLES / "speech", "-o", tmp_path / "c.h5", "--complex",
                  "--normalize", "mean")  # fmt: skip
    assert proc.returncode == 2 and "--complex" in proc.stderr
    assert_no_traceback(proc.stderr)


def test_mfcc_with_deltas_normalised_last(melcli: RunMelcli, tmp_path: Path) -> None:
    out = tmp_path / "m.h5"
    proc = melcli("mfcc", SAMPLES / "speech", "-o", out, "--deltas", "2", "--normalize",
                  "meanvar")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    params = json.loads((tmp_path / "m.json").read_text())["params"]
    assert params["normalize"] == "meanvar"
    with melcli_lib.open(out) as feats:
        for key in feats:
            x = feats[key].astype(np.float64)
            np.testing.assert_allclose(x.mean(axis=-1), 0, atol=1e-5)
            np.testing.assert_allclose(x.std(axis=-1), 1, atol=1e-4)
