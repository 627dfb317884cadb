"""Presets: the parameters that make melcli's features equal another front end's.

A preset names a reference implementation and sets every parameter of one kind
that matters for it, explicitly (defaults included), so the manifest records
the resolved values and a preset never depends on melcli's own defaults.
Options given on the command line override a preset (each override is said on
stderr). ``melcli presets`` lists them; docs/presets.md has every difference
from each reference that we found and how it is handled. Each preset is tested
against its reference's own output (tests/test_presets.py, golden files made by
tests/reference/make_golden.py). No numerical library is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from melcli.errors import ParameterError


@dataclass(frozen=True)
class Preset:
    """One preset of one feature kind.

    Attributes
    ----------
    kind : str
        The command it applies to (``mel``, ``mfcc``, ...).
    name : str
    reference : str
        The call whose output it reproduces.
    values : dict
        Parameter name -> value; applied before the command line's options.
    note : str
        What to know (the rates it is exact at, what it cannot reproduce).
    """

    kind: str
    name: str
    reference: str
    values: dict[str, Any]
    note: str = ""


_TORCHAUDIO_MEL: dict[str, Any] = {
    # the waveform as torchaudio.load gives it: native rate, every channel
    "sr": None, "mono": False,
    # torchaudio.transforms.Spectrogram defaults: n_fft 400, hop = win // 2, periodic
    # Hann, centred with reflect padding (no edge repeat), power 2
    "n_fft": 400, "win_length": 400, "hop_length": 200, "window": "hann", "center": True,
    "pad_mode": "reflect", "tail": "pad", "power": 2.0,
    # MelSpectrogram: 128 HTK mels over [0, sr // 2], triangles linear in Hz, no norm
    "n_mels": 128, "fmin": 0.0, "fmax": None, "mel_scale": "htk", "norm": "none",
    "amin": 1e-10, "normalize": "none", "dtype": "float32",
}  # fmt: skip

_TORCHAUDIO_NOTE = (
    "Every channel is kept, as torchaudio computes per channel (--mono for the mean). "
    "Exact at even sample rates. torchaudio builds its filters over linspace(0, sr // 2) "
    "and up to sr // 2; at an odd rate (11025 Hz) those are half a hertz off librosa's "
    "rfftfreq grid, which melcli uses. Pass each file's rate as torchaudio's sample_rate "
    "(melcli does, per file). With n_fft 400, 4 of the 128 filters are empty at 16 kHz "
    "(torchaudio warns too)."
)

_WHISPER: dict[str, Any] = {
    # whisper/audio.py: 16 kHz mono (load_audio resamples with ffmpeg), N_FFT 400,
    # HOP_LENGTH 160, torch.hann_window (periodic), torch.stft centred with reflect padding
    "sr": 16000, "mono": True, "n_fft": 400, "win_length": 400, "hop_length": 160,
    "window": "hann", "center": True, "pad_mode": "reflect",
    # transcribe pads 30 s of zeros and keeps N // 160 frames; the max - 8 clip sees
    # every frame that touches the audio
    "tail": "zeros", "power": 2.0,
    # librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (large-v3: 128), bit-identical
    "n_mels": 80, "fmin": 0.0, "fmax": None, "mel_scale": "slaney", "norm": "slaney",
    # log10(clamp(mel, 1e-10)), max(x, x.max() - 8), (x + 4) / 4
    "scale": "whisper", "top_db": 8.0, "amin": 1e-10, "normalize": "none", "dtype": "float32",
}  # fmt: skip

_KALDI_FBANK: dict[str, Any] = {
    # Kaldi's compute-fbank-feats defaults (feature-window.h, mel-computations.h,
    # feature-fbank.h), except dither: 0 here (Kaldi's 1.0 is random noise)
    "sr": 16000, "mono": True, "num_mel_bins": 23, "frame_length": 25.0,
    "frame_shift": 10.0, "dither": 0.0, "preemphasis_coefficient": 0.97, "remove_dc_offset": True,
    "window_type": "povey", "snip_edges": True, "round_to_power_of_two": True,
    "low_freq": 20.0, "high_freq": 0.0, "use_log_fbank": True, "use_power": True,
    "use_energy": False, "energy_floor": 0.0, "raw_energy": True,
    "input_scale": 32768.0, "deltas": 0, "normalize": "none", "dtype": "float32",
}  # fmt: skip

#: compute-mfcc-feats: the fbank framing and bins, then 13 ceps, lifter 22, C0 = energy
_KALDI_MFCC: dict[str, Any] = {
    **{k: v for k, v in _KALDI_FBANK.items() if k != "use_log_fbank"},
    "frontend": "kaldi", "num_ceps": 13, "cepstral_lifter": 22.0, "use_energy": True,
}  # fmt: skip

#: Every preset, by (kind, name).
PRESETS: dict[tuple[str, str], Preset] = {
    (p.kind, p.name): p
    for p in (
        Preset(
            "mel", "torchaudio",
            "torchaudio.transforms.MelSpectrogram(sample_rate=sr)(torchaudio.load(path)[0])",
            {**_TORCHAUDIO_MEL, "scale": "linear", "top_db": None},
            _TORCHAUDIO_NOTE,
        ),
        Preset(
            "mfcc", "torchaudio",
            "torchaudio.transforms.MFCC(sample_rate=sr)(torchaudio.load(path)[0])",
            {**_TORCHAUDIO_MEL, "frontend": "librosa", "n_mfcc": 40, "dct_type": 2,
             "lifter": 0.0, "deltas": 0, "scale": "db", "top_db": 80.0, "amin": 1e-10},
            "MFCC's AmplitudeToDB('power', top_db=80) clips at the max over the whole "
            "(channels, mels, frames) tensor, as melcli over the whole entry. "
            + _TORCHAUDIO_NOTE,
        ),
        Preset(
            "mel", "whisper",
            "whisper.log_mel_spectrogram(audio, n_mels, padding=480000)[:, :N // 160], "
            "what whisper.transcribe feeds the model",
            _WHISPER,
            "80 mels; --n-mels 128 for large-v3. Files at other rates are resampled to 16 kHz "
            "with soxr (librosa's resampler); Whisper's own load_audio resamples with ffmpeg, "
            "so for those files the features differ by the resampler. Exact for 16 kHz input.",
        ),
        Preset(
            "fbank", "kaldi",
            "Kaldi compute-fbank-feats --dither=0 (kaldi_native_fbank.OnlineFbank with dither 0)",
            _KALDI_FBANK,
            "Kaldi's defaults but dither 0. Kaldi refuses files at another rate than "
            "--sample-frequency; melcli resamples them to --sr (16000) with soxr. Kaldi "
            "computes in float32: in bins 20+ nats below the frame's peak the two differ by "
            "up to 5e-3 (median 2e-6).",
        ),
        Preset(
            "fbank", "lhotse",
            "lhotse.Fbank().extract(samples, 16000) (FbankConfig defaults)",
            {**_KALDI_FBANK, "num_mel_bins": 80, "snip_edges": False, "high_freq": -400.0,
             "input_scale": 1.0, "energy_floor": 1e-10},
            "Kaldi's fbank with 80 bins, no snip edges, high_freq -400 and samples in "
            "[-1, 1] (no int16 scaling); lhotse's energy floor (1e-10) applies only to "
            "the energy, which is off (as in lhotse).",
        ),
        Preset(
            "mfcc", "kaldi",
            "Kaldi compute-mfcc-feats --dither=0 (kaldi_native_fbank.OnlineMfcc with dither 0)",
            _KALDI_MFCC,
            "mfcc --frontend kaldi: Kaldi's fbank framing and options (as fbank --preset "
            "kaldi), then the orthonormal DCT-II of the 23 log bins, 13 coefficients, lifter "
            "22 (1 + 11 sin(pi i / 22), i from 0), C0 = the frame's log energy before "
            "pre-emphasis and window. Kaldi computes in float32: the coefficients differ by "
            "up to 5e-3 (median 2e-5).",
        ),
    )
}  # fmt: skip


def names(kind: str) -> list[str]:
    """The presets of kind ``kind``, sorted."""
    return sorted(name for k, name in PRESETS if k == kind)


def get(kind: str, name: str) -> Preset:
    """The preset ``name`` of ``kind``.

    Raises
    ------
    ParameterError
        No such preset for this kind (the message lists those there are).
    """
    try:
        return PRESETS[kind, name]
    except KeyError:
        have = ", ".join(names(kind)) or "none"
        raise ParameterError(
            f"is not a preset of {kind} (its presets: {have}; melcli presets lists all)",
            param="preset", value=name,
        ) from None  # fmt: skip
