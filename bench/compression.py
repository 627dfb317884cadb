"""HDF5 --compression: output size and speed on the benchmark's speech and music sets.

    python bench/compression.py            # full corpus (make bench builds it)
    python bench/compression.py --quick

For each set, kind (mel with the speech set's parameters for speech, librosa's
defaults for music; stft with librosa's defaults) and compression (none, lzf,
gzip): the median of 3 runs of `melcli KIND SET -o out.h5 --overwrite -q`
(whole process), the output's size, and the time to read every entry back
whole with h5py (median of 3, page cache warm) and to read 100 frames from the
middle of each entry (a training loader's crop).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

MELCLI = [sys.executable, "-m", "melcli"]
QUIET: dict[str, object] = {"check": True, "stdout": subprocess.DEVNULL}
PARAMS = {
    ("speech", "mel"): ["--sr", "16000", "--n-fft", "512", "--win-length", "400",
                        "--hop-length", "160", "--n-mels", "80"],
    ("speech", "stft"): [],
    ("music", "mel"): [],
    ("music", "stft"): [],
}  # fmt: skip


def _median(fn: object, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _read_all(path: Path) -> None:
    def read(_: str, obj: object) -> None:  # returns None: visititems stops at a value
        if isinstance(obj, h5py.Dataset):
            obj[()]

    with h5py.File(path, "r") as f:
        f["features"].visititems(read)


def _read_crops(path: Path) -> None:
    def crop(_: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            mid = obj.shape[-1] // 2
            obj[..., max(0, mid - 50) : mid + 50]

    with h5py.File(path, "r") as f:
        f["features"].visititems(crop)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    scale = "quick" if args.quick else "full"
    corpus.build(scale, verbose=False)
    root = corpus.corpus_dir(scale)
    print("| set | kind | compression | size MB | x none | extract s | read all s | read crops s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for (subset, kind), extra in PARAMS.items():
            base = None
            for method in ("none", "lzf", "gzip"):
                out = Path(tmp) / f"{subset}-{kind}-{method}.h5"
                cmd = [*MELCLI, kind, str(root / subset), "-o", str(out), "--overwrite", "-q",
                       "--compression", method, *extra]  # fmt: skip
                wall = _median(lambda cmd=cmd: subprocess.run(cmd, **QUIET))
                size = out.stat().st_size / 1e6
                base = base or size
                read = _median(lambda out=out: _read_all(out))
                crops = _median(lambda out=out: _read_crops(out))
                print(f"| {subset} | {kind} | {method} | {size:.1f} | {size / base:.2f} | "
                      f"{wall:.2f} | {read:.3f} | {crops:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
