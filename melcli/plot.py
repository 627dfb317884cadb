"""Pictures of features: spectrogram panels like the lecture's figures, and thumbnails.

A panel shows one channel of one entry as ``librosa.display.specshow`` figures do:
time in seconds across (frame centres from the kind's own framing), the rows up
(Hz on a linear axis for FFT bins, Hz labels on a mel-spaced axis for mel bands
and Kaldi bins, coefficient numbers for MFCCs), a colour bar in the unit the
kind's `melcli.params.Display` names (linear power or magnitude in dB with the
factor of its power, logarithmic entries as stored). The kind decides how its
entries are drawn (`FeatureParams.display`, `row_frequencies`, `frame_bounds`),
so a new kind is drawn without a change here.

Drawing functions take arrays and return a `matplotlib.figure.Figure` (no pyplot,
no global state: Agg, fixed DPI); `save` writes it without timestamps, so the
same input gives the same bytes. matplotlib is imported only inside the functions
that draw: ``melcli --help`` and ``melcli inspect`` without ``--plot`` never load it.
`plot_output` and `plot_audio` read an output or decode an audio file (with the
extract commands' own code) and save the picture.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from melcli.errors import OutputError, ParameterError
from melcli.params import Display, FeatureParams

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

    from melcli.reader import Features

#: Dots per inch of every picture (a fixed size in pixels for a given layout).
DPI = 100
#: One panel (one channel of one entry), inches: a lecture figure's proportions.
PANEL_WIDTH, PANEL_HEIGHT = 6.4, 2.4
#: The waveform above an audio file's spectrogram, inches.
WAVE_HEIGHT = 1.6
#: Colour maps: levels (dB, log), values of both signs (cepstra), phase (cyclic).
CMAP, DIVERGING_CMAP, PHASE_CMAP = "magma", "coolwarm", "twilight"
#: What `save` writes, by suffix, and the metadata it removes (dates, versions), so the
#: same picture is the same bytes.
FORMATS: dict[str, dict[str, Any]] = {
    ".png": {"Software": None},
    ".svg": {"Date": None, "Creator": None},
    ".pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
}
#: Hz labels tried on a mel-spaced axis, the most telling first.
MEL_TICKS = (1000, 2000, 4000, 8000, 16000, 500, 250, 0, 32000, 64000, 100)
#: The smallest gap between two labels of the rows' axis, as a fraction of its rows.
TICK_GAP = 0.06
#: Frames read for a thumbnail at most (longer entries are read every k-th frame).
THUMB_FRAMES = 2048


@dataclass(frozen=True)
class Entry:
    """One entry to draw.

    Attributes
    ----------
    key : str
    data : np.ndarray
        (rows, frames), or (channels, rows, frames) for multichannel entries, as stored.
    sample_rate : int
        The rate the entry was computed at.
    duration : float
        Seconds of audio.
    """

    key: str
    data: np.ndarray
    sample_rate: int
    duration: float

    @property
    def channels(self) -> np.ndarray:
        """The data as (channels, rows, frames)."""
        return self.data if self.data.ndim == 3 else self.data[None]


def check_destination(path: str | os.PathLike[str]) -> Path:
    """The picture's path, checked before any work: a known suffix, an existing directory.

    Raises
    ------
    ParameterError
        Another suffix, or a directory that does not exist (a usage error).
    """
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ParameterError(
            f"--plot {out}: a picture is written as {', '.join(FORMATS)} (by the suffix)"
        )
    parent = out.absolute().parent
    if not parent.is_dir():
        raise ParameterError(f"--plot {out}: the directory {parent} does not exist")
    if out.is_dir():
        raise ParameterError(f"--plot {out} is a directory: name a file, e.g. {out / 'a.png'}")
    return out


def save(fig: Figure, path: str | os.PathLike[str] | io.BytesIO, fmt: str = ".png") -> None:
    """Write ``fig`` at `DPI` without dates or version strings (same figure, same bytes).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : path or BytesIO
        A file name (its suffix, one of `FORMATS`, gives the format) or a buffer.
    fmt : str
        The format of a buffer.

    Raises
    ------
    OutputError
        The file cannot be written.
    """
    import matplotlib

    suffix = fmt if isinstance(path, io.BytesIO) else Path(path).suffix.lower()
    try:
        with matplotlib.rc_context({"svg.hashsalt": "melcli", "pdf.compression": 6}):
            fig.savefig(path, format=suffix[1:], dpi=DPI, metadata=FORMATS[suffix])
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (see `save`)."""
    buf = io.BytesIO()
    save(fig, buf, ".png")
    return buf.getvalue()


