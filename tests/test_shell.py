"""Shell integration (issue 11): --version, Click's completion for bash/zsh/fish, and
``inspect --json``'s field names pinned to the README's table."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from melcli import __version__
from tests.conftest import SAMPLE_AUDIO, AudioFactory, RunMelcli, melcli_command

README = Path(__file__).resolve().parent.parent / "README.md"


def test_version(melcli: RunMelcli) -> None:
    proc = melcli("--version")
    assert proc.returncode == 0 and proc.stdout == f"melcli, version {__version__}\n"


def _complete(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(melcli_command(), env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o nosort -F _melcli_completion melcli"),
     ("zsh", "compdef _melcli_completion melcli"),
     ("fish", "complete --no-files --command melcli")],
)  # fmt: skip
def test_completion_scripts_for_each_shell(shell: str, marker: str) -> None:
    proc = _complete({"_MELCLI_COMPLETE": f"{shell}_source"})
    assert proc.returncode == 0 and proc.stderr == ""
    assert marker in proc.stdout and "_MELCLI_COMPLETE" in proc.stdout
    # the README's install line for this shell uses the same variable and value
    assert f"_MELCLI_COMPLETE={shell}_source melcli" in README.read_text()


def test_completion_completes_commands_options_and_choices() -> None:
    def words(line: str) -> list[str]:
        parts = line.split()
        cword = len(parts) - (0 if line.endswith(" ") else 1)
        env = {"_MELCLI_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(cword)}
        proc = _complete(env)
        assert proc.returncode == 0, proc.stderr
        return [item.split(",", 1)[1] for item in proc.stdout.splitlines()]

    assert words("melcli rep") == ["report"]
    assert "--plot" in words("melcli inspect --pl")
    assert words("melcli mel --scale ") == ["linear", "db", "log", "whisper"]


def _schema() -> dict[str, set[str]]:
    """The README's `inspect --json` table: object path -> field names."""
    text = README.read_text()
    table = text.split("### `inspect --json`", 1)[1].split("\n\n", 3)[2]
    out: dict[str, set[str]] = {}
    for cell in re.findall(r"^\| (`[^|]+) \|", table, flags=re.M):
        names = re.findall(r"`([^`]+)`", cell)
        first = names[0]
        base = first.rsplit(".", 1)[0]
        for name in names:
            full = base + name if name.startswith(".") else name
            parent, _, field = full.rpartition(".")
            out.setdefault(parent, set()).add(field)
    return out


def _fields(obj: Any, path: str, out: dict[str, set[str]], deep: set[str]) -> None:
    out.setdefault(path, set()).update(obj)
    for name, value in obj.items():
        child = f"{path}.{name}"
        if isinstance(value, list) and value and isinstance(value[0], dict):
            child += "[]"
            if child in deep:
                _fields(value[0], child, out, deep)
        elif isinstance(value, dict) and child in deep:
            _fields(value, child, out, deep)


def test_inspect_json_field_names_are_the_documented_ones(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    schema = _schema()
    assert {"output", "output.entries[]", "output.entry", "input", "input.files[]"} <= set(schema)
    audio.tone("a.wav")
    audio.raw("bad.wav", b"nope")
    assert melcli("mel", "in", "-o", "o.h5", "-q").returncode == 3
    found: dict[str, set[str]] = {}
    output = json.loads(melcli("inspect", "o.h5", "--json", "--key", "a.wav").stdout)
    _fields(output, "output", found, set(schema))
    inputs = json.loads(melcli("inspect", SAMPLE_AUDIO, "--json").stdout)
    _fields(inputs, "input", found, set(schema))
    assert found == {k: v for k, v in schema.items() if k in found}
    assert set(found) == set(schema)
    failure = output["failures"][0]
    assert set(failure) == {"key", "source", "reason", "permanent", "source_size", "source_mtime"}
