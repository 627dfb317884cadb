"""--help is part of the interface (issue 14.11): options by stage, the kind's own
first, every option in a section, -q and --fmax say what they do, and a mistyped
option is answered with the one it begins."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from melcli.cli import KIND_GROUPS, OPTION_GROUPS, ExtractCommand, cli
from melcli.kinds import KINDS
from tests.conftest import SAMPLE_AUDIO, RunMelcli

ORDER = ["Input", "Framing", "Spectrum", "Scaling", "Output", "Run"]


def _sections(text: str) -> list[str]:
    return [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Z][\w ,()-]*:", line)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_options_are_grouped_by_stage_with_the_kinds_own_first(
    kind: str, melcli: RunMelcli
) -> None:
    proc = melcli(kind, "--help")
    assert proc.returncode == 0
    heads = _sections(proc.stdout)
    # a stage whose options a kind derives itself (fbank's framing) has no section
    offered = {p.name for p in cli.commands[kind].params}
    stages = [t for t in ORDER if t in ("Input", "Output", "Run") or
              set(OPTION_GROUPS[t]) & offered]  # fmt: skip
    own = [title for title, _ in KIND_GROUPS[kind]]  # one per front end (mfcc: two)
    assert heads == [*own, *stages]  # no "Other options"
    assert len(own) == (2 if kind == "mfcc" else 1)
    assert list(OPTION_GROUPS) == ORDER
    # the kind's options come before -q / -v, which are in Run, last
    text = proc.stdout
    first_own = "--" + KIND_GROUPS[kind][0][1][0].replace("_", "-")
    assert text.index(f"\n  {first_own}") < text.index("\n  --sr") < text.index("--quiet")
    assert text.index("INPUTS...  ") > text.index("Input:")


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_option_is_in_exactly_one_section(kind: str) -> None:
    command = cli.commands[kind]
    assert isinstance(command, ExtractCommand)
    sections = command.sections(click.Context(command))
    names = [p.name for _, params in sections for p in params]
    assert "Other options" not in [title for title, _ in sections]
    assert sorted(names) == sorted({p.name for p in command.get_params(click.Context(command))})
    assert len(names) == len(set(names))


def test_quiet_and_fmax_say_what_they_do(melcli: RunMelcli) -> None:
    text = " ".join(melcli("mel", "--help").stdout.split())
    assert (
        "-q, --quiet Hide the progress bar and the summary lines; skipped files, errors "
        "and warnings about the data" in text
    )
    assert "A file whose Nyquist frequency (sr/2) is below it fails" in text
    assert "when every input would, the run stops before any work (exit 2)" in text
    # the example that looks like an ASR recipe resamples, as an ASR front end does
    assert "--sr 16000 --n-mels 80 --scale log --n-fft 400 --hop-length 160" in text


def test_top_level_help_shows_each_commands_first_line_whole(melcli: RunMelcli) -> None:
    text = " ".join(melcli("--help").stdout.split())
    assert "mel Compute mel spectrograms (librosa.feature.melspectrogram) of every input." in text
    assert "stft Compute STFT magnitudes |librosa.stft|**power of every input." in text
    assert "..." not in text.split("Commands:")[1]


@pytest.mark.parametrize(
    ("typed", "meant"), [("--hop", "--hop-length"), ("--top", "--top-db"),
                         ("--n-fftt", "--n-fft")],
)  # fmt: skip
def test_mistyped_option_suggests_the_one_it_begins(
    typed: str, meant: str, melcli: RunMelcli
) -> None:
    proc = melcli("mel", "in", "-o", "x.h5", typed, "3")
    assert proc.returncode == 2
    assert (
        proc.stderr.splitlines()[-1] == f"Error: No such option '{typed}'. Did you mean '{meant}'?"
    )


def test_help_and_inspect_without_plot_load_no_matplotlib(
    melcli: RunMelcli, tmp_path: Path
) -> None:
    """matplotlib (a second or more to import) is loaded only when a picture is asked for."""
    hello = str(SAMPLE_AUDIO / "speech" / "hello.wav")
    assert melcli("mel", hello, "-o", "o.h5", "-q").returncode == 0
    code = """
import sys
from melcli.cli import cli

def run(*args):
    try:
        cli(list(args))
    except SystemExit as exc:
        assert not exc.code, args

run('--help')
run('inspect', '--help')
run('inspect', 'o.h5')
run('inspect', 'o.h5', '--json', '--key', 'hello.wav')
run('inspect', sys.argv[1])
print('matplotlib' in sys.modules, 'PIL' in sys.modules, file=sys.stderr)
run('inspect', 'o.h5', '--plot', 'o.png')
print('matplotlib' in sys.modules, file=sys.stderr)
"""
    out = subprocess.run([sys.executable, "-c", code, hello], capture_output=True, text=True,
                         cwd=tmp_path, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stderr.split() == ["False", "False", "True"]
    assert (tmp_path / "o.png").stat().st_size > 1000
