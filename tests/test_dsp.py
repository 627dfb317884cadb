"""melcli.dsp against the libraries it mirrors: scipy.signal windows, librosa's mel filters."""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
import scipy.signal

from melcli import dsp
from melcli.params import WINDOWS, parse_window

WINDOW_SPECS = ["rectangular", "hann", "hamming", "blackman", "bartlett", "gaussian:400",
                "gaussian:7.5", "kaiser:14", "kaiser:0.5", "flattop"]  # fmt: skip


def test_every_window_name_is_covered() -> None:
    assert {parse_window(s)[0] for s in WINDOW_SPECS} == set(WINDOWS.values())


@pytest.mark.parametrize("spec", WINDOW_SPECS)
@pytest.mark.parametrize("length", [1, 2, 3, 255, 400, 512, 2048])
def test_periodic_window_equals_scipy(spec: str, length: int) -> None:
    name, param = parse_window(spec)
    ref = scipy.signal.get_window(name if param is None else (name, param), length, fftbins=True)
    np.testing.assert_allclose(dsp.periodic_window(name, length, param), ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("n_fft", [256, 512, 2048])
@pytest.mark.parametrize("n_mels", [20, 80, 128, 256])
@pytest.mark.parametrize("htk", [False, True])
def test_mel_filterbank_equals_librosa(sr: int, n_fft: int, n_mels: int, htk: bool) -> None:
    for norm in ("slaney", None):
        for fmin, fmax in ((0.0, sr / 2), (20.0, 0.45 * sr), (300.0, 3000.0)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ref = librosa.filters.mel(
                    sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm
                )
            mine, empty = dsp.mel_filterbank(
                sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm
            )
            assert mine.dtype == ref.dtype == np.float32
            np.testing.assert_array_equal(mine, ref)
            assert empty == any("Empty filters" in str(w.message) for w in caught)
            np.testing.assert_allclose(
                dsp.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, htk=htk),
                librosa.mel_frequencies(n_mels=n_mels + 2, fmin=fmin, fmax=fmax, htk=htk),
                rtol=1e-13,
            )


def test_mel_scale_round_trip_and_lecture_formula() -> None:
    hz = np.array([0.0, 100.0, 700.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(dsp.hz_to_mel(hz, htk=True), 2595 * np.log10(1 + hz / 700))
    for htk in (False, True):
        np.testing.assert_allclose(
            dsp.mel_to_hz(dsp.hz_to_mel(hz, htk=htk), htk=htk), hz, atol=1e-9
        )
        np.testing.assert_allclose(dsp.hz_to_mel(hz, htk=htk), librosa.hz_to_mel(hz, htk=htk))
