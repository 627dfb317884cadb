"""Pictures (issue 11): ``melcli inspect OUTPUT --plot`` and ``inspect AUDIO --plot``.

Each picture is rendered from real files (sample_audio/ and generated tones) and read
back: its pixel size, not blank, a colour bar, and a 1 kHz tone drawn at the height the
frequency axis labels 1 kHz (the brightest row of pixels inside the panel against the
pixel of the "1k" tick), for a linear (stft), a mel (mel) and a Kaldi mel (fbank) axis.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from melcli import plot
from melcli.kinds import KINDS
from melcli.params import FeatureParams
from tests.conftest import SAMPLE_AUDIO, AudioFactory, Invoke, RunMelcli, assert_no_traceback


def _pixels(fig: Figure) -> np.ndarray:
    """The figure as saved (PNG), decoded: (height, width, channels) floats in [0, 1]."""
    return matplotlib.image.imread(io.BytesIO(plot.png_bytes(fig)), format="png")


def _panels(fig: Figure) -> list[Any]:
    """The spectrogram axes (those with an image and a colour bar beside them)."""
    return [ax for ax in fig.axes if ax.images and not hasattr(ax, "_colorbar")]


def _colour_bars(fig: Figure) -> list[Any]:
    return [ax for ax in fig.axes if hasattr(ax, "_colorbar")]


def _box(fig: Figure, ax: Any, height: int) -> tuple[int, int, int, int]:
    """Rows and columns of pixels inside ``ax`` (top, bottom, left, right), a pixel in."""
    b = ax.get_window_extent()
    return (height - int(b.y1) + 2, height - int(b.y0) - 2, int(b.x0) + 2, int(b.x1) - 2)


def _assert_drawn(fig: Figure, pixels: np.ndarray, panels: int) -> None:
    """Expected size, not blank, each panel with a colour bar that has a colour scale."""
    w, h = fig.get_size_inches() * plot.DPI
    assert pixels.shape[:2] == (round(h), round(w))
    assert pixels[..., :3].std() > 0.05  # not blank
    assert len(_panels(fig)) == panels and len(_colour_bars(fig)) == panels
    for bar in _colour_bars(fig):
        top, bottom, left, right = _box(fig, bar, pixels.shape[0])
        column = pixels[top:bottom, (left + right) // 2, :3]
        assert len(np.unique(column.round(2), axis=0)) > 20  # a ramp of colours
        assert bar.get_ylabel()


def _tick_pixel(fig: Figure, ax: Any, label: str, height: int) -> float:
    """The pixel row the axis labels ``label`` (a tick so labelled; on a linear axis, else
    between the two labelled ticks around it, in proportion)."""
    labels = [t.get_text() for t in ax.get_yticklabels()]
    hz = [float(t[:-1]) * 1000 if t.endswith("k") else float(t) for t in labels]
    want = float(label[:-1]) * 1000 if label.endswith("k") else float(label)
    if label in labels or ax.get_ylabel() != "Hz":
        y = ax.get_yticks()[labels.index(label)]
    else:  # linear: equal steps in Hz are equal steps on the axis
        steps = np.diff(hz) / np.diff(ax.get_yticks())
        assert np.allclose(steps, steps[0]), labels
        y = float(np.interp(want, hz, ax.get_yticks()))
    return height - ax.transData.transform((ax.get_xlim()[0], y))[1]


def _brightest_row(pixels: np.ndarray, fig: Figure, ax: Any) -> int:
    top, bottom, left, right = _box(fig, ax, pixels.shape[0])
    luminance = pixels[top:bottom, left:right, :3].mean(axis=(1, 2))
    return top + int(np.argmax(luminance))


def _row_height(fig: Figure, ax: Any, rows: int) -> float:
    return ax.get_window_extent().height / rows


KIND_OPTIONS = {
    "stft": ["--n-fft", "512", "--hop-length", "128"],
    "mel": ["--n-fft", "1024", "--n-mels", "64"],
    "fbank": ["--num-mel-bins", "40"],
}


@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
def test_a_1khz_tone_is_drawn_where_the_axis_says_1khz(
    kind: str, audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    audio.tone("tone.wav", freq=1000.0, sr=16000, seconds=1.0)
    assert invoke(kind, "in", "-o", "o.h5", "-q", *KIND_OPTIONS[kind]).exit_code == 0
    result = invoke("inspect", "o.h5", "--plot", "o.png")
    assert result.exit_code == 0 and result.stdout == "o.png\n"
    fig = plot.plot_output(tmp_path / "o.h5")
    pixels = _pixels(fig)
    assert np.array_equal(pixels, matplotlib.image.imread(tmp_path / "o.png"))
    _assert_drawn(fig, pixels, panels=1)
    (ax,) = _panels(fig)
    rows = ax.images[0].get_array().shape[0]
    tick = _tick_pixel(fig, ax, "1k", pixels.shape[0])
    assert abs(_brightest_row(pixels, fig, ax) - tick) <= max(3.0, 1.5 * _row_height(fig, ax, rows))
    assert ax.get_ylabel() == "Hz" and ax.get_xlabel() == "Time (s)"
    assert ax.get_xlim() == pytest.approx((0.0, 1.0), abs=0.04)  # seconds
    assert "tone.wav" in ax.get_title("left") and "16000 Hz" in ax.get_title("left")
    assert f"melcli {kind}:" in fig.get_suptitle()


def test_the_mel_axis_is_mel_spaced_and_the_stft_axis_linear(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    """The labelled ticks' heights: proportional to Hz on stft's axis, to mel on mel's."""
    import librosa

    audio.tone("tone.wav", sr=16000)
    for kind in ("stft", "mel"):
        assert invoke(kind, "in", "-o", f"{kind}.h5", "-q").exit_code == 0
        (ax,) = _panels(plot.plot_output(tmp_path / f"{kind}.h5"))
        labels = [t.get_text() for t in ax.get_yticklabels()]
        hz = np.array([float(t[:-1]) * 1000 if t.endswith("k") else float(t) for t in labels])
        pos = np.asarray(ax.get_yticks())
        assert len(labels) >= 4
        mel = librosa.hz_to_mel(hz)
        linear_in = {"Hz": np.polyfit(hz, pos, 1, full=True)[1],
                     "mel": np.polyfit(mel, pos, 1, full=True)[1]}  # fmt: skip
        fits = {name: float(r[0]) if len(r) else 0.0 for name, r in linear_in.items()}
        if kind == "stft":
            assert fits["Hz"] < 1e-6 < fits["mel"]
        else:
            assert fits["mel"] < 0.05 < fits["Hz"]


