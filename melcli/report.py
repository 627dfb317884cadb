"""``melcli report``: one self-contained HTML page about a whole output.

The page holds everything it shows (pictures as ``data:`` URIs, styles inline; no
script, font or image is fetched from anywhere): the parameters and the command,
the totals (entries, hours of audio, failures, size on disk), the dataset
statistics (per-row mean and std) and a duration histogram as plots, the failures
with their reasons, and a gallery of spectrogram thumbnails (the first entries by
key, or a deterministic random sample), each with its key, duration, rate and a
``file://`` link to its source where that file still exists. Entries not in the
gallery are counted. Thumbnails are small PNGs coloured as `melcli.plot`'s panels
and loaded lazily, so a page about thousands of entries opens at once; colours
follow the reader's light or dark mode (``prefers-color-scheme``).

Pure functions of the output: no click, no printing; the same output gives the
same page (no generation time is written).
"""

from __future__ import annotations

import base64
import html
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melcli import plot
from melcli._version import __version__
from melcli.params import FeatureParams

#: Thumbnail size in pixels (per channel).
THUMB_WIDTH, THUMB_HEIGHT = 200, 64
#: The seed of ``--sample``: the same output gives the same sample.
SAMPLE_SEED = 0

_CSS = """
:root { --bg: #fbfbfa; --fg: #1d1d1f; --muted: #6b6b70; --card: #ffffff; --line: #e2e2e6;
  --accent: #b3541e; --bad: #b42318; color-scheme: light dark; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #141416; --fg: #e6e6e9; --muted: #9a9aa2; --card: #1e1e22; --line: #34343a;
    --accent: #f0a35e; --bad: #ff8a80; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1200px; padding: 1.5rem 1.25rem 3rem; background: var(--bg);
  color: var(--fg); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; word-break: break-all; }
h2 { font-size: 1.15rem; margin: 2rem 0 .6rem; border-bottom: 1px solid var(--line);
  padding-bottom: .25rem; }
.muted { color: var(--muted); }
code, pre { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, monospace; }
pre { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: .6rem .8rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
.totals { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
  gap: .6rem; margin: 1rem 0; }
.totals div { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: .5rem .75rem; }
.totals dt { color: var(--muted); font-size: .8rem; }
.totals dd { margin: 0; font-size: 1.25rem; font-weight: 600; }
.failed dd { color: var(--bad); }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .25rem .6rem .25rem 0; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--muted); font-weight: 500; }
td.reason { color: var(--bad); }
.params { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr));
  gap: .15rem 1rem; font-size: .9rem; }
.params div { border-bottom: 1px solid var(--line); padding: .15rem 0; }
.params span { color: var(--muted); }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1rem; }
.plots img { width: 100%; height: auto; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr));
  gap: .75rem; }
.entry { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 5px; }
.entry img { display: block; width: 100%; height: auto; image-rendering: auto;
  border-radius: 4px; }
.entry figcaption { font-size: .8rem; margin-top: .3rem; }
.entry .key { display: block; font-weight: 600; word-break: break-all; }
a { color: var(--accent); }
"""


@dataclass(frozen=True)
class Report:
    """A written report: what it shows.

    Attributes
    ----------
    html : str
        The page.
    entries : int
        Entries of the output.
    shown : list of str
        Keys in the gallery, in order.
    failures : int
    """

    html: str
    entries: int
    shown: list[str]
    failures: int


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _picture(light: bytes, dark: bytes, alt: str) -> str:
    """A plot in the reader's colour scheme (two renders; the page picks one)."""
    return (
        f'<picture><source srcset="{_data_uri(dark)}" media="(prefers-color-scheme: dark)">'
        f'<img src="{_data_uri(light)}" alt="{_e(alt)}" loading="lazy"></picture>'
    )


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def source_link(source: Any) -> str | None:
    """A ``file://`` URI of an entry's source if that file still exists, else None."""
    if not isinstance(source, str) or not source:
        return None
    path = Path(source)
    try:
        if not path.is_file():
            return None
        return path.resolve().as_uri()
    except (OSError, ValueError):
        return None