# -- values and axes -------------------------------------------------------------------
def display_values(
    data: np.ndarray, display: Display, *, phase: bool = False
) -> tuple[np.ndarray, float, float]:
    """The values as drawn and their colour limits.

    Parameters
    ----------
    data : np.ndarray
        Stored values (complex: the STFT).
    display : Display
        The kind's (`FeatureParams.display`).
    phase : bool
        Draw the phase of complex values (radians) instead of their magnitude.

    Returns
    -------
    values : np.ndarray, float64
    vmin, vmax : float
        ``display.span`` below the maximum (80 dB), or the whole range; centred on 0
        when ``display.diverging``; [-pi, pi] for phase.
    """
    if phase:
        return np.angle(data).astype(np.float64), -math.pi, math.pi
    x = np.abs(data) if np.iscomplexobj(data) else data
    x = np.asarray(x, dtype=np.float64)
    if display.db_factor is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            x = display.db_factor * np.log10(np.maximum(x, 1e-30))
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return x, 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if display.span is not None:
        lo = max(lo, hi - display.span)
    if display.diverging:  # a robust range: c0 of an MFCC would wash the others out
        hi = float(np.percentile(np.abs(finite), 98)) or max(abs(lo), abs(hi))
        lo = -hi
    if hi <= lo:  # a flat entry (silence): any colour, but a valid scale
        lo, hi = lo - 1.0, hi + 1.0
    return x, lo, hi


def row_position(freqs: Sequence[float] | np.ndarray, hz: Any) -> Any:
    """The fractional row at which frequency ``hz`` lies, given each row's frequency.

    Linear between rows (on a mel axis the rows are evenly spaced in mel: between two
    neighbouring bands Hz and mel are nearly proportional), and past the first and
    last rows with their neighbours' spacing.
    """
    f = np.asarray(freqs, dtype=np.float64)
    n = f.size
    if n < 2:
        return np.zeros_like(np.asarray(hz, dtype=np.float64))
    xs = np.concatenate([[2 * f[0] - f[1]], f, [2 * f[-1] - f[-2]]])
    return np.interp(hz, xs, np.arange(-1.0, n + 1.0))


def hz_label(hz: float) -> str:
    """``500``, ``1k``, ``2.5k``: a frequency as an axis label."""
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def row_ticks(freqs: np.ndarray, rows: str) -> tuple[list[float], list[str]]:
    """Positions (fractional rows) and labels of the rows' axis.

    Parameters
    ----------
    freqs : np.ndarray, shape (n,)
        Each row's frequency in Hz (`FeatureParams.row_frequencies`).
    rows : {'linear', 'mel', 'index'}
        `Display.rows`.
    """
    from matplotlib.ticker import MaxNLocator

    n = len(freqs)
    if rows == "index" or n < 2:
        ticks = MaxNLocator(nbins=6, integer=True).tick_values(0, max(n - 1, 0))
        rows_kept = [float(t) for t in ticks if 0 <= t <= n - 1]
        return rows_kept, [f"{t:g}" for t in rows_kept]
    # the image spans rows -0.5 .. n - 0.5: half a row's spacing past the end rows
    f_lo = max(freqs[0] - (freqs[1] - freqs[0]) / 2, 0.0)
    f_hi = freqs[-1] + (freqs[-1] - freqs[-2]) / 2
    if rows == "linear":
        locator = MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10])
        candidates = [float(t) for t in locator.tick_values(f_lo, f_hi)]
    else:
        candidates = [float(t) for t in MEL_TICKS]
    kept: list[tuple[float, float]] = []
    for hz in candidates:
        if hz < f_lo or hz > f_hi:
            continue
        pos = float(row_position(freqs, hz))
        if all(abs(pos - p) >= TICK_GAP * n for p, _ in kept):
            kept.append((pos, hz))
    kept.sort()
    return [p for p, _ in kept], [hz_label(hz) for _, hz in kept]


def frame_times(params: FeatureParams, n_frames: int, sr: int) -> np.ndarray:
    """Each frame's centre in seconds, from the kind's framing (`frame_bounds`):
    ``t * hop / sr`` for centred frames, ``(t * hop + win / 2) / sr`` for Kaldi's."""
    a, b = params.frame_bounds(0, 1)
    return (np.arange(n_frames) * params.hop_length + (a + b) / 2) / sr


