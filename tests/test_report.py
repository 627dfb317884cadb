"""``melcli report`` (issue 11): one self-contained HTML page about an output.

The page is parsed with the standard library: every embedded image decodes, every
entry is in the gallery or counted, failures appear with their reasons, and nothing
is fetched from outside (no http(s) address in any src/href/srcset, styles inline).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from melcli import report
from tests.conftest import SAMPLE_AUDIO, AudioFactory, Invoke, RunMelcli, assert_no_traceback


class Page(HTMLParser):
    """The parts of a report a reader sees: images, links, gallery cards, failures."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, **match: str) -> list[dict[str, str]]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in match.items())
        ]

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def _decode(uri: str) -> Any:
    head, _, data = uri.partition(",")
    assert head == "data:image/png;base64"
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")


def _check_self_contained(page: Page) -> int:
    """No address outside the page but file:// links to sources that exist; every image
    decodes. Returns the number of images."""
    images = 0
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset"):
            value = attrs.get(name)
            if value is None:
                continue
            if value.startswith("data:"):
                pixels = _decode(value)
                assert pixels.shape[0] > 10 and pixels.shape[1] > 10
                assert pixels[..., :3].std() > 0.01  # not blank
                images += 1
            else:
                assert tag == "a" and name == "href" and value.startswith("file:///"), value
                assert Path(value[len("file://") :]).is_file()
    assert page.all("link") == [] and page.all("script") == []
    return images


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """sample_audio plus one file that fails and one that will be gone."""
    root = tmp_path / "in"
    shutil.copytree(SAMPLE_AUDIO, root, ignore=shutil.ignore_patterns("*.md"))
    (root / "speech" / "broken.wav").write_bytes(b"RIFF and nothing else")
    shutil.copy(root / "speech" / "hello.wav", root / "gone.wav")
    return root


def test_a_report_of_a_real_output_real_executable(
    corpus: Path, melcli: RunMelcli, tmp_path: Path
) -> None:
    assert melcli("mel", "in", "-o", "o.h5", "-q", "--sr", "16000").returncode == 3
    (corpus / "gone.wav").unlink()
    proc = melcli("report", "o.h5", "-o", "report.html")
    assert proc.returncode == 0 and proc.stdout == "report.html\n" and proc.stderr == ""
    text = (tmp_path / "report.html").read_text()
    page = Page(text)
    keys = [c["data-key"] for c in page.all("figure")]
    assert keys == ["gone.wav", "music/arpeggio.ogg", "music/chords.flac", "music/pad_24bit.wav",
                    "speech/hello.mp3", "speech/hello.wav", "speech/numbers.flac"]  # fmt: skip
    # thumbnails, the statistics and histogram (each light and dark)
    assert _check_self_contained(page) == len(keys) + 4
    for img in page.all("img"):
        assert img["loading"] == "lazy"
    links = [a["href"] for a in page.all("a")]
    assert len(links) == len(keys) - 1  # gone.wav is not on disk any more
    assert not any(link.endswith("gone.wav") for link in links)
    words = page.words
    assert "speech/broken.wav" in words and "Failures (1)" in words
    assert re.search(r"speech/broken\.wav cannot decode: \S+", words)
    assert "melcli mel in -o o.h5 -q --sr 16000" in words  # the command
    assert "n_mels 128" in words and "sr 16000" in words  # the parameters
    assert "entries 7" in words and "failures 1" in words
    assert "3.26 s · 16000 Hz" in words  # hello.wav's duration and rate
    assert "prefers-color-scheme: dark" in text
    assert not re.search(r"https?://", text)


def test_every_entry_is_shown_or_counted_and_a_sample_is_deterministic(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    for i in range(12):
        audio.tone(f"t{i:02d}.wav", freq=200.0 + 100 * i, sr=8000, seconds=0.2 + 0.05 * i)
    assert invoke("mel", "in", "-o", "o", "-q", "--n-mels", "32", "--n-fft", "256").exit_code == 0
    result = invoke("report", "o", "-o", "r.html", "--max", "5")
    assert result.exit_code == 0, result.stderr
    page = Page((tmp_path / "r.html").read_text())
    assert [c["data-key"] for c in page.all("figure")] == [f"t{i:02d}.wav" for i in range(5)]
    assert "7 more entries not shown" in page.words
    first = report.build_report(tmp_path / "o", sample=4)
    again = report.build_report(tmp_path / "o", sample=4)
    assert first.html == again.html  # the same sample, the same bytes
    assert first.shown == sorted(first.shown) and len(first.shown) == 4
    assert first.shown != [f"t{i:02d}.wav" for i in range(4)]  # drawn, not the first
    assert "8 more entries not shown" in Page(first.html).words
    assert len(report.build_report(tmp_path / "o", most=100).shown) == 12
    assert _check_self_contained(Page(first.html)) == 4 + 4
    result = invoke("report", "o", "-o", "r.html", "--max", "5", "--sample", "3")
    assert result.exit_code == 2 and "give one of them" in result.stderr


def test_complex_and_multichannel_outputs(audio: AudioFactory, invoke: Invoke,
                                          tmp_path: Path) -> None:  # fmt: skip
    audio.tone("a.wav", sr=16000, channels=2)
    audio.tone("b.wav", sr=16000)
    assert invoke("stft", "in", "-o", "c.h5", "-q", "--complex", "--keep-channels").exit_code == 0
    built = report.build_report(tmp_path / "c.h5")
    page = Page(built.html)
    assert "Dataset statistics: complex STFT." in page.words
    assert _check_self_contained(page) == 2 + 2  # thumbnails + the histogram, light and dark
    stereo = _decode(page.all("img", alt="a.wav")[0]["src"])
    mono = _decode(page.all("img", alt="b.wav")[0]["src"])
    assert stereo.shape[0] == 2 * mono.shape[0] + 2  # one band per channel
    assert "2 ch" in page.words


def test_bad_input_is_one_line(audio: AudioFactory, melcli: RunMelcli, tmp_path: Path) -> None:
    audio.tone("a.wav")
    assert melcli("mel", "in", "-o", "o.h5", "-q").returncode == 0
    proc = melcli("report", "o.h5", "-o", "missing/r.html")
    assert (
        proc.returncode == 2
        and "the directory" in proc.stderr
        and "does not exist" in (proc.stderr)
    )
    (tmp_path / "notes.txt").write_text("hello")
    proc = melcli("report", "notes.txt", "-o", "r.html")
    assert proc.returncode == 1
    assert proc.stderr == "melcli: error: notes.txt is not a melcli output\n"
    assert proc.stderr.count("\n") == 1
    assert_no_traceback(proc.stderr)
    assert not (tmp_path / "r.html").exists()