@pytest.mark.parametrize(
    ("options", "factor"), [((), 10.0), (("--power", "1"), 20.0)]
)  # fmt: skip
def test_linear_values_are_shown_in_db_with_the_factor_of_their_power(
    options: tuple[str, ...], factor: float, audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    import melcli

    audio.tone("tone.wav", sr=16000)
    assert invoke("mel", "in", "-o", "o.h5", "-q", *options).exit_code == 0
    fig = plot.plot_output(tmp_path / "o.h5")
    (ax,) = _panels(fig)
    (bar,) = _colour_bars(fig)
    with melcli.open(tmp_path / "o.h5") as feats:
        peak = float(feats["tone.wav"].max())
    vmin, vmax = ax.images[0].get_clim()
    assert vmax == pytest.approx(factor * math.log10(peak))
    assert vmax - vmin == pytest.approx(80.0)  # the lecture figures' 80 dB
    assert bar.get_ylabel() == "dB"


@pytest.mark.parametrize(
    ("kind", "options", "unit"),
    [("mel", ("--scale", "db"), "dB"), ("mel", ("--scale", "log"), "ln"),
     ("mel", ("--scale", "whisper", "--sr", "16000", "--top-db", "80"), "Whisper log-mel"),
     ("fbank", (), "ln"), ("mfcc", (), "MFCC")],
)  # fmt: skip
def test_logarithmic_entries_are_shown_as_stored_with_their_unit(
    kind: str, options: tuple[str, ...], unit: str, audio: AudioFactory, invoke: Invoke,
    tmp_path: Path,
) -> None:  # fmt: skip
    import melcli

    audio.mix("a.wav", sr=16000)
    assert invoke(kind, "in", "-o", "o.h5", "-q", *options).exit_code == 0
    fig = plot.plot_output(tmp_path / "o.h5")
    (ax,) = _panels(fig)
    (bar,) = _colour_bars(fig)
    assert bar.get_ylabel() == unit
    with melcli.open(tmp_path / "o.h5") as feats:
        stored = feats["a.wav"]
    drawn = np.asarray(ax.images[0].get_array())
    rows = stored.shape[0]
    assert np.allclose(drawn, stored[:rows], equal_nan=True)  # no conversion
    if kind == "mfcc":
        assert ax.get_ylabel() == "coefficient"
        assert all(float(t.get_text()).is_integer() for t in ax.get_yticklabels())


def test_deltas_are_not_drawn_on_the_frequency_axis(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    audio.tone("a.wav", sr=16000)
    assert invoke("fbank", "in", "-o", "o.h5", "-q", "--deltas", "2").exit_code == 0
    (ax,) = _panels(plot.plot_output(tmp_path / "o.h5"))
    assert ax.images[0].get_array().shape[0] == 23  # the static bins only


def test_multichannel_entries_get_one_row_per_channel(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    audio.tone("stereo.wav", sr=16000, channels=2)
    audio.tone("mono.wav", sr=16000)
    assert invoke("mel", "in", "-o", "o.h5", "-q", "--keep-channels").exit_code == 0
    fig = plot.plot_output(tmp_path / "o.h5")
    _assert_drawn(fig, _pixels(fig), panels=3)
    titles = [ax.get_title("left") for ax in _panels(fig)]
    assert [t.split("  (")[0] for t in titles] == [
        "mono.wav", "stereo.wav  channel 1/2", "stereo.wav  channel 2/2"
    ]  # fmt: skip
    _, first, second = _panels(fig)  # the channels of one entry, one above the other
    assert first.get_position().y0 > second.get_position().y1 - 1e-6
    assert first.get_position().x0 == pytest.approx(second.get_position().x0)


def test_a_grid_of_the_first_entries_up_to_max(invoke: Invoke, tmp_path: Path) -> None:
    shutil.copytree(SAMPLE_AUDIO, tmp_path / "in", ignore=shutil.ignore_patterns("*.md"))
    assert invoke("mel", "in", "-o", "o.h5", "-q", "--sr", "16000").exit_code == 0
    keys = json.loads(invoke("inspect", "o.h5", "--json").stdout)["entries"]
    fig = plot.plot_output(tmp_path / "o.h5", most=4)
    titles = [ax.get_title("left").split("  (")[0] for ax in _panels(fig)]
    assert titles == [e["key"] for e in keys][:4]
    _assert_drawn(fig, _pixels(fig), panels=4)
    assert fig.get_size_inches()[0] == pytest.approx(2 * plot.PANEL_WIDTH)  # two columns
    fig = plot.plot_output(tmp_path / "o.h5", key="speech/numbers.flac")
    assert [ax.get_title("left").split("  (")[0] for ax in _panels(fig)] == ["speech/numbers.flac"]


def test_complex_stft_magnitude_and_phase(audio: AudioFactory, invoke: Invoke,
                                          tmp_path: Path) -> None:  # fmt: skip
    audio.tone("a.wav", freq=1000.0, sr=16000)
    assert invoke("stft", "in", "-o", "o.h5", "-q", "--complex", "--n-fft", "512").exit_code == 0
    magnitude = plot.plot_output(tmp_path / "o.h5")
    (bar,) = _colour_bars(magnitude)
    assert bar.get_ylabel() == "dB (|X|)"
    result = invoke("inspect", "o.h5", "--plot", "p.png", "--phase")
    assert result.exit_code == 0
    phase = plot.plot_output(tmp_path / "o.h5", phase=True)
    (ax,) = _panels(phase)
    (bar,) = _colour_bars(phase)
    assert bar.get_ylabel() == "phase (rad)"
    assert ax.images[0].get_clim() == pytest.approx((-math.pi, math.pi))
    assert "(phase)" in phase.get_suptitle()
    _assert_drawn(phase, _pixels(phase), panels=1)
    result = invoke("mel", "in", "-o", "m.h5", "-q")
    result = invoke("inspect", "m.h5", "--plot", "p.png", "--phase")
    assert result.exit_code == 2 and "--phase draws a complex STFT" in result.stderr


def test_audio_file_waveform_over_its_features_real_executable(
    melcli: RunMelcli, tmp_path: Path
) -> None:
    """The README's command: the lecture's figure of one file, computed as `melcli mel`."""
    hello = SAMPLE_AUDIO / "speech" / "hello.wav"
    proc = melcli("inspect", hello, "--plot", "hello.png", "--n-mels", "80", "--hop-length",
                  "256")  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "hello.png\n" and proc.stderr == ""
    params = KINDS["mel"](kind="mel", n_mels=80, hop_length=256)
    fig = plot.plot_audio(str(hello), params)
    pixels = matplotlib.image.imread(tmp_path / "hello.png")
    assert np.array_equal(pixels, _pixels(fig))
    _assert_drawn(fig, pixels, panels=1)
    wave = fig.axes[0]
    assert wave.get_ylabel() == "Amplitude" and wave.get_xlabel() == "Time (s)"
    (ax,) = _panels(fig)
    import soundfile

    duration = soundfile.info(hello).duration
    assert wave.get_xlim() == pytest.approx((0, duration)) and ax.get_xlim() == wave.get_xlim()
    assert ax.images[0].get_array().shape[0] == 80
    assert "n_mels=80" in ax.get_title("left") and "hop_length=256" in ax.get_title("left")


@pytest.mark.parametrize("kind", ["stft", "mel", "fbank", "mfcc"])
def test_audio_plot_features_are_what_the_extract_command_stores(
    kind: str, audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    import melcli

    audio.tone("a.wav", freq=1000.0, sr=16000, seconds=0.6)
    options = KIND_OPTIONS.get(kind, [])
    assert invoke(kind, "in", "-o", "o.h5", "-q", *options).exit_code == 0
    result = invoke("inspect", "in/a.wav", "--plot", "a.png", "--kind", kind, *options)
    assert result.exit_code == 0, result.stderr
    with melcli.open(tmp_path / "o.h5") as feats:
        params = FeatureParams.from_dict(feats.params)
        stored = feats["a.wav"]
    fig = plot.plot_audio(str(tmp_path / "in" / "a.wav"), params)
    (ax,) = _panels(fig)
    expected, _, _ = plot.display_values(stored, params.display())
    rows = ax.images[0].get_array().shape[0]
    assert np.allclose(ax.images[0].get_array(), expected[:rows])
    if kind != "mfcc":
        pixels = _pixels(fig)
        tick = _tick_pixel(fig, ax, "1k", pixels.shape[0])
        assert abs(_brightest_row(pixels, fig, ax) - tick) <= max(3.0, 1.5 * _row_height(
            fig, ax, rows))  # fmt: skip


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_the_same_input_gives_the_same_bytes(
    suffix: str, audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    audio.mix("a.wav", sr=16000)
    assert invoke("mel", "in", "-o", "o.h5", "-q").exit_code == 0
    for name in ("one", "two"):
        assert invoke("inspect", "o.h5", "--plot", name + suffix).exit_code == 0
        assert invoke("inspect", "in/a.wav", "--plot", "wave-" + name + suffix).exit_code == 0
    assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()
    wave = (tmp_path / f"wave-one{suffix}").read_bytes()
    assert wave == (tmp_path / f"wave-two{suffix}").read_bytes()
    if suffix == ".png":
        assert b"tEXt" not in wave and b"tIME" not in wave  # no software, no date


# -- bad input: one line, exit 2 (usage) or 1 (nothing to draw) -----------------------
@pytest.fixture
def output(audio: AudioFactory, melcli: RunMelcli) -> str:
    audio.tone("spk/a.wav", sr=16000)
    assert melcli("mel", "in", "-o", "o.h5", "-q").returncode == 0
    return "o.h5"


def _one_error(proc: Any, code: int, text: str) -> None:
    assert proc.returncode == code and proc.stdout == ""
    assert_no_traceback(proc.stderr)
    last = proc.stderr.splitlines()[-1]
    assert text in last, proc.stderr
    if code == 1:
        assert proc.stderr.count("\n") == 1


def test_plot_into_a_missing_directory_is_a_usage_error(
    output: str, melcli: RunMelcli, tmp_path: Path
) -> None:
    proc = melcli("inspect", output, "--plot", "missing/o.png")
    _one_error(proc, 2, f"the directory {tmp_path / 'missing'} does not exist")
    proc = melcli("inspect", "in/spk/a.wav", "--plot", "missing/o.png")
    _one_error(proc, 2, "does not exist")
    _one_error(melcli("inspect", output, "--plot", "o.jpg"), 2, "written as .png, .svg, .pdf")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "o.jpg").exists()


def test_an_unknown_key_names_the_nearest(output: str, melcli: RunMelcli, tmp_path: Path) -> None:
    proc = melcli("inspect", output, "--plot", "o.png", "--key", "spk/b.wav")
    _one_error(proc, 1, "no entry 'spk/b.wav' in o.h5; did you mean: spk/a.wav?")
    proc = melcli("inspect", output, "--plot", "o.png", "--key", "spk")
    _one_error(proc, 1, "'spk' in o.h5 is a folder of 1 entries, not an entry")
    assert not (tmp_path / "o.png").exists()


def test_an_output_with_no_entries_has_nothing_to_draw(
    output: str, melcli: RunMelcli, tmp_path: Path
) -> None:
    assert melcli("mel", "in", "-o", "e", "-q").returncode == 0
    man = json.loads((tmp_path / "e" / "manifest.json").read_text())
    man["entries"], man["stats"] = [], None
    man["totals"].update(entries=0, duration=0.0, samples=0)
    (tmp_path / "e" / "manifest.json").write_text(json.dumps(man))
    (tmp_path / "e" / "spk" / "a.wav.npy").unlink()
    _one_error(melcli("inspect", "e", "--plot", "e.png"), 1, "nothing to draw: e has no entries")
    assert not (tmp_path / "e.png").exists()


def test_a_file_that_is_not_melcli_s_is_one_line(melcli: RunMelcli, tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2, 3]
    _one_error(melcli("inspect", "other.h5", "--plot", "o.png"), 1,
               "other.h5 is not a melcli output: no /manifest")  # fmt: skip
    (tmp_path / "notes.txt").write_text("not audio, not an output")
    _one_error(melcli("inspect", "notes.txt", "--plot", "o.png"), 1,
               "notes.txt is neither a melcli output nor audio melcli can draw")  # fmt: skip
    assert not (tmp_path / "o.png").exists()


def test_plot_options_without_plot_and_with_text_output_are_usage_errors(
    output: str, invoke: Invoke
) -> None:
    for args, text in (
        (("--max", "3"), "--max applies to --plot"),
        (("--phase",), "--phase applies to --plot"),
        (("--plot", "o.png", "--json"), "--plot draws a picture; --json prints text"),
        (("--plot", "o.png", "--keys"), "--plot draws a picture; --keys prints text"),
    ):
        result = invoke("inspect", output, *args)
        assert result.exit_code == 2 and text in result.stderr
    result = invoke("inspect", "in", "--plot", "d.png")
    assert result.exit_code == 2 and "--plot draws one audio file; in is a directory" in (
        result.stderr
    )


def test_an_unwritable_picture_is_one_line(output: str, melcli: RunMelcli, tmp_path: Path) -> None:
    (tmp_path / "o.png").mkdir()
    _one_error(melcli("inspect", output, "--plot", "o.png"), 2, "File 'o.png' is a directory")
    # /proc takes no new files, not even root's
    _one_error(melcli("inspect", output, "--plot", "/proc/melcli.png"), 1,
               "cannot write /proc/melcli.png")  # fmt: skip
