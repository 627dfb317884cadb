"""Dataset scale: reruns (issue 8.8) and the first run's per-file cost (issue 13).

    python bench/scale.py DIR N [N ...]        # e.g. bench/scale.py /tmp/scale 20000 100000
    python bench/scale.py DIR --first [--kind stft] 1000 100000  # first runs, 1 s clips
    python bench/scale.py DIR --synthetic 1000000 make       # the output's manifest only
    python bench/scale.py DIR --synthetic 1000000 noop   # time a no-op rerun of it
    python bench/scale.py DIR --synthetic 1000000 add10  # add 10 files, rerun, remove them

For each N: N tiny WAVs (20 ms, 16 kHz; hard links of 16 distinct files, so
stat costs what real files cost) in directories of 1000, a first run, a no-op
rerun, and a rerun after adding 10 new files. Prints one line per run: wall
time and peak RSS of the whole melcli process (its own rusage, read by a
wrapper whose only child it is).

``--first``: N one-second 16 kHz clips (hard links of 64 distinct files), ``melcli
mel`` (or ``--kind``) with librosa's defaults, first runs only (3 for N <= 10000, else 1), against a
run over one clip: the per-file cost, whole and net of that fixed cost (issue 13,
target 3: linear in N).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

MELCLI = [sys.executable, "-m", "melcli"]


#: Distinct files the corpora are hard links of (ext4 allows 65000 links per inode).
SEEDS = 64
#: Every seed gets this mtime: same size and mtime, one manifest template fits all.
SEED_MTIME = 1_700_000_000


def make_corpus(root: Path, n: int, samples: int = 320) -> Path:
    tag = "" if samples == 320 else f"-{samples}"
    seeds = root / f"seeds{tag}"
    seeds.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(SEEDS):  # written once: every corpus links to these inodes
        y = (0.1 * rng.standard_normal(samples)).astype(np.float32)
        if not (seeds / f"{i}.wav").exists():
            sf.write(seeds / f"{i}.wav", y, 16000, subtype="PCM_16")
            os.utime(seeds / f"{i}.wav", (SEED_MTIME, SEED_MTIME))
    data = root / f"data{n}{tag}"
    for i in range(n):
        d = data / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        target = d / f"f{i:07d}.wav"
        if target.exists():
            continue
        for s in (i % SEEDS, *range(SEEDS)):
            try:
                os.link(seeds / f"{s}.wav", target)
                break
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
    return data


def run(args: list[str]) -> tuple[float, float, int]:
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
        "stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper, *MELCLI, *args], capture_output=True,
                       text=True)  # fmt: skip
    wall = time.perf_counter() - t
    if p.returncode not in (0, 3):
        print(p.stderr, file=sys.stderr)
    return wall, int(p.stdout.split()[-1]) / 1024, p.returncode


def main() -> None:
    root = Path(sys.argv[1])
    if sys.argv[2] == "--synthetic":  # bench/scale.py DIR --synthetic N [make|noop LABEL]
        n = int(sys.argv[3])
        if sys.argv[4] == "make":
            synthetic(root, n)
        else:
            synthetic_rerun(root, n, sys.argv[4])
        return
    if sys.argv[2] == "--first":  # bench/scale.py DIR --first [--kind stft] N [N ...]
        args = sys.argv[3:]
        kind = "mel"
        if args[:1] == ["--kind"]:
            kind, args = args[1], args[2:]
        first_runs(root, [int(n) for n in args], kind)
        return
    for n in map(int, sys.argv[2:]):
        make_corpus(root, n)
        data, out = root / f"data{n}", root / f"out{n}.h5"
        common = ["mel", str(data), "-o", str(out), "-q", "--n-mels", "40", "--n-fft", "256"]
        labels = ["first run", "no-op rerun", "add 10 files"]
        if os.environ.get("REUSE") and out.exists():  # an output of this corpus already there
            labels[0] = "update run"
        else:
            out.unlink(missing_ok=True)
            out.with_suffix(".json").unlink(missing_ok=True)
        for label in labels:
            if label == "add 10 files":
                add10(data)
            wall, rss, rc = run(common)
            size = out.with_suffix(".json").stat().st_size / 1e6
            print(
                f"{n:>8} {label:<14} {wall:7.2f} s  peak RSS {rss:6.0f} MB  exit {rc}  "
                f"json {size:.0f} MB  h5 {out.stat().st_size / 1e6:.0f} MB",
                flush=True,
            )
        remove10(data)


def first_runs(root: Path, sizes: list[int], kind: str = "mel") -> None:
    """Issue 13, target 3: a first run's cost per file over N one-second clips."""
    import statistics

    fixed = None
    for n in [1, *sizes]:
        data = make_corpus(root, n, samples=16000)
        out = root / f"first{n}.h5"
        walls = []
        for _ in range(3 if n <= 10000 else 1):
            walls.append(run([kind, str(data), "-o", str(out), "-q", "--overwrite"])[0])
        wall = statistics.median(walls)
        if fixed is None:
            fixed = wall
            print(f"{n:>8} files  {wall:7.2f} s  (the fixed cost)", flush=True)
            continue
        print(
            f"{n:>8} files  {wall:7.2f} s  per file {wall / n * 1e3:6.3f} ms, "
            f"net of the fixed cost {(wall - fixed) / (n - 1) * 1e3:6.3f} ms  "
            f"(runs {' '.join(f'{w:.2f}' for w in walls)})",
            flush=True,
        )
        out.unlink()
        out.with_suffix(".json").unlink()