def gallery_keys(keys: list[str], *, most: int, sample: int | None) -> list[str]:
    """The keys a gallery shows: the first ``most`` by key, or ``sample`` keys drawn with
    `SAMPLE_SEED` (the same output, the same sample), shown sorted by key."""
    ordered = sorted(keys)
    if sample is None:
        return ordered[:most]
    chosen = random.Random(SAMPLE_SEED).sample(ordered, min(sample, len(ordered)))
    return sorted(chosen)


def _plots(feats: Any, info: dict[str, Any], params: FeatureParams) -> str:
    import numpy as np

    parts = []
    stats = feats.stats
    if stats is not None and stats["count"]:
        sr = info["sample_rates"][0]
        light = plot.png_bytes(plot.stats_figure(stats, params, sr))
        dark = plot.png_bytes(plot.stats_figure(stats, params, sr, dark=True))
        parts.append(_picture(light, dark, "per-row mean and standard deviation"))
    else:
        why = "complex STFT" if params.stores_complex else "none recorded"
        parts.append(f'<p class="muted">Dataset statistics: {why}.</p>')
    durations = np.asarray(feats.manifest["entries"].duration, dtype=np.float64)
    if durations.size:
        light = plot.png_bytes(plot.histogram_figure(durations))
        dark = plot.png_bytes(plot.histogram_figure(durations, dark=True))
        parts.append(_picture(light, dark, "histogram of the entries' durations"))
    return '<div class="plots">' + "".join(parts) + "</div>"


def _card(feats: Any, key: str, params: FeatureParams, palette: Any) -> str:
    rec = feats.entry(key)
    pixels = plot.thumbnail(
        plot.read_thumbnail_frames(feats, key), params, width=THUMB_WIDTH, height=THUMB_HEIGHT
    )
    link = source_link(rec.get("source"))
    source = f' · <a href="{_e(link)}">source</a>' if link else ""
    stored = rec["shape"]  # (channels, rows, frames) with --keep-channels
    channels = f" · {stored[0]} ch" if len(stored) == 3 and stored[0] > 1 else ""
    shape = "×".join(str(n) for n in rec["shape"])
    return (
        f'<figure class="entry" data-key="{_e(key)}" data-duration="{rec["duration"]}">'
        f'<img src="{_data_uri(plot.png_of_levels(pixels, palette))}" loading="lazy" '
        'decoding="async" '
        f'width="{pixels.shape[1]}" height="{pixels.shape[0]}" alt="{_e(key)}">'
        f'<figcaption><span class="key">{_e(key)}</span>'
        f"{rec['duration']:.2f} s · {rec['sample_rate']} Hz{channels} · {shape}{source}"
        "</figcaption></figure>"
    )


