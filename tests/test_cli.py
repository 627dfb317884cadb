"""End to end: the real ``melcli`` executable and click's CliRunner.

Outputs are read back and checked field by field: HDF5 datasets and
attributes, the npy tree, the JSON manifest; plus stdin lists, ``inspect``
(text and JSON), reruns, ``-j``, existing outputs, stdout/stderr hygiene and
``--help``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import warnings
from pathlib import Path
from typing import Any

import click
import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import (
    SAMPLE_AUDIO,
    AudioFactory,
    Invoke,
    RunMelcli,
    assert_no_traceback,
    stderr_lines,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from melcli import __version__
from melcli.backends import REMOTE
from melcli.cli import BACKENDS, cli
from melcli.kinds.mel import MEL_SCALES, NORMS
from melcli.params import DTYPES, PAD_MODES, FeatureParams

#: Every field the v1 issue requires in a manifest entry.
ENTRY_FIELDS = {"key", "source", "sample_rate", "channels", "n_samples", "duration", "shape",
                "dtype", "source_size", "source_mtime"}  # fmt: skip
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


@pytest.fixture
def corpus(audio: AudioFactory) -> AudioFactory:
    """Five files over three rates, mono and stereo, WAV/FLAC/OGG, two levels of directories."""
    audio.tone("speech/a.wav", freq=440, sr=16000, seconds=0.6)
    audio.sweep("speech/b.flac", sr=16000, seconds=0.4)
    audio.mix("music/c.flac", sr=44100, seconds=0.5, channels=2)
    audio.noise("music/deep/d.ogg", sr=22050, seconds=0.3)
    audio.tone("e.wav", freq=1000, sr=48000, seconds=0.25, channels=2)
    return audio


CORPUS_KEYS = ["e.wav", "music/c.flac", "music/deep/d.ogg", "speech/a.wav", "speech/b.flac"]


def load_manifest(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def h5_arrays(path: Path) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Every /features dataset of an HDF5 output: key -> (data, attrs)."""
    out: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj[()], dict(obj.attrs))

        f["features"].visititems(visit)
    return out