def add10(data: Path) -> None:
    extra = data / "zz-added"
    extra.mkdir(exist_ok=True)
    for i in range(10):
        sf.write(extra / f"new{i}.wav", np.full(320, 0.01 * (i + 1), np.float32), 16000)


def remove10(data: Path) -> None:
    for i in range(10):
        (data / "zz-added" / f"new{i}.wav").unlink()
    (data / "zz-added").rmdir()


def synthetic(root: Path, n: int) -> None:
    """An HDF5 output whose manifest lists ``n`` entries of ``n`` real files (hard links),
    without their feature arrays: what a no-op rerun reads, and nothing else."""
    import h5py

    from melcli import manifest

    make_corpus(root, n)
    data, out = root / f"data{n}", root / f"syn{n}.h5"
    seed_out = root / "seeds.h5"
    seed_out.unlink(missing_ok=True)
    subprocess.run([*MELCLI, "mel", str(root / "seeds"), "-o", str(seed_out), "-q",
                    "--n-mels", "40", "--n-fft", "256"], check=True)  # fmt: skip
    seeds = manifest.read_entries(seed_out.with_suffix(".json"), "seeds")
    tmpl = seeds["entries"].record(0)  # every seed has the same size, mtime and shape
    entries = []
    for i in range(n):
        key = f"d{i // 1000:04d}/f{i:07d}.wav"
        entries.append({**tmpl, "key": key, "source": str(data / key)})
    command = f"melcli mel {data} -o {out} -q --n-mels 40 --n-fft 256"
    man = manifest.build(
        params=seeds["params"], command=command, output_format="h5", entries=entries,
        failures=[], frequencies={16000: seeds["frequencies"]["16000"]},
        inputs=[{"given": str(data), "absolute": str(data)}],
    )  # fmt: skip
    del entries
    text = manifest.dumps(man)
    with h5py.File(out, "w") as f:
        f.create_group("features")
        f.attrs["melcli_version"] = man["melcli_version"]
        f.attrs["command"] = man["command"]
        f.attrs["created"] = man["created"]
        f.attrs["params"] = json.dumps(man["params"], sort_keys=True)
        f.create_dataset("manifest", data=text, dtype=h5py.string_dtype())
    out.with_suffix(".json").write_bytes(text)
    print(f"synthetic output {out}: {n} entries, manifest {len(text) / 1e6:.0f} MB", flush=True)


def synthetic_rerun(root: Path, n: int, what: str) -> None:
    """A no-op rerun (``noop``) or one that adds 10 files (``add10``; the next
    ``add10`` run removes them again: a rerun that changes 20 entries)."""
    data, out = root / f"data{n}", root / f"syn{n}.h5"
    extra = data / "zz-added"
    label = what
    if what == "add10":
        if extra.exists():
            remove10(data)
            label = "remove 10"
        else:
            add10(data)
            label = "add 10"
    wall, rss, rc = run(["mel", str(data), "-o", str(out), "-q",
                         "--n-mels", "40", "--n-fft", "256"])  # fmt: skip
    print(f"{n:>8} {label:<14} {wall:7.2f} s  peak RSS {rss:6.0f} MB  exit {rc}  "
          f"h5 {out.stat().st_size / 1e6:.0f} MB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