def _time_extent(params: FeatureParams, n_frames: int, sr: int) -> tuple[float, float]:
    times = frame_times(params, max(n_frames, 1), sr)
    half = params.hop_length / sr / 2
    return float(times[0] - half), float(times[-1] + half)


def _static_rows(data: np.ndarray, display: Display) -> np.ndarray:
    """The first block of rows (deltas are stacked below it: not drawn)."""
    rows = data.shape[-2] // max(display.blocks, 1)
    return data[..., :rows, :]


# -- drawing ---------------------------------------------------------------------------
def draw_spectrogram(
    ax: Axes, cax: Axes | None, data: np.ndarray, params: FeatureParams, sr: int,
    *, title: str, phase: bool = False,
) -> AxesImage:  # fmt: skip
    """Draw one channel of an entry on ``ax`` (and its colour bar on ``cax``).

    Parameters
    ----------
    ax, cax : matplotlib Axes
        The panel and its colour bar's axes (None: no colour bar).
    data : np.ndarray, shape (rows, frames)
        As stored (complex for ``stft --complex``).
    params : FeatureParams
        The entry's parameters.
    sr : int
        The entry's rate.
    title : str
    phase : bool
        Complex entries: the phase instead of the magnitude.

    Returns
    -------
    matplotlib.image.AxesImage
        Rows are drawn at y = row index (0 at the bottom); the ticks label them in Hz.
    """
    display = params.display()
    data = _static_rows(data, display)
    values, vmin, vmax = display_values(data, display, phase=phase)
    n_rows, n_frames = values.shape
    t0, t1 = _time_extent(params, n_frames, sr)
    cmap = PHASE_CMAP if phase else DIVERGING_CMAP if display.diverging else CMAP
    image = ax.imshow(
        values if n_frames else np.full((n_rows, 1), np.nan),
        origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
        extent=(t0, t1, -0.5, n_rows - 0.5), interpolation="antialiased",
    )  # fmt: skip
    freqs = np.asarray(params.row_frequencies(sr), dtype=np.float64)[:n_rows]
    positions, labels = row_ticks(freqs, display.rows)
    ax.set_yticks(positions, labels)
    ax.set_ylabel(display.row_label)
    ax.set_xlabel("Time (s)")
    ax.set_title(title, fontsize=9, loc="left")
    if cax is not None:
        unit = "phase (rad)" if phase else display.unit
        fmt = "%+.0f dB" if unit.startswith("dB") and not phase else None
        bar = ax.figure.colorbar(image, cax=cax, format=fmt)
        bar.set_label(unit, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    ax.tick_params(labelsize=7)
    return image


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _entry_title(entry: Entry, channel: int, channels: int) -> str:
    where = f"  channel {channel + 1}/{channels}" if channels > 1 else ""
    return f"{entry.key}{where}  ({entry.sample_rate} Hz, {entry.duration:.2f} s)"


def entries_figure(
    entries: Sequence[Entry], params: FeatureParams, *, phase: bool = False
) -> Figure:
    """A grid of panels, one per entry (one row per channel), in order.

    Parameters
    ----------
    entries : sequence of Entry
        At least one.
    params : FeatureParams
        The output's parameters (its kind draws the entries).
    phase : bool
        Complex entries: the phase instead of the magnitude.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes`` holds each panel followed by its colour bar.
    """
    if not entries:
        raise ValueError("entries_figure needs at least one entry")
    columns = 1 if len(entries) <= 2 else 2
    grid_rows = [entries[i : i + columns] for i in range(0, len(entries), columns)]
    heights = [max(e.channels.shape[0] for e in row) for row in grid_rows]
    fig = _figure(columns * PANEL_WIDTH, sum(heights) * PANEL_HEIGHT + 0.4)
    outer = fig.add_gridspec(len(grid_rows), columns, height_ratios=heights)
    for r, row in enumerate(grid_rows):
        for c, entry in enumerate(row):
            chans = entry.channels
            cell = outer[r, c].subgridspec(heights[r], 2, width_ratios=[1, 0.025])
            for k, channel in enumerate(chans):
                ax, cax = fig.add_subplot(cell[k, 0]), fig.add_subplot(cell[k, 1])
                draw_spectrogram(ax, cax, channel, params, entry.sample_rate,
                                 title=_entry_title(entry, k, len(chans)),
                                 phase=phase)  # fmt: skip
    what = " (phase)" if phase else ""
    fig.suptitle(f"melcli {params.title()}{what}", fontsize=10)
    return fig


def _draw_waveform(ax: Axes, y: np.ndarray, sr: int) -> None:
    """Amplitude over seconds; a long signal as its min/max envelope (one pair per
    column of pixels or so), which looks the same and draws in milliseconds."""
    n = y.shape[-1]
    colours = ("#3b6ea8", "#c4573a", "#4c9a52", "#8a5fb0")
    for c, ch in enumerate(y):
        colour = colours[c % len(colours)]
        label = f"channel {c + 1}" if len(y) > 1 else None
        if n > 4000:
            edges = np.linspace(0, n, 2001).astype(np.int64)[:-1]
            t = (edges + n / 4000) / sr
            ax.fill_between(t, np.minimum.reduceat(ch, edges), np.maximum.reduceat(ch, edges),
                            color=colour, linewidth=0, alpha=0.8, label=label)  # fmt: skip
        else:
            ax.plot(np.arange(n) / sr, ch, color=colour, linewidth=0.7, label=label)
    ax.set_xlim(0, n / sr)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    ax.set_ylim(-max(peak, 1e-3) * 1.05, max(peak, 1e-3) * 1.05)
    ax.set_ylabel("Amplitude")
    ax.set_xlabel("Time (s)")
    ax.tick_params(labelsize=7)
    if len(y) > 1:
        ax.legend(fontsize=7, loc="upper right")


def audio_figure(
    y: np.ndarray, sr: int, features: np.ndarray, params: FeatureParams,
    *, name: str, phase: bool = False,
) -> Figure:  # fmt: skip
    """The lecture's figure of one file: its waveform on top, its features below.

    Parameters
    ----------
    y : np.ndarray, shape (channels, n_samples)
        The waveform at rate ``sr`` (as decoded for the features).
    sr : int
    features : np.ndarray
        What ``melcli KIND`` stores for it: (rows, frames) or (channels, rows, frames).
    params : FeatureParams
    name : str
        The file's name, in the title.
    phase : bool
        Complex STFT: the phase instead of the magnitude.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes``: the waveform, then each channel's panel and colour bar.
    """
    chans = features if features.ndim == 3 else features[None]
    fig = _figure(PANEL_WIDTH * 1.5, WAVE_HEIGHT + PANEL_HEIGHT * 1.25 * len(chans) + 0.4)
    heights = [WAVE_HEIGHT] + [PANEL_HEIGHT * 1.25] * len(chans)
    grid = fig.add_gridspec(1 + len(chans), 2, width_ratios=[1, 0.02], height_ratios=heights)
    wave = fig.add_subplot(grid[0, 0])
    _draw_waveform(wave, y, sr)
    duration = y.shape[-1] / sr
    wave.set_title(f"{name}  ({sr} Hz, {duration:.2f} s)", fontsize=9, loc="left")
    for k, channel in enumerate(chans):
        ax = fig.add_subplot(grid[1 + k, 0], sharex=wave)
        where = f"channel {k + 1}/{len(chans)}: " if len(chans) > 1 else ""
        draw_spectrogram(ax, fig.add_subplot(grid[1 + k, 1]), channel, params, sr,
                         title=f"{where}melcli {params.title()}"
                               + (" (phase)" if phase else ""), phase=phase)  # fmt: skip
    wave.set_xlim(0, duration)
    return fig


def stats_figure(
    stats: dict[str, Any], params: FeatureParams, sr: int, *, dark: bool = False
) -> Figure:
    """The dataset statistics: each row's mean and ± one standard deviation.

    Parameters
    ----------
    stats : dict
        ``{"count", "mean", "std"}`` (`melcli.reader.Features.stats`).
    params : FeatureParams
    sr : int
        The rate whose row frequencies label the axis.
    dark : bool
        Colours for a dark page.
    """
    display = params.display()
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.asarray(stats["std"], dtype=np.float64)
    rows = len(mean) // max(display.blocks, 1)
    fig = _figure(PANEL_WIDTH, 2.6)
    ax = fig.add_subplot()
    x = np.arange(len(mean))
    ax.fill_between(x, mean - std, mean + std, color="#e08a3c", alpha=0.35, linewidth=0,
                    label="mean ± std")  # fmt: skip
    ax.plot(x, mean, color="#e08a3c", linewidth=1.2, label="mean")
    if display.blocks > 1:
        for b in range(1, display.blocks):
            ax.axvline(b * rows - 0.5, color="#888888", linewidth=0.6, linestyle=":")
    freqs = np.asarray(params.row_frequencies(sr), dtype=np.float64)[:rows]
    positions, labels = row_ticks(freqs, display.rows)
    ax.set_xticks(positions, labels)
    ax.set_xlim(-0.5, len(mean) - 0.5)
    ax.set_xlabel(display.row_label + (" (static rows labelled)" if display.blocks > 1 else ""))
    unit = "stored values" if display.db_factor is not None else display.unit
    ax.set_ylabel(unit, fontsize=8)
    ax.set_title(
        f"per-row mean and std over {stats['count']} frames",
        fontsize=9,
        loc="left",
        color=_foreground(dark),
    )
    ax.legend(fontsize=7, loc="best", frameon=False)
    ax.tick_params(labelsize=7)
    _theme(fig, ax, dark)
    return fig


def histogram_figure(durations: np.ndarray, *, dark: bool = False) -> Figure:
    """A histogram of the entries' durations (seconds)."""
    fig = _figure(PANEL_WIDTH, 2.6)
    ax = fig.add_subplot()
    d = np.asarray(durations, dtype=np.float64)
    ax.hist(d, bins=min(40, max(1, len(np.unique(d)))), color="#3b8ea5")
    ax.set_xlabel("Duration (s)")
    ax.set_ylabel("Entries")
    span = f"{d.min():.2f} .. {d.max():.2f} s (median {np.median(d):.2f} s)"
    ax.set_title(f"{len(d)} entries, {span}", fontsize=9, loc="left", color=_foreground(dark))
    ax.tick_params(labelsize=7)
    _theme(fig, ax, dark)
    return fig


def _foreground(dark: bool) -> str:
    return "#d8d8d8" if dark else "#222222"


def _theme(fig: Figure, ax: Axes, dark: bool) -> None:
    """Transparent background and text colours that read on a light or a dark page (the
    title is coloured where it is set)."""
    fg = _foreground(dark)
    fig.patch.set_alpha(0.0)
    ax.set_facecolor("none")
    for spine in ax.spines.values():
        spine.set_color(fg)
    ax.tick_params(colors=fg)
    texts = [ax.xaxis.label, ax.yaxis.label]
    legend = ax.get_legend()
    for text in texts + (legend.get_texts() if legend is not None else []):
        text.set_color(fg)


# -- thumbnails ------------------------------------------------------------------------
def _shrink(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``a`` resized to ``size`` along ``axis``: area averages when shrinking (no
    aliasing), nearest values when growing. NaN-free input."""
    n = a.shape[axis]
    if n == size:
        return a
    if n > size:
        edges = np.linspace(0, n, size + 1).astype(np.int64)
        sums = np.add.reduceat(a, edges[:-1], axis=axis)
        counts = np.diff(edges).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
        return sums / counts
    return np.take(a, np.arange(size) * n // size, axis=axis)


def thumbnail(data: np.ndarray, params: FeatureParams, *, width: int = 240,
              height: int = 72) -> np.ndarray:  # fmt: skip
    """A small picture of an entry without axes, as colour levels: low rows at the bottom.

    Parameters
    ----------
    data : np.ndarray
        (rows, frames) or (channels, rows, frames), as stored.
    params : FeatureParams
    width, height : int
        Pixels; each channel gets ``height`` rows, channels stacked with a 2-pixel gap.

    Returns
    -------
    np.ndarray, shape (channels * height + 2 * (channels - 1), width), uint8
        Levels 0-254 of the colour map of the panels (`display_values`, `thumbnail_palette`);
        255 is the gap between channels.
    """
    display = params.display()
    chans = data if data.ndim == 3 else data[None]
    parts = []
    for channel in chans:
        values, lo, hi = display_values(_static_rows(channel, display), display)
        level = np.clip((np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo),
                        0.0, 1.0)  # fmt: skip
        if level.shape[-1] == 0:
            level = np.zeros((level.shape[0], 1))
        level = _shrink(_shrink(level, height, 0), width, 1)[::-1]
        parts.append(np.rint(level * 254).astype(np.uint8))
        parts.append(np.full((2, width), 255, dtype=np.uint8))
    return np.concatenate(parts[:-1], axis=0)


def thumbnail_palette(params: FeatureParams) -> np.ndarray:
    """The 256 RGB colours of `thumbnail`'s levels (uint8, (256, 3)): the panels' colour
    map in 255 steps, then white."""
    import matplotlib

    display = params.display()
    cmap = matplotlib.colormaps[DIVERGING_CMAP if display.diverging else CMAP]
    colours = cmap(np.linspace(0.0, 1.0, 255), bytes=True)[:, :3]
    return np.concatenate([colours, np.full((1, 3), 255, dtype=np.uint8)])


def png_of_levels(levels: np.ndarray, palette: np.ndarray) -> bytes:
    """A palette PNG of ``levels`` (h, w) uint8 in ``palette`` (256, 3): a third of the
    bytes of RGB, no metadata (deterministic)."""
    from PIL import Image

    levels = np.ascontiguousarray(levels, dtype=np.uint8)
    image = Image.frombytes("P", (levels.shape[1], levels.shape[0]), levels.tobytes())
    image.putpalette(palette.astype(np.uint8).tobytes())
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def read_thumbnail_frames(features: Features, key: str) -> np.ndarray:
    """An entry read for a thumbnail: every frame, or every k-th of a long entry (at
    most `THUMB_FRAMES`), so a thumbnail of an hour costs what one of a minute does."""
    frames = int(features.entry(key)["shape"][-1])
    step = max(1, -(-frames // THUMB_FRAMES))
    return features.read(key, None if step == 1 else slice(0, frames, step))


# -- reading and saving ----------------------------------------------------------------
def choose_keys(keys: list[str], path: Path, key: str | None, most: int) -> list[str]:
    """The entries a picture of an output draws: ``key`` or the first ``most`` keys.

    Raises
    ------
    OutputError
        No entries (nothing to draw), or ``key`` is not one of them (the nearest named).
    """
    if not keys:
        raise OutputError(f"nothing to draw: {path} has no entries")
    if key is None:
        return list(keys[:most])
    if key not in set(keys):
        from melcli.inspection import no_such_entry

        raise no_such_entry(key, keys, path)
    return [key]


def plot_output(
    path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
    *, key: str | None = None, most: int = 12, phase: bool = False,
) -> Figure:  # fmt: skip
    """Draw entries of a melcli output (a grid, `entries_figure`) and save it to ``out``.

    Parameters
    ----------
    path : path
        An HDF5 output, an npy directory or a manifest.
    out : path, optional
        Where to save the picture (`save`); None: only return it.
    key : str, optional
        Draw only this entry.
    most : int > 0
        Without ``key``: the first ``most`` entries by key.
    phase : bool
        The phase of a complex STFT output.

    Raises
    ------
    OutputError
        Not a melcli output, no entries, an unknown key, an unwritable ``out``.
    ParameterError
        ``phase`` for an output that is not a complex STFT.
    """
    import melcli

    with melcli.open(path) as feats:
        params = FeatureParams.from_dict(feats.params)
        if phase and not params.stores_complex:
            raise ParameterError(
                f"--phase draws a complex STFT (melcli stft --complex); {path} stores "
                f"{params.kind} {'magnitudes' if params.kind == 'stft' else 'features'}"
            )
        keys = choose_keys(list(feats), Path(path), key, most)
        entries = []
        for k in keys:
            rec = feats.entry(k)
            entries.append(Entry(k, feats[k], int(rec["sample_rate"]), float(rec["duration"])))
    fig = entries_figure(entries, params, phase=phase)
    if out is not None:
        save(fig, out)
    return fig


def plot_audio(
    path: str, params: FeatureParams, out: str | os.PathLike[str] | None = None,
    *, phase: bool = False,
) -> Figure:  # fmt: skip
    """Decode one audio file and draw its waveform over its features (`audio_figure`),
    computed as ``melcli KIND`` computes them (`melcli.audio.load`,
    `melcli.features.compute`); save it to ``out`` if given.

    Raises
    ------
    DecodeError
        The file cannot be decoded, or these parameters do not apply to it.
    ParameterError
        ``phase`` without ``stft --complex`` parameters.
    OutputError
        ``out`` cannot be written.
    """
    from melcli import audio, features

    if phase and not params.stores_complex:
        raise ParameterError("--phase draws a complex STFT: add --kind stft --complex")
    y, sr, _ = audio.load(path, sr=params.sr, mono=params.mono)
    data = features.compute(y, sr, params)
    fig = audio_figure(y, sr, data, params, name=os.path.basename(path), phase=phase)
    if out is not None:
        save(fig, out)
    return fig
