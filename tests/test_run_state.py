"""Issue 15 items 4, 5, 9, 10, 11 and issue 14 item 1: what a run records and how it recovers.

A closed or broken stderr, entries missing from an output, failures caused by a
passing condition, unreadable directories, damaged checkpoints, and reruns on
other inputs. Real `melcli` processes on real files; outputs read back.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
from conftest import melcli_command


def tone(path: Path, seconds: float = 0.5, freq: float = 440.0, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def corpus(root: Path, n: int = 8) -> Path:
    for i in range(n):
        tone(root / f"d{i % 2}" / f"f{i:03d}.wav", freq=200.0 + 40 * i)
    return root


def run(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*melcli_command(), *map(str, args)], cwd=cwd, text=True, env={**os.environ, **(env or {})},
        **{"capture_output": True, "stdin": subprocess.DEVNULL, "timeout": 120, **kw},
    )  # type: ignore[call-overload]  # fmt: skip


def manifest(output: Path) -> dict:
    side = output.with_suffix(".json") if output.suffix == ".h5" else output / "manifest.json"
    return json.loads(side.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------
# item 4: a closed or broken stderr
# ---------------------------------------------------------------------------
def _closed_stderr() -> None:
    os.close(2)


def test_closed_stderr_still_writes_the_output_and_records_no_failure(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data")
    for i, extra in enumerate(([], ["--no-progress"], ["--no-progress", "-j1"], ["--progress"])):
        out = tmp_path / f"x{i}.h5"
        res = run(
            "mel", data, "-o", out, *extra, cwd=tmp_path, capture_output=False,
            stdout=subprocess.PIPE, stderr=None, preexec_fn=_closed_stderr,
        )  # fmt: skip
        assert res.returncode == 0, (extra, res.stdout)
        man = manifest(out)
        assert man["failures"] == [], extra
        assert len(man["entries"]) == 8
        with h5py.File(out, "r") as f:
            assert len(f["features/d0"]) == 4


def test_broken_stderr_and_stdout_do_not_lose_the_run(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data")
    for i, extra in enumerate((["-v"], ["-v", "--progress", "-j2", "--backend", "fork"])):
        out = tmp_path / f"b{i}.h5"
        read_end, write_end = os.pipe()
        os.close(read_end)  # every write gets EPIPE, as after `| head -1` has exited
        try:
            res = run("mel", data, "-o", out, *extra, cwd=tmp_path, capture_output=False,
                      stdout=write_end, stderr=write_end)  # fmt: skip
        finally:
            os.close(write_end)
        assert res.returncode == 0, extra
        assert len(manifest(out)["entries"]) == 8
        assert manifest(out)["failures"] == []
    # `2>&1 | head -1`, as a cron user would write it
    out = tmp_path / "h.h5"
    res = subprocess.run(
        ["bash", "-c", f'"$0" mel data -o {out} -v 2>&1 | head -1; exit "${{PIPESTATUS[0]}}"',
         melcli_command()[0]], cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 1
    assert len(manifest(out)["entries"]) == 8


# ---------------------------------------------------------------------------
# item 11: a damaged checkpoint chunk
# ---------------------------------------------------------------------------
def _interrupted_run(tmp_path: Path, out: Path, data: Path) -> list[Path]:
    """A run killed at the commit after checkpointing every entry: its chunks."""
    env = {"MELCLI_CHECKPOINT_SECONDS": "0", "MELCLI_KILL_AT": "rename"}
    res = run("mel", data, "-o", out, "-j1", cwd=tmp_path, env=env)
    assert res.returncode == -9, res.stderr
    chunks = sorted((out.parent / f".{out.name}.melcli-work").glob("chunk-*.bin"))
    assert len(chunks) == 8
    return chunks


def test_a_damaged_chunk_is_discarded_with_one_warning(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data")
    for fmt, extra in (("h5", []), ("npy", []), ("h5", ["--overwrite"])):
        out = tmp_path / ("o.h5" if fmt == "h5" else "o_npy")
        chunks = _interrupted_run(tmp_path, out, data)
        size = chunks[2].stat().st_size
        os.truncate(chunks[2], size - 100)  # the end of its array is gone
        chunks[5].write_bytes(b"MELCHNK1" + b"\xff" * 40)  # a header that is not JSON
        res = run("mel", data, "-o", out, "-j1", *extra, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
        warned = [ln for ln in res.stderr.splitlines() if "damaged checkpoint" in ln]
        assert len(warned) == 2, res.stderr
        assert "resumed: 6 entries" in res.stderr
        ref = tmp_path / ("ref.h5" if fmt == "h5" else "ref_npy")
        assert run("mel", data, "-o", ref, "-j1", cwd=tmp_path).returncode == 0
        if fmt == "h5":
            with h5py.File(out, "r") as f, h5py.File(ref, "r") as g:
                for e in manifest(ref)["entries"]:
                    name = f"features/{e['key']}"
                    np.testing.assert_array_equal(f[name][()], g[name][()])
        else:
            for e in manifest(ref)["entries"]:
                a, b = (np.load(p / f"{e['key']}.npy") for p in (out, ref))
                np.testing.assert_array_equal(a, b)
        for p in (out, ref):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
                p.with_suffix(".json").unlink()


# ---------------------------------------------------------------------------
# item 5: entries missing from an output
# ---------------------------------------------------------------------------
def test_entries_missing_from_the_output_are_computed_again(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data")
    for out in (tmp_path / "feats", tmp_path / "feats.h5"):
        assert run("mel", data, "-o", out, "-q", cwd=tmp_path).returncode == 0
        if out.suffix == ".h5":
            with h5py.File(out, "r+") as f:
                del f["features/d0/f002.wav"]
                del f["features/d1/f005.wav"]
        else:
            (out / "d0/f002.wav.npy").unlink()
            (out / "d1/f005.wav.npy").write_bytes(b"\x93NUMPY")  # truncated by hand
        res = run("mel", data, "-o", out, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
        repaired = "melcli: repaired: 2 entries missing from the output are computed again"
        assert repaired in res.stderr
        assert "up to date" not in res.stderr
        assert "updated 2" in res.stderr
        # later runs: up to date, and an ordinary change goes through (nothing is wedged)
        assert "up to date" in run("mel", data, "-o", out, cwd=tmp_path).stderr
        tone(data / "d0/f002.wav", freq=999.0)
        res = run("mel", data, "-o", out, cwd=tmp_path)
        assert res.returncode == 0 and "updated 1" in res.stderr, res.stderr
        ref = tmp_path / f"ref{out.suffix}"
        assert run("mel", data, "-o", ref, "-q", cwd=tmp_path).returncode == 0
        keys = [e["key"] for e in manifest(ref)["entries"]]
        assert [e["key"] for e in manifest(out)["entries"]] == keys
        for key in keys:
            if out.suffix == ".h5":
                with h5py.File(out, "r") as f, h5py.File(ref, "r") as g:
                    name = f"features/{key}"
                    np.testing.assert_array_equal(f[name][()], g[name][()])
            else:
                np.testing.assert_array_equal(
                    np.load(out / f"{key}.npy"), np.load(ref / f"{key}.npy")
                )


# ---------------------------------------------------------------------------
# item 9: a failure caused by a passing condition
# ---------------------------------------------------------------------------
def _wait_stopped(proc: subprocess.Popen[str]) -> None:
    """Until the process has stopped itself (a SIGSTOP fault point): state T in /proc."""
    for _ in range(6000):
        with open(f"/proc/{proc.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("melcli never reached the fault point")


def test_a_failure_while_a_symlink_pointed_elsewhere_is_retried(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data", n=4)
    real = tone(tmp_path / "real.wav", freq=300.0)
    junk = tmp_path / "passwd"
    junk.write_text("root:x:0:0:root:/root:/bin/bash\n" * 20)
    link = data / "link.wav"
    for checksum in ([], ["--checksum"]):
        out = tmp_path / f"o{len(checksum)}.h5"
        link.unlink(missing_ok=True)
        link.symlink_to(real)
        proc = subprocess.Popen(
            [*melcli_command(), "mel", str(data), "-o", str(out), "-j1", *checksum],
            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "MELCLI_KILL_AT": "planned:1:STOP"},
        )  # fmt: skip
        try:
            _wait_stopped(proc)  # planned with the link on real audio
            link.unlink()
            link.symlink_to(junk)  # read while it points at a text file
            proc.send_signal(signal.SIGCONT)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 3, err
        assert [f["key"] for f in manifest(out)["failures"]] == ["link.wav"]
        link.unlink()
        link.symlink_to(real)  # back as it was when planned
        res = run("mel", data, "-o", out, *checksum, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "added 1" in res.stderr
        assert manifest(out)["failures"] == []
        # a file that is really broken stays a carried-over failure
        link.unlink()
        link.symlink_to(junk)
        assert run("mel", data, "-o", out, *checksum, cwd=tmp_path).returncode == 3
        res = run("mel", data, "-o", out, *checksum, cwd=tmp_path)
        assert res.returncode == 3 and "up to date" in res.stderr, res.stderr


# ---------------------------------------------------------------------------
# item 10: directories that cannot be read (as a user without root's powers)
# ---------------------------------------------------------------------------
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def test_an_unreadable_directory_is_a_recorded_failure_until_it_can_be_read(
    tmp_path: Path,
) -> None:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="melcli-nobody-"))
    try:
        base.chmod(0o755)  # pytest's tmp_path is private to root
        data = corpus(base / "data", n=4)
        tone(data / "locked/a.wav")
        tone(data / "locked/b.wav", freq=500.0)
        (data / "locked/broken.wav").write_text("not audio")
        outs = base / "outs"
        outs.mkdir()
        os.chown(outs, pwd.getpwnam("nobody").pw_uid, -1)

        def as_nobody(out: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*NOBODY, *melcli_command(), "mel", str(data), "-o", str(outs / out), "-j1"],
                cwd=base, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
            )  # fmt: skip

        def failures(out: str) -> list[tuple[str, str]]:
            return [(f["key"], f["reason"]) for f in manifest(outs / out)["failures"]]

        denied = ("locked", "cannot read directory: Permission denied")
        broken = ("locked/broken.wav", "cannot decode: Format not recognised")
        # a fresh run: the directory is a failure (exit 3), nothing claims to be kept
        (data / "locked").chmod(0)
        res = as_nobody("fresh.h5")
        assert res.returncode == 3, res.stderr
        assert "kept as they were" not in res.stderr
        assert "melcli: error: cannot read directory" in res.stderr
        assert failures("fresh.h5") == [denied]
        assert len(manifest(outs / "fresh.h5")["entries"]) == 4
        res = as_nobody("fresh.h5")  # and it stays one, run after run
        assert res.returncode == 3 and "up to date" in res.stderr, res.stderr
        assert failures("fresh.h5") == [denied]
        # readable again: its files come in, the directory failure goes
        (data / "locked").chmod(0o755)
        res = as_nobody("fresh.h5")
        assert res.returncode == 3 and "added 2" in res.stderr, res.stderr
        assert failures("fresh.h5") == [broken]
        # unreadable on a rerun: entries AND failures under it are kept, exit stays 3
        (data / "locked").chmod(0)
        res = as_nobody("fresh.h5")
        assert res.returncode == 3, res.stderr
        assert "its 2 entries in the output are kept as they were" in res.stderr
        assert failures("fresh.h5") == [denied, broken]
        keys = [e["key"] for e in manifest(outs / "fresh.h5")["entries"]]
        assert "locked/a.wav" in keys and "locked/b.wav" in keys
        assert as_nobody("fresh.h5").returncode == 3
        assert failures("fresh.h5") == [denied, broken]
    finally:
        for d in base.rglob("*"):
            if d.is_dir():
                d.chmod(0o755)
        shutil.rmtree(base)


# ---------------------------------------------------------------------------
# issue 14 item 1: a rerun on other inputs
# ---------------------------------------------------------------------------
def test_a_rerun_on_other_inputs_is_refused_before_any_work(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data")
    out = tmp_path / "asr.h5"
    assert run("mel", "data", "-o", out, "-q", cwd=tmp_path).returncode == 0
    assert manifest(out)["inputs"] == [{"given": "data", "absolute": str(data)}]
    before = out.read_bytes()
    res = run("mel", "data/d0", "-o", out, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert f"was made from other inputs: {data} -> {data / 'd0'}; use --overwrite" in res.stderr
    assert out.read_bytes() == before
    assert run("mel", "data/d0", "-o", out, "--dry-run", cwd=tmp_path).returncode == 2
    # the same inputs spelled otherwise, from another directory: accepted
    res = run("mel", f"{data}/", "-o", out, cwd=tmp_path / "data")
    assert res.returncode == 0 and "up to date" in res.stderr, res.stderr
    # --overwrite rebuilds from the new inputs and records them
    res = run("mel", "data/d0", "-o", out, "--overwrite", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert manifest(out)["inputs"] == [{"given": "data/d0", "absolute": str(data / "d0")}]
    assert len(manifest(out)["entries"]) == 4


def test_an_output_without_recorded_inputs_is_accepted_and_gets_them(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data")
    out = tmp_path / "old"
    assert run("mel", data, "-o", out, "-q", cwd=tmp_path).returncode == 0
    man = manifest(out)
    del man["inputs"]  # as melcli 1.0.0 wrote it
    (out / "manifest.json").write_text(json.dumps(man), encoding="utf-8")
    res = run("mel", data, "-o", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert manifest(out)["inputs"] == [{"given": str(data), "absolute": str(data)}]
    assert "unchanged 8" in res.stderr


def test_a_stdin_list_may_remove_at_most_half_of_the_entries(tmp_path: Path) -> None:
    data = corpus(tmp_path / "data")
    out = tmp_path / "list.h5"
    names = sorted(str(p.relative_to(tmp_path)) for p in data.rglob("*.wav"))
    res = run("mel", "-", "-o", out, cwd=tmp_path, input="\n".join(names), stdin=None)
    assert res.returncode == 0, res.stderr
    assert manifest(out)["inputs"] == [{"given": "-", "absolute": "-"}]
    # half of the list goes: allowed, and -v names what was removed
    res = run("mel", "-", "-o", out, "-v", cwd=tmp_path, input="\n".join(names[:4]), stdin=None)
    assert res.returncode == 0, res.stderr
    assert "removed 4" in res.stderr
    lines = res.stderr.splitlines()
    assert [ln[len("melcli: removed ") :] for ln in lines if ln.startswith("melcli: removed ")] == (
        names[4:]
    )
    # more than half of what is left: refused before any work, unless --prune
    before = out.read_bytes()
    for extra in ([], ["--dry-run"]):
        res = run("mel", "-", "-o", out, *extra, cwd=tmp_path, input=names[0], stdin=None)
        assert res.returncode == 2, res.stderr
        assert "would remove 3 of the 4 entries" in res.stderr and "--prune" in res.stderr
        assert out.read_bytes() == before
    res = run("mel", "-", "-o", out, "--prune", cwd=tmp_path, input=names[0], stdin=None)
    assert res.returncode == 0 and "removed 3" in res.stderr, res.stderr
    assert [e["key"] for e in manifest(out)["entries"]] == [names[0]]