def build_report(
    path: str | os.PathLike[str], *, most: int = 200, sample: int | None = None
) -> Report:
    """The HTML page about a melcli output.

    Parameters
    ----------
    path : path
        An HDF5 output, an npy directory or a manifest.
    most : int >= 0
        Thumbnails of the first ``most`` entries by key (the others are counted).
    sample : int > 0, optional
        Instead: thumbnails of this many entries drawn at random (seed `SAMPLE_SEED`).

    Returns
    -------
    Report

    Raises
    ------
    OutputError
        Not a readable melcli output.
    """
    import melcli
    from melcli import inspection

    info = inspection.inspect_output(Path(path))
    with melcli.open(path) as feats:
        params = FeatureParams.from_dict(feats.params)
        keys = gallery_keys(list(feats), most=most, sample=sample)
        plots = _plots(feats, info, params)
        palette = plot.thumbnail_palette(params)
        cards = [_card(feats, key, params, palette) for key in keys]
    total = info["total_entries"]
    name = Path(path).name or str(path)
    rest = total - len(keys)
    how = (f"a random sample of {len(keys)} (seed {SAMPLE_SEED}), sorted by key"
           if sample is not None else f"the first {len(keys)} by key")  # fmt: skip
    more = (f'<p class="muted" id="not-shown">{rest} more entr{"y" if rest == 1 else "ies"} '
            f"not shown (--max / --sample; <code>melcli inspect {_e(path)} --keys</code> "
            "lists every key).</p>") if rest else ""  # fmt: skip
    failures = info["failures"]
    rows = "".join(
        f'<tr><td><code>{_e(f["key"])}</code></td><td class="reason">{_e(f["reason"])}</td>'
        f"<td><code>{_e(f.get('source', ''))}</code></td></tr>"
        for f in failures
    )
    failure_html = (
        f"<table><tr><th>key</th><th>reason</th><th>source</th></tr>{rows}</table>"
        if failures
        else '<p class="muted">None: every input was written.</p>'
    )
    param_rows = "".join(
        f"<div><span>{_e(k)}</span> <code>{_e(v)}</code></div>" for k, v in info["params"].items()
    )
    warnings = "".join(f"<li>{_e(w)}</li>" for w in info.get("warnings", []))
    shapes = (f"{tuple(info['shape_min'])} .. {tuple(info['shape_max'])}"
              if info["shape_min"] is not None else "none")  # fmt: skip
    rates = ", ".join(f"{r} Hz" for r in info["sample_rates"]) or "none"
    totals = [
        ("entries", f"{total}", ""),
        ("audio", _hours(info["total_duration"]), ""),
        ("failures", f"{len(failures)}", ' class="failed"' if failures else ""),
        ("size on disk", _fmt_bytes(info["size_bytes"]), ""),
    ]
    totals_html = "".join(f"<div{cls}><dt>{_e(label)}</dt><dd>{_e(value)}</dd></div>"
                          for label, value, cls in totals)  # fmt: skip
    preset = f"<p>Preset: <code>{_e(info['preset'])}</code></p>" if info.get("preset") else ""
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="melcli {_e(__version__)}">
<title>melcli report: {_e(name)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_e(name)}</h1>
<p class="muted">melcli {_e(params.kind)} output ({_e(info["format"])}), created
{_e(info["created"])} by melcli {_e(info["melcli_version"])}; report by melcli
{_e(__version__)}</p>
</header>
<section id="totals"><dl class="totals">{totals_html}</dl>
<p class="muted">Shapes {_e(shapes)}, dtype {_e(", ".join(info["dtype"]) or "none")},
rates {_e(rates)}.</p>{f"<ul>{warnings}</ul>" if warnings else ""}</section>
<section id="parameters"><h2>Parameters</h2>
<pre class="command">{_e(info["command"])}</pre>
{preset}
<div class="params">{param_rows}</div></section>
<section id="statistics"><h2>Dataset statistics and durations</h2>{plots}</section>
<section id="failures"><h2>Failures ({len(failures)})</h2>{failure_html}</section>
<section id="entries"><h2>Entries</h2>
<p class="muted">Showing {how} of {total}; colours as
<code>melcli inspect --plot</code> draws them ({_e(params.display().unit)}).</p>
<div class="gallery">{"".join(cards)}</div>
{more}</section>
</body>
</html>
"""
    return Report(page, total, keys, len(failures))


def write_report(
    path: str | os.PathLike[str], out: str | os.PathLike[str], *, most: int = 200,
    sample: int | None = None,
) -> Report:  # fmt: skip
    """`build_report` and write the page to ``out`` atomically.

    Raises
    ------
    OutputError
        Not a readable melcli output, or ``out`` cannot be written.
    """
    from melcli import manifest
    from melcli.errors import OutputError

    report = build_report(path, most=most, sample=sample)
    try:
        manifest.write_atomic(Path(out), report.html.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return report