def npy_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every ``<key>.npy`` under an npy output: key -> data (allow_pickle=False)."""
    return {
        p.relative_to(root).as_posix()[: -len(".npy")]: np.load(p, allow_pickle=False)
        for p in sorted(root.rglob("*.npy"))
    }


def without(man: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in man.items() if k not in names}


def assert_clean_success(stdout: str, stderr: str, out: Path) -> None:
    """stdout carries only the output path; stderr no traceback."""
    assert stdout == f"{out}\n"
    assert_no_traceback(stderr)


# ---------------------------------------------------------------------------
# HDF5 output, field by field
# ---------------------------------------------------------------------------
def check_h5_output(out: Path, audio: AudioFactory, kind: str) -> dict[str, Any]:
    """Check an HDF5 output and its sidecar manifest against the input files."""
    man = load_manifest(out.with_suffix(".json"))
    arrays = h5_arrays(out)
    assert sorted(arrays) == CORPUS_KEYS
    with h5py.File(out, "r") as f:
        assert f.attrs["melcli_version"] == __version__
        assert f.attrs["command"] == man["command"]
        assert json.loads(f.attrs["params"]) == man["params"]
        inner = json.loads(f["manifest"][()])
        assert inner == man  # the copy inside the file is the sidecar
        assert sorted(f["frequencies"]) == ["16000", "22050", "44100", "48000"]
    p = FeatureParams.from_dict(man["params"])
    assert p.kind == kind
    for key, (data, attrs) in arrays.items():
        src = audio.root / key
        info = sf.info(src)
        assert attrs["source"] == str(src)
        assert attrs["sample_rate"] == info.samplerate
        assert attrs["channels"] == info.channels
        assert attrs["n_samples"] == info.frames
        assert attrs["duration"] == pytest.approx(info.frames / info.samplerate)
        assert data.dtype == np.float32
        assert data.shape == (p.n_bins, p.n_frames(info.frames))
        assert np.isfinite(data).all() and (data >= 0).all()
    return man


@pytest.mark.parametrize("dtype", ["float32", "float16", "complex64"])
def test_h5_entries_store_like_h5py_high_level(tmp_path: Path, dtype: str) -> None:
    """store._EntryMaker (h5py's low-level API, for speed) stores what
    ``create_dataset`` + ``ds.attrs[...] = ...`` would: same types, values, layout."""
    from melcli.store import _EntryMaker

    data = (np.arange(24).reshape(2, 3, 4) / 7).astype(dtype)
    rec = {"key": "sub/ünï cödé.wav", "shape": [2, 3, 4], "dtype": dtype, "sample_rate": 22050,
           "n_samples": 3000, "duration": 3000 / 22050, "channels": 2,
           "source": "/a/ünï.wav"}  # fmt: skip
    with h5py.File(tmp_path / "fast.h5", "w") as f:
        _EntryMaker().create(f, rec, data)
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        ds = f.create_dataset(f"features/{rec['key']}", data=data)
        for name in ("sample_rate", "n_samples", "duration", "channels", "source"):
            ds.attrs[name] = rec[name]
        ds.attrs["frequencies"] = "/frequencies/22050"
    with h5py.File(tmp_path / "fast.h5", "r") as fast, h5py.File(tmp_path / "ref.h5", "r") as ref:
        a, b = fast[f"features/{rec['key']}"], ref[f"features/{rec['key']}"]
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a[()], b[()])
        assert a.id.get_type().equal(b.id.get_type())
        assert a.chunks is None and a.compression is None  # contiguous, as h5py's default
        for x in (a, b):  # no timestamps in the object header (identical reruns)
            assert h5py.h5o.get_info(x.id).ctime == 0
        assert dict(a.attrs) == dict(b.attrs)
        for name in a.attrs:
            assert type(a.attrs[name]) is type(b.attrs[name])
            assert a.attrs.get_id(name).get_type().equal(b.attrs.get_id(name).get_type())
        assert list(fast["features/sub"]) == list(ref["features/sub"])  # UTF-8 link names


def test_mel_to_h5_subprocess(corpus: AudioFactory, melcli: RunMelcli, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    r = melcli("mel", corpus.root, "-o", out, "-j1")
    assert r.returncode == 0, r.stderr
    assert_clean_success(r.stdout, r.stderr, out)
    man = check_h5_output(out, corpus, "mel")
    assert man["command"] == shlex.join(["melcli", "mel", str(corpus.root), "-o", str(out), "-j1"])
    assert man["output_format"] == "h5"


def test_stft_to_h5_cli_runner(corpus: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "spec.hdf5"
    r = invoke("stft", corpus.root, "-o", out, "-j1", "--n-fft", "512", "--window", "hamming")
    assert r.exit_code == 0, r.stderr
    assert_clean_success(r.stdout, r.stderr, out)
    man = check_h5_output(out, corpus, "stft")
    assert man["params"]["n_fft"] == 512 and man["params"]["window"] == "hamming"
    assert man["params"]["hop_length"] == 128  # win_length // 4, resolved and recorded


# ---------------------------------------------------------------------------
# npy output
# ---------------------------------------------------------------------------
def test_npy_tree_subprocess(corpus: AudioFactory, melcli: RunMelcli, tmp_path: Path) -> None:
    out = tmp_path / "feats"
    r = melcli("stft", corpus.root, "-o", out, "-j1", "--n-fft", "256", "--keep-channels")
    assert r.returncode == 0, r.stderr
    assert_clean_success(r.stdout, r.stderr, out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([f"{k}.npy" for k in CORPUS_KEYS] + ["manifest.json"])
    man = load_manifest(out / "manifest.json")
    assert man["output_format"] == "npy"
    arrays = npy_arrays(out)
    for e in man["entries"]:
        data = arrays[e["key"]]
        assert list(data.shape) == e["shape"] and str(data.dtype) == e["dtype"]
        assert data.shape == (e["channels"], 129, 1 + e["n_samples"] // 64)
    assert [e["channels"] for e in man["entries"]] == [2, 2, 1, 1, 1]
    # the frequencies live in the manifest for this format
    assert sorted(man["frequencies"], key=int) == ["16000", "22050", "44100", "48000"]
    np.testing.assert_allclose(man["frequencies"]["16000"], np.linspace(0, 8000, 129))


def test_mel_to_npy_cli_runner(corpus: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "out" / "mels"
    out.parent.mkdir()
    r = invoke("mel", corpus.root, "-o", out, "-j1", "--n-mels", "40", "--scale", "log")
    assert r.exit_code == 0, r.stderr
    assert_clean_success(r.stdout, r.stderr, out)
    arrays = npy_arrays(out)
    assert sorted(arrays) == CORPUS_KEYS
    assert all(a.shape[0] == 40 and a.dtype == np.float32 for a in arrays.values())
    assert all(a.min() >= np.log(np.float32(1e-10)) - 1e-3 for a in arrays.values())


@pytest.mark.parametrize(
    "name,fmt,expect_file",
    [("feats.h5", "npy", False), ("feats", "h5", True), ("feats.npz", "h5", True),
     ("feats.HDF5", None, True), ("feats.d", None, False)],
)  # fmt: skip
def test_format_guess_and_override(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path, name: str, fmt: str | None,
    expect_file: bool,
) -> None:  # fmt: skip
    audio.tone("a.wav", seconds=0.2)
    out = tmp_path / name
    r = invoke("mel", audio.root, "-o", out, "-j1", *(["--format", fmt] if fmt else []))
    assert r.exit_code == 0, r.stderr
    if expect_file:
        assert h5py.is_hdf5(out)
        man = load_manifest(out.with_suffix(".json"))
        assert man["output_format"] == "h5"
        assert sorted(h5_arrays(out)) == ["a.wav"]
    else:
        assert out.is_dir()
        man = load_manifest(out / "manifest.json")
        assert man["output_format"] == "npy"
        assert sorted(npy_arrays(out)) == ["a.wav"]


# ---------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------
def test_manifest_fields(corpus: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    bad = corpus.raw("speech/zz_broken.wav", b"RIFF not really a wave file")
    out = tmp_path / "m.h5"
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    args = ["mel", str(corpus.root), "-o", str(out), "-j1", "--n-mels", "64", "--fmax", "7000"]
    r = invoke(*args)
    after = dt.datetime.now(dt.UTC)
    assert r.exit_code == 3, r.stderr
    man = load_manifest(tmp_path / "m.json")

    assert man["melcli_version"] == __version__
    assert man["command"] == shlex.join(["melcli", *args])
    assert ISO_UTC.match(man["created"]), man["created"]
    created = dt.datetime.fromisoformat(man["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert before <= created <= after
    assert man["output_format"] == "h5"

    # every resolved parameter, defaults included; round-trips exactly
    expected = FeatureParams(kind="mel", n_mels=64, fmax=7000.0)
    assert man["params"] == expected.to_dict()
    assert set(man["params"]) >= {
        "kind",
        "sr",
        "mono",
        "n_fft",
        "win_length",
        "hop_length",
        "window",
        "center",
        "pad_mode",
        "power",
        "scale",
        "top_db",
        "amin",
        "dtype",
        "n_mels",
        "fmin",
        "fmax",
        "mel_scale",
        "norm",
    }
    assert FeatureParams.from_dict(man["params"]) == expected

    keys = [e["key"] for e in man["entries"]]
    assert keys == sorted(keys) == CORPUS_KEYS
    arrays = h5_arrays(out)
    for e in man["entries"]:
        assert set(e) >= ENTRY_FIELDS
        src = corpus.root / e["key"]
        st_ = os.stat(src)
        info = sf.info(src)
        assert e["source"] == str(src)
        assert e["sample_rate"] == info.samplerate
        assert e["channels"] == info.channels
        assert e["n_samples"] == info.frames
        assert e["duration"] == pytest.approx(info.frames / info.samplerate)
        assert e["source_size"] == st_.st_size
        assert e["source_mtime"] == st_.st_mtime
        data = arrays[e["key"]][0]
        assert e["shape"] == list(data.shape) and e["dtype"] == str(data.dtype) == "float32"

    assert len(man["failures"]) == 1
    fail = man["failures"][0]
    assert fail["key"] == "speech/zz_broken.wav" and fail["source"] == str(bad)
    assert fail["reason"]
    totals = man["totals"]
    assert totals["entries"] == 5 and totals["failures"] == 1 and totals["inputs"] == 6
    assert totals["duration"] == pytest.approx(sum(e["duration"] for e in man["entries"]))


def test_same_run_twice_gives_the_same_manifest_except_created(
    corpus: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    out = tmp_path / "twice.h5"
    args = ["mel", corpus.root, "-o", out, "-j1", "--overwrite", "--n-mels", "32"]
    assert invoke(*args).exit_code == 0
    first = load_manifest(tmp_path / "twice.json")
    first_data = h5_arrays(out)
    assert invoke(*args).exit_code == 0
    second = load_manifest(tmp_path / "twice.json")
    assert without(first, "created") == without(second, "created")
    assert (tmp_path / "twice.json").read_text().endswith("\n")
    for key, (data, attrs) in h5_arrays(out).items():
        np.testing.assert_array_equal(data, first_data[key][0])
        assert attrs == first_data[key][1]


#: -j 1, then every executor with two workers (auto resolves to fork on these short files);
#: a remote one (dask) on the two workers of the test cluster
RUN_MODES = {"j1": ["-j", "1"], **{b: ["-j", "2", "--backend", b] for b in BACKENDS}}


def test_every_executor_gives_identical_content(
    corpus: AudioFactory, melcli: RunMelcli, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for p in sorted(SAMPLE_AUDIO.rglob("*.*")):
        if p.suffix != ".md":
            shutil.copy(p, corpus.path(f"sample/{p.name}"))
    runs = {}
    modes = dict(RUN_MODES)
    for name in REMOTE:
        modes[name] = ["--scheduler", request.getfixturevalue("dask_cluster").address]
    for mode, args in modes.items():
        out_h5, out_npy = tmp_path / f"{mode}.h5", tmp_path / mode
        r = melcli("mel", corpus.root, "-o", out_h5, *args, "--scale", "db")
        assert r.returncode == 0, r.stderr
        r = melcli("stft", corpus.root, "-o", out_npy, *args, "--n-fft", "512")
        assert r.returncode == 0, r.stderr
        runs[mode] = (h5_arrays(out_h5), npy_arrays(out_npy),
                      load_manifest(out_h5.with_suffix(".json")),
                      load_manifest(out_npy / "manifest.json"))  # fmt: skip
    h1, n1, mh1, mn1 = runs["j1"]
    assert len(h1) == 11
    for mode in modes:
        h2, n2, mh2, mn2 = runs[mode]
        assert sorted(h1) == sorted(h2)
        for key in h1:
            assert h1[key][0].dtype == h2[key][0].dtype
            np.testing.assert_array_equal(h1[key][0], h2[key][0])
            assert h1[key][1] == h2[key][1]
        assert sorted(n1) == sorted(n2)
        for key in n1:
            np.testing.assert_array_equal(n1[key], n2[key])
        assert without(mh1, "created", "command") == without(mh2, "created", "command")
        assert without(mn1, "created", "command") == without(mn2, "created", "command")


def test_backend_choices_match_the_pipeline() -> None:
    from melcli import pipeline

    assert BACKENDS == pipeline.BACKENDS
    assert pipeline.resolve_backend("auto", 16000) == "fork"  # 1 s clips
    assert pipeline.resolve_backend("auto", 160000) == "threading"  # 10 s speech files
    for name in BACKENDS[1:]:
        assert pipeline.resolve_backend(name, 16000) == name
    assert "dask" in BACKENDS and "dask" in REMOTE


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["stft", "mel"]),
    n_fft=st.integers(1, 8192),
    data=st.data(),
)
def test_params_round_trip_through_json(kind: str, n_fft: int, data: st.DataObject) -> None:
    win = data.draw(st.one_of(st.none(), st.integers(1, n_fft)))
    kw: dict[str, Any] = {
        "kind": kind, "n_fft": n_fft, "win_length": win,
        "hop_length": data.draw(st.one_of(st.none(), st.integers(1, 4096))),
        "sr": data.draw(st.one_of(st.none(), st.sampled_from([8000, 16000, 22050, 44100]))),
        "mono": data.draw(st.booleans()), "center": data.draw(st.booleans()),
        "pad_mode": data.draw(st.sampled_from(PAD_MODES)),
        "window": data.draw(st.sampled_from(["hann", "rectangular", "kaiser:14", "gaussian:7.5",
                                             "flattop", "bartlett", "blackman", "hamming"])),
        "dtype": data.draw(st.sampled_from(DTYPES)),
        "amin": data.draw(st.floats(1e-20, 1.0)),
    }  # fmt: skip
    scale = data.draw(st.sampled_from(["linear", "db", "log"]))
    kw["scale"] = scale
    kw["power"] = data.draw(st.sampled_from([1.0, 2.0]) if scale == "db" else st.floats(0.1, 4))
    if scale == "db":
        kw["top_db"] = data.draw(st.one_of(st.none(), st.floats(0, 200)))
    if kind == "mel":
        kw["n_mels"] = data.draw(st.integers(1, 256))
        kw["mel_scale"] = data.draw(st.sampled_from(MEL_SCALES))
        kw["norm"] = data.draw(st.sampled_from(NORMS))
        kw["fmin"] = data.draw(st.floats(0, 3000))
        kw["fmax"] = data.draw(st.one_of(st.none(), st.floats(3001, 4000)))
    p = FeatureParams(**kw)
    text = json.dumps(p.to_dict())
    back = FeatureParams.from_dict(json.loads(text))
    assert back == p
    assert back.to_dict() == p.to_dict()
    assert back.win_length == (win or n_fft)


# ---------------------------------------------------------------------------
# stdin lists
# ---------------------------------------------------------------------------
def test_stdin_newline_list(corpus: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    listing = "in/speech/a.wav\n\nin/music/c.flac\n" + str(corpus.root / "e.wav") + "\n"
    out = tmp_path / "s.h5"
    r = invoke("mel", "-", "-o", out, "-j1", input=listing)
    assert r.exit_code == 0, r.stderr
    assert_clean_success(r.stdout, r.stderr, out)
    # relative paths keep their directories; an absolute path is keyed by its name
    assert sorted(h5_arrays(out)) == ["e.wav", "in/music/c.flac", "in/speech/a.wav"]


def test_stdin_null_list_subprocess(audio: AudioFactory, melcli: RunMelcli, tmp_path: Path) -> None:
    odd = "odd name\nwith newline 'q' é.wav"
    audio.tone(odd, seconds=0.2)
    audio.tone("plain.flac", seconds=0.2)
    audio.tone("dir/x.wav", seconds=0.2)
    out = tmp_path / "z"
    listing = "\0".join([f"in/{odd}", "in/plain.flac", "in/dir"]) + "\0"
    r = melcli("mel", "-", "-0", "-o", out, "-j1", input=listing)
    assert r.returncode == 0, r.stderr
    assert_clean_success(r.stdout, r.stderr, out)
    man = load_manifest(out / "manifest.json")
    # a directory named in the list is walked; its files keyed relative to it
    assert [e["key"] for e in man["entries"]] == sorted([f"in/{odd}", "in/plain.flac", "x.wav"])
    assert np.load(out / "in" / f"{odd}.npy", allow_pickle=False).shape[0] == 128
    # the same list, newline-separated, splits the odd name in two: both fail, one is written
    r = melcli("mel", "-", "-o", tmp_path / "nl.h5", "-j1", input=listing.replace("\0", "\n"))
    assert r.returncode == 3, r.stderr


def test_stdin_combined_with_directories(
    corpus: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    sf.write(extra / "x.wav", np.zeros(4000, np.float32) + 0.1, 16000)
    out = tmp_path / "mix"
    r = invoke("mel", corpus.root / "speech", "-", "-o", out, "-j1", input="extra/x.wav\n")
    assert r.exit_code == 0, r.stderr
    assert sorted(npy_arrays(out)) == ["a.wav", "b.flac", "extra/x.wav"]


# ---------------------------------------------------------------------------
# discovery as the user sees it
# ---------------------------------------------------------------------------
def test_directory_walk_rules(audio: AudioFactory, invoke: Invoke, tmp_path: Path) -> None:
    audio.tone("b/z.wav", seconds=0.2)
    audio.tone("a.flac", seconds=0.2)
    audio.tone(".hidden.wav", seconds=0.2)
    audio.tone(".git/inside.wav", seconds=0.2)
    audio.tone("upper.WAV", seconds=0.2)
    audio.raw("notes.txt", b"not audio, and not tried")
    audio.raw("README", b"no suffix")
    outside = tmp_path / "elsewhere.wav"
    sf.write(outside, np.full(3200, 0.1, np.float32), 16000)
    (audio.root / "linked.wav").symlink_to(outside)
    r = invoke("mel", audio.root, "-o", tmp_path / "w.h5", "-j1")
    assert r.exit_code == 0, r.stderr
    man = load_manifest(tmp_path / "w.json")
    assert [e["key"] for e in man["entries"]] == ["a.flac", "b/z.wav", "linked.wav", "upper.WAV"]
    assert man["failures"] == []
    # --ext narrows the walk; a file named explicitly is always tried
    dat = tmp_path / "explicit.dat"
    shutil.copy(audio.root / "a.flac", dat)
    r = invoke("mel", audio.root, dat, "--ext", "flac", "-o", tmp_path / "e.h5", "-j1")
    assert r.exit_code == 0, r.stderr
    assert [e["key"] for e in load_manifest(tmp_path / "e.json")["entries"]] == [
        "a.flac", "explicit.dat"]  # fmt: skip


# ---------------------------------------------------------------------------
# existing outputs
# ---------------------------------------------------------------------------
def test_existing_foreign_file_is_never_replaced(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    """Issue 15.2: a file that is not a melcli output is refused, --overwrite or not."""
    audio.tone("a.wav", seconds=0.2)
    out = tmp_path / "taken.h5"
    out.write_bytes(b"precious")
    for extra in ([], ["--overwrite"]):
        r = invoke("mel", audio.root, "-o", out, "-j1", *extra)
        assert r.exit_code == 2
        assert str(out) in r.stderr and "not a melcli output" in r.stderr
        assert r.stdout == ""
        assert out.read_bytes() == b"precious"
        assert not (tmp_path / "taken.json").exists()


def test_foreign_directory_is_never_replaced(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    """A directory melcli did not make is refused, --overwrite or not: replacing it
    would delete the user's files."""
    audio.tone("a.wav", seconds=0.2)
    out = tmp_path / "dir"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        r = melcli("mel", audio.root, "-o", out, "-j1", *extra)
        assert r.returncode == 2
        assert "not a melcli output" in r.stderr and str(out) in r.stderr
        assert r.stdout == ""
        assert_no_traceback(r.stderr)
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = melcli("mel", audio.root, "-o", empty, "-j1", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["a.wav.npy", "manifest.json"]


def test_output_holding_the_inputs_is_refused(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    audio.tone("a.wav", seconds=0.2)
    r = melcli("mel", audio.root, "-o", audio.root, "-j1", "--overwrite")
    assert r.returncode == 2 and "contains the input" in r.stderr
    assert (audio.root / "a.wav").exists()
    # an output file that is an input, by its own name or through a symlink
    before = (audio.root / "a.wav").read_bytes()
    link = tmp_path / "link.h5"
    link.symlink_to(audio.root / "a.wav")
    for out in (audio.root / "a.wav", link):
        r = melcli("mel", audio.root, "-o", out, "--format", "h5", "-j1", "--overwrite")
        assert r.returncode == 2 and "contains the input" in r.stderr, r.stderr
        assert (audio.root / "a.wav").read_bytes() == before


def test_existing_output_with_other_parameters_needs_overwrite(
    audio: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    audio.tone("a.wav", seconds=0.3)
    out = tmp_path / "p.h5"
    assert invoke("mel", audio.root, "-o", out, "-j1", "--n-mels", "40").exit_code == 0
    before = out.read_bytes()
    r = invoke("mel", audio.root, "-o", out, "-j1", "--n-mels", "64")
    assert r.exit_code == 2
    assert "n_mels" in r.stderr and "--overwrite" in r.stderr
    assert out.read_bytes() == before
    r = invoke("mel", audio.root, "-o", out, "-j1", "--n-mels", "64", "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert h5_arrays(out)["a.wav"][0].shape[0] == 64
    assert load_manifest(tmp_path / "p.json")["params"]["n_mels"] == 64


# ---------------------------------------------------------------------------
# stdout / stderr hygiene
# ---------------------------------------------------------------------------
def test_progress_and_messages_go_to_stderr(
    corpus: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    out = tmp_path / "p.h5"
    r = melcli("mel", corpus.root, "-o", out, "-j1", "--progress", "-v")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{out}\n"
    assert "5/5" in r.stderr  # the tqdm bar, forced on although stderr is a pipe
    done = stderr_lines(r.stderr.replace("\r", "\n"), "melcli: done ")
    assert sorted(line.split()[2] for line in done) == CORPUS_KEYS


def test_quiet_run_prints_only_the_path(
    corpus: AudioFactory, invoke: Invoke, tmp_path: Path
) -> None:
    out = tmp_path / "q.h5"
    r = invoke("mel", corpus.root, "-o", out, "-j1", "-q", "--n-mels", "256", "--n-fft", "256")
    assert r.exit_code == 0
    assert r.stdout == f"{out}\n"
    # -q hides progress and summaries, not problems with the data (issue 14.3)
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith("melcli: warning: ") for line in lines)
    assert any("empty filters" in line for line in lines) and "wrote" not in r.stderr
    r = invoke("mel", corpus.root, "-o", tmp_path / "q2.h5", "-j1", "-q", "--sr", "16000")
    assert r.exit_code == 0 and r.stderr == ""
    # without -q (and not a terminal): no bar, a summary, nothing on stdout but the path
    r = invoke("mel", corpus.root, "-o", tmp_path / "nq.h5", "-j1")
    assert r.exit_code == 0
    assert r.stdout == f"{tmp_path / 'nq.h5'}\n"
    assert "file/s" not in r.stderr and "%|" not in r.stderr
    assert "wrote 5 entries" in r.stderr


def test_empty_filter_warning_once_on_stderr(
    audio: AudioFactory, melcli: RunMelcli, tmp_path: Path
) -> None:
    for i in range(3):
        audio.tone(f"t{i}.wav", sr=16000, seconds=0.3)
    audio.tone("u.flac", sr=44100, seconds=0.3)
    out = tmp_path / "e.h5"
    r = melcli("mel", audio.root, "-o", out, "-j2", "--n-mels", "256", "--n-fft", "256")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{out}\n"
    lines = [line for line in r.stderr.splitlines() if "empty filters" in line.lower()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("melcli: warning:") and "n_mels=256" in lines[0]
    assert "UserWarning" not in r.stderr  # librosa's own warning does not leak from workers
    # before any work: it precedes the summary line
    assert r.stderr.index(lines[0]) < r.stderr.index("wrote 4 entries")
    # no warning when the filterbank is fine
    r = melcli("mel", audio.root, "-o", tmp_path / "ok.h5", "-j1", "--n-mels", "40")
    assert r.returncode == 0 and "empty filters" not in r.stderr.lower()


def test_no_deprecation_warnings(corpus: AudioFactory, tmp_path: Path, monkeypatch: Any) -> None:
    """The CLI itself uses no deprecated click API (pyproject: warnings are errors)."""
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        r = CliRunner().invoke(cli, ["mel", str(corpus.root), "-o", "d.h5", "-j1"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------------------
# --help and --version
# ---------------------------------------------------------------------------
def all_commands() -> list[list[str]]:
    return [[]] + [[name] for name in sorted(cli.commands)]


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "melcli")
def test_every_command_has_help(invoke: Invoke, path: list[str]) -> None:
    r = invoke(*path, "--help")
    assert r.exit_code == 0
    assert r.stdout.startswith("Usage: ")
    command = cli if not path else cli.commands[path[0]]
    assert command.help and command.help.split("\n")[0].strip() in r.stdout
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        assert param.help, f"{param.opts} has no help text"
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in r.stdout, f"{opt} missing from {' '.join(path)} --help"
    assert r.stderr == ""


def test_commands_are_the_documented_ones() -> None:
    from melcli.kinds import KINDS

    assert sorted(cli.commands) == sorted(["inspect", "presets", "report", *KINDS])
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in cli.commands:
        assert re.search(rf"melcli {name}\b", readme), name


def test_help_documents_key_defaults(invoke: Invoke) -> None:
    mel = invoke("mel", "--help").stdout
    assert "80" in mel and "top-db" in mel  # librosa's own top_db default is named
    for name in ("rectangular", "hann", "hamming", "blackman", "bartlett", "gaussian",
                 "kaiser", "flattop"):  # fmt: skip
        assert name in mel
    assert "22050" in mel  # never resample silently, unlike librosa.load
    assert "130" in invoke("--help").stdout  # exit statuses


def test_help_and_version_subprocess(melcli: RunMelcli) -> None:
    r = melcli("--help")
    assert r.returncode == 0 and "mel" in r.stdout and "inspect" in r.stdout and r.stderr == ""
    r = melcli("--version")
    assert r.returncode == 0 and __version__ in r.stdout


# ---------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------
@pytest.fixture
def outputs(corpus: AudioFactory, invoke: Invoke, tmp_path: Path) -> dict[str, Path]:
    """One HDF5 output (with a failure) and one npy output of the corpus."""
    corpus.raw("zz.wav", b"\x00" * 10)
    h5 = tmp_path / "o.h5"
    assert invoke("mel", corpus.root, "-o", h5, "-j1", "--n-mels", "48").exit_code == 3
    npy = tmp_path / "o_npy"
    assert invoke("stft", corpus.root, "-o", npy, "-j1", "--n-fft", "256").exit_code == 3
    return {"h5": h5, "npy": npy, "manifest": tmp_path / "o.json"}


@pytest.mark.parametrize("which", ["h5", "npy", "manifest"])
def test_inspect_output_json(outputs: dict[str, Path], invoke: Invoke, which: str) -> None:
    path = outputs[which]
    r = invoke("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    man_path = path / "manifest.json" if which == "npy" else outputs["h5"].with_suffix(".json")
    man = load_manifest(man_path)
    assert info["params"] == man["params"]
    assert info["total_entries"] == 5 and info["kind"] == man["params"]["kind"]
    assert info["total_duration"] == pytest.approx(man["totals"]["duration"])
    assert info["entries"] == [
        {k: e[k] for k in ("key", "shape", "duration", "sample_rate", "channels", "dtype")}
        for e in man["entries"]
    ]
    assert info["dtype"] == ["float32"]
    assert info["sample_rates"] == [16000, 22050, 44100, 48000]
    assert [f["key"] for f in info["failures"]] == ["zz.wav"]
    shapes = [e["shape"] for e in man["entries"]]
    assert info["shape_min"] == [min(s[0] for s in shapes), min(s[1] for s in shapes)]
    assert info["shape_max"] == [max(s[0] for s in shapes), max(s[1] for s in shapes)]
    if which == "h5":
        assert info["size_bytes"] == path.stat().st_size
    if which == "npy":
        assert info["size_bytes"] == sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert info["created"] == man["created"] and info["command"] == man["command"]


@pytest.mark.parametrize("which", ["h5", "npy"])
def test_inspect_output_text(outputs: dict[str, Path], invoke: Invoke, which: str) -> None:
    r = invoke("inspect", outputs[which])
    assert r.exit_code == 0, r.stderr
    text = r.stdout
    kind = "mel" if which == "h5" else "stft"
    assert f"melcli {kind} output ({which})" in text
    assert "5 entries" in text
    assert "failures:   1" in text and "zz.wav" in text
    assert "16000, 22050, 44100, 48000" in text
    assert ("n_mels=48" in text) == (which == "h5")
    assert "n_fft=256" in text or which == "h5"
    assert r.stderr == ""


@pytest.mark.parametrize("which", ["h5", "npy", "manifest"])
def test_inspect_key(outputs: dict[str, Path], invoke: Invoke, which: str) -> None:
    key = "music/c.flac"
    r = invoke("inspect", outputs[which], "--key", key, "--json")
    assert r.exit_code == 0, r.stderr
    entry = json.loads(r.stdout)["entry"]
    if which == "npy":
        data = np.load(outputs["npy"] / f"{key}.npy", allow_pickle=False)
    else:
        data = h5_arrays(outputs["h5"])[key][0]
    assert entry["key"] == key
    assert entry["shape"] == list(data.shape) and entry["dtype"] == "float32"
    assert entry["min"] == pytest.approx(float(data.min()))
    assert entry["max"] == pytest.approx(float(data.max()))
    assert entry["mean"] == pytest.approx(float(data.astype(np.float64).mean()), rel=1e-6)
    assert entry["non_finite"] == 0
    assert entry["record"]["sample_rate"] == 44100
    text = invoke("inspect", outputs[which], "--key", key)
    assert text.exit_code == 0
    assert f"entry {key}: shape {tuple(data.shape)}" in text.stdout
    assert "non-finite 0" in text.stdout


def test_inspect_unknown_key_fails(outputs: dict[str, Path], invoke: Invoke) -> None:
    for path in outputs.values():
        r = invoke("inspect", path, "--key", "nope.wav")
        assert r.exit_code == 1
        assert "nope.wav" in r.stderr and r.stdout == ""
        assert_no_traceback(r.stderr)


def test_inspect_audio_directory(corpus: AudioFactory, invoke: Invoke) -> None:
    corpus.raw("speech/zz.wav", b"garbage" * 10)
    r = invoke("inspect", corpus.root, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert [f["key"] for f in info["files"]] == CORPUS_KEYS
    default = FeatureParams(kind="mel")
    for f in info["files"]:
        sfi = sf.info(corpus.root / f["key"])
        assert (f["format"], f["subtype"]) == (sfi.format, sfi.subtype)
        assert (f["sample_rate"], f["channels"], f["frames"]) == (
            sfi.samplerate, sfi.channels, sfi.frames)  # fmt: skip
        assert f["duration"] == pytest.approx(sfi.frames / sfi.samplerate, abs=1e-6)
        assert f["shape"] == [128, default.n_frames(sfi.frames)]
    assert [e["key"] for e in info["errors"]] == ["speech/zz.wav"]
    assert info["errors"][0]["reason"]
    assert info["total_files"] == 5
    assert info["total_duration"] == pytest.approx(sum(f["duration"] for f in info["files"]))
    r = invoke("inspect", corpus.root)
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["key", "format", "subtype"]
    row = next(line for line in lines if line.startswith("music/c.flac"))
    assert row.split()[1:6] == ["FLAC", "PCM_16", "44100", "2", "22050"]
    assert "5 files" in lines[-2] and "1 unreadable" in lines[-2]
    assert "speech/zz.wav" in lines[-1]


def test_inspect_subprocess_sample_audio(melcli: RunMelcli) -> None:
    r = melcli("inspect", SAMPLE_AUDIO / "music" / "chords.flac", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    [f] = info["files"]
    assert (f["key"], f["format"], f["sample_rate"], f["channels"]) == (
        "chords.flac", "FLAC", 44100, 2)  # fmt: skip
    assert f["shape"] == [128, 1 + f["frames"] // 512]


def test_inspect_key_on_audio_is_a_usage_error(corpus: AudioFactory, invoke: Invoke) -> None:
    r = invoke("inspect", corpus.root, "--key", "e.wav")
    assert r.exit_code == 2 and "--key" in r.stderr


def test_inspect_missing_path(invoke: Invoke, tmp_path: Path) -> None:
    r = invoke("inspect", tmp_path / "nothing.h5")
    assert r.exit_code == 2 and "nothing.h5" in r.stderr


def test_inspect_text_keeps_one_line_per_file(audio: AudioFactory, invoke: Invoke) -> None:
    """A control character in a file name (a newline) must not break the table."""
    audio.tone("odd\nname.wav", seconds=0.2)
    audio.tone("plain.wav", seconds=0.2)
    r = invoke("inspect", audio.root)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout  # header, two files, total
    assert lines[1].startswith("odd\\nname.wav")
