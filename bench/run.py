#!/usr/bin/env python3
"""Benchmark runner behind ``make bench`` / ``make bench-quick``.

Builds (or reuses) the deterministic corpus (``bench/corpus.py``), then for each subset
runs every contender as a whole separate process, in alternation (round-robin, rotating
the start each round), ``--repeats`` times:

* ``decode``          soundfile decode of every file (in-process seconds are used),
* ``math``            minimal math on one core on pre-decoded audio (in-process seconds),
* ``melcli``          ``melcli mel|stft DIR -o OUT.h5 --overwrite -q [params]``, default -j,
* ``librosa-loop``    load + melspectrogram (or |stft|^2) + np.save, serial,
* ``librosa-joblib``  the same through ``joblib.Parallel(n_jobs=2)``.

Wall time is measured around each whole process (fork/exec to reap).  Peak memory is
the maximum over time of the summed VmRSS of the process and all its descendants, read
from /proc every ~20 ms (a short spike between two samples can be missed; shared pages
are counted once per process, as RSS does); the per-process ``ru_maxrss`` from wait4()
(largest single process of the tree) is recorded as well and used when the polled value
is smaller (e.g. a process shorter than one sampling period).

It then times ``melcli --help`` and ``melcli inspect OUT.h5`` (medians of 5) and a
first run with an empty ``NUMBA_CACHE_DIR`` against warm runs.  The environment is
passed through unchanged (except NUMBA_CACHE_DIR for that last test).

The markdown report goes to stdout and ``bench/results/<date>.md`` (raw per-run data to
the matching ``.json``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402
from baselines import CONFIGS, KINDS, PARAMS, melcli_args  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
BASELINES = str(BENCH_DIR / "baselines.py")
PY = sys.executable
PAGE = os.sysconf("SC_PAGE_SIZE")

# Targets from the issue.
RATIO_TARGET = 0.4  # melcli wall <= 0.4 x librosa joblib wall
FLOOR_FACTOR, FLOOR_FIXED = 1.5, 0.6  # melcli wall <= 1.5 x floor + 0.6 s
HELP_TARGET, INSPECT_TARGET = 0.3, 0.6  # seconds
COLD_TARGET = 1.0  # cold-numba run minus warm run, seconds
LONG_MEM_TARGET_MB = 400.0


# --------------------------------------------------------------------------- processes


@dataclass
class RunResult:
    """One measured process run."""

    cmd: list[str]
    wall: float
    rc: int
    peak_tree_mb: float  # max over samples of summed VmRSS of the process tree
    maxrss_mb: float  # ru_maxrss from wait4 (largest single process)
    n_samples: int
    stderr_tail: str = ""
    result: dict[str, Any] | None = None  # JSON printed by baselines

    @property
    def ok(self) -> bool:
        """True when the process exited with status 0."""
        return self.rc == 0

    @property
    def peak_mb(self) -> float:
        """Best estimate of peak memory of the tree (polled sum, or rusage if larger)."""
        return max(self.peak_tree_mb, self.maxrss_mb)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
        return int(s[s.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


class TreeMonitor(threading.Thread):
    """Poll the summed RSS of ``root`` and its descendants every ``interval`` seconds.

    Parent pids are read once per new pid (``/proc/<pid>/task/*/children`` is not
    available on every kernel), so a tick costs one listdir of /proc plus one small read
    per live tree member.
    """

    def __init__(self, root: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak = 0
        self.samples = 0
        self._stop_evt = threading.Event()
        self._ppid: dict[int, int | None] = {}

    def sample(self) -> None:
        """Take one sample and update the peak."""
        try:
            live = [int(x) for x in os.listdir("/proc") if x.isdigit()]
        except OSError:
            return
        live_set = set(live)
        for pid in list(self._ppid):
            if pid not in live_set:
                del self._ppid[pid]
        for pid in live:
            if pid not in self._ppid:
                self._ppid[pid] = _ppid(pid)
        children: dict[int, list[int]] = {}
        for pid, pp in self._ppid.items():
            if pp is not None:
                children.setdefault(pp, []).append(pid)
        total, stack = 0, [self.root]
        while stack:
            pid = stack.pop()
            total += _rss_bytes(pid)
            stack.extend(children.get(pid, ()))
        self.samples += 1
        self.peak = max(self.peak, total)

    def run(self) -> None:
        """Sample until stopped."""
        self.sample()
        while not self._stop_evt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_evt.set()
        self.join()


def run_process(
    cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 900.0, poll: bool = True
) -> RunResult:
    """Run ``cmd`` as a new process; measure wall time around it and its peak memory."""
    cmd = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            return RunResult(cmd, 0.0, 127, 0.0, 0.0, 0, f"{type(e).__name__}: {e}")
        mon = TreeMonitor(p.pid) if poll else None
        if mon is not None:
            mon.start()
        killer = threading.Timer(timeout, _kill_group, (p.pid,))
        killer.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        killer.cancel()
        if mon is not None:
            mon.stop()
        p.returncode = os.waitstatus_to_exitcode(status)
        _kill_group(p.pid)  # reap stragglers (e.g. loky workers) of the timed process only
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    result = None
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                result = json.loads(line)
            break
    tail = " | ".join(stderr.strip().splitlines()[-3:])[-400:]
    return RunResult(
        cmd,
        wall,
        p.returncode,
        (mon.peak if mon else 0) / 2**20,
        ru.ru_maxrss / 1024,
        mon.samples if mon else 0,
        tail,
        result,
    )


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group we created for one timed run (ignore if gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, 9)


# --------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    """A command to time; ``params``/``kind`` are None for decode and math."""

    name: str
    subset: str
    params: str | None = None
    kind: str | None = None
    runs: list[RunResult] = field(default_factory=list)
    error: str | None = None  # first error message, if any run failed
    verify: dict[str, Any] | None = None  # melcli only: output check of the first good run

    @property
    def key(self) -> tuple[str, str | None, str | None, str]:
        """Identity used to look results up."""
        return (self.subset, self.params, self.kind, self.name)

    def command(self, data_dir: Path, outdir: Path, melcli: list[str]) -> list[str]:
        """The command line for one run writing into ``outdir``."""
        if self.name == "decode":
            return [PY, BASELINES, "decode", str(data_dir)]
        if self.name == "math":
            return [PY, BASELINES, "math", str(data_dir), "--params", ",".join(PARAMS)]
        assert self.params is not None and self.kind is not None
        if self.name == "melcli":
            return [
                *melcli,
                self.kind,
                str(data_dir),
                "-o",
                str(outdir / "feats.h5"),
                "--overwrite",
                "-q",
                *melcli_args(self.params, self.kind),
            ]
        jobs = "2" if self.name == "librosa-joblib" else "1"
        return [
            PY,
            BASELINES,
            "librosa",
            str(data_dir),
            str(outdir),
            "--kind",
            self.kind,
            "--params",
            self.params,
            "--jobs",
            jobs,
        ]

    def walls(self) -> list[float]:
        """Whole-process wall times of successful runs."""
        return [r.wall for r in self.runs if r.ok]

    def median_wall(self) -> float | None:
        """Median whole-process wall time, or None."""
        w = self.walls()
        return statistics.median(w) if w else None

    def median_field(self, *path: str) -> float | None:
        """Median over runs of a number inside the JSON printed by a baseline."""
        vals = []
        for r in self.runs:
            v: Any = r.result
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            if isinstance(v, int | float):
                vals.append(float(v))
        return statistics.median(vals) if vals else None

    def peak_mb(self) -> float | None:
        """Max over runs of the peak memory of the process tree."""
        p = [r.peak_mb for r in self.runs if r.ok]
        return max(p) if p else None


#: (params, kind) configurations; quick mode keeps one per parameter set and per kind.
FULL_CONFIGS = CONFIGS
QUICK_CONFIGS = (("default", "stft"), ("speech", "mel"))


def make_contenders(subset: str, quick: bool) -> list[Contender]:
    """All contenders for one subset, in their base round-robin order.

    Full: every (params, kind) for melcli, librosa-joblib and librosa-loop.  Quick (to
    stay around 1.5-2 minutes, since each librosa process costs >= 1.2 s of imports):
    QUICK_CONFIGS only, and the serial librosa loop only for the speech/mel one.  The
    ``long`` subset only runs the speech set (memory target) plus, in full mode, the
    librosa loop as a memory reference.
    """
    cs = [Contender("decode", subset), Contender("math", subset)]
    if subset == "long":
        for kind in KINDS:
            cs.append(Contender("melcli", subset, "speech", kind))
        if not quick:
            cs.append(Contender("librosa-loop", subset, "speech", "mel"))
        return cs
    for params, kind in QUICK_CONFIGS if quick else FULL_CONFIGS:
        cs.append(Contender("melcli", subset, params, kind))
        cs.append(Contender("librosa-joblib", subset, params, kind))
        if not quick or (params, kind) == ("speech", "mel"):
            cs.append(Contender("librosa-loop", subset, params, kind))
    return cs


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    """Progress to stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_melcli(explicit: str | None) -> list[str]:
    """Command prefix for melcli: --melcli, the venv's script, PATH, or ``python -m``."""
    if explicit:
        return shlex.split(explicit)
    venv_bin = Path(sys.executable).parent / "melcli"
    if venv_bin.exists():
        return [str(venv_bin)]
    found = shutil.which("melcli")
    return [found] if found else [PY, "-m", "melcli"]


def probe_melcli(melcli: list[str]) -> str | None:
    """None if ``melcli --help`` works, else a one-line error."""
    r = run_process([*melcli, "--help"], timeout=120, poll=False)
    if r.ok:
        return None
    return f"`{' '.join(melcli)} --help` exit {r.rc}: {r.stderr_tail or 'no stderr'}"


def fmt(x: float | None, nd: int = 2) -> str:
    """Format a number or 'n/a'."""
    return "n/a" if x is None else f"{x:.{nd}f}"


def mark(ok: bool | None) -> str:
    """PASS/FAIL marker."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loadavg() -> str:
    """1/5/15-minute load averages."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def versions() -> dict[str, str]:
    """Versions of the relevant packages (read from metadata, nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in (
        "melcli",
        "numpy",
        "scipy",
        "librosa",
        "numba",
        "soundfile",
        "soxr",
        "joblib",
        "h5py",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# --------------------------------------------------------------------------- benchmark


class Bench:
    """Holds configuration, runs the rounds, renders the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.scale = "quick" if args.quick else "full"
        self.repeats: int = args.repeats or (1 if args.quick else 3)
        self.melcli = find_melcli(args.melcli)
        self.melcli_error: str | None = None
        self.contenders: list[Contender] = []
        self.extras: dict[str, Any] = {}
        self.inspect_h5: Path | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="melcli-bench-"))
        self.stamp: dict[str, Any] = {}
        self.n_cores = cores()
        self.timeout = 300.0 if args.quick else 1800.0
        self.load_start = loadavg()

    def data_dir(self, subset: str) -> Path:
        """Directory of one corpus subset."""
        return corpus.corpus_dir(self.scale) / subset

    def audio_s(self, subset: str) -> float:
        """Total seconds of audio in a subset."""
        return float(self.stamp["subsets"][subset]["audio_s"])

    def run_one(self, c: Contender) -> None:
        """Run contender ``c`` once and record the result.

        A failed run is recorded (ERR) and later runs still happen (melcli may be under
        development concurrently), except when the command cannot be started at all.
        """
        if c.runs and all(r.rc == 127 for r in c.runs):
            return
        if c.name == "melcli" and self.melcli_error is not None:
            c.error = self.melcli_error
            return
        outdir = self.scratch / "out"
        shutil.rmtree(outdir, ignore_errors=True)
        outdir.mkdir()
        r = run_process(
            c.command(self.data_dir(c.subset), outdir, self.melcli), timeout=self.timeout
        )
        c.runs.append(r)
        if r.ok and c.name == "melcli" and c.verify is None:
            self.verify_output(c, outdir / "feats.h5")
        if not r.ok:
            err = f"exit {r.rc}: {r.stderr_tail or 'no stderr'}"
            c.error = c.error or err
            log(f"  {c.key}: FAILED {err}")
        elif (
            c.name == "melcli"
            and c.kind == "mel"
            and self.inspect_h5 is None
            and (outdir / "feats.h5").exists()
        ):
            keep = self.scratch / "keep"
            keep.mkdir(exist_ok=True)
            for f in outdir.iterdir():
                shutil.move(str(f), keep / f.name)
            self.inspect_h5 = keep / "feats.h5"
        shutil.rmtree(outdir, ignore_errors=True)

    def verify_output(self, c: Contender, h5: Path) -> None:
        """Check melcli's output against librosa in a separate, untimed process."""
        assert c.kind is not None and c.params is not None
        if not h5.exists():
            c.verify = {"ok": False, "why": f"{h5.name} not written"}
            return
        r = run_process(
            [
                PY,
                BASELINES,
                "verify",
                str(h5),
                str(self.data_dir(c.subset)),
                "--kind",
                c.kind,
                "--params",
                c.params,
            ],
            poll=False,
        )
        c.verify = r.result or {"ok": None, "why": f"verifier exit {r.rc}: {r.stderr_tail}"}

    def run_subset(self, subset: str) -> None:
        """Round-robin over the subset's contenders, rotating the start every round."""
        cs = make_contenders(subset, self.quick and not self.args.full_matrix)
        self.contenders += cs
        for rep in range(self.repeats):
            k = rep % len(cs)
            order = cs[k:] + cs[:k]
            t0 = time.perf_counter()
            for c in order:
                self.run_one(c)
            log(
                f"{subset}: round {rep + 1}/{self.repeats} done in "
                f"{time.perf_counter() - t0:.1f} s (load {loadavg()})"
            )

    def run_extras(self) -> None:
        """--help, inspect and cold-vs-warm numba cache timings."""
        if self.melcli_error is not None:
            return
        n = 5
        helps = [run_process([*self.melcli, "--help"], poll=False) for _ in range(n)]
        self.extras["help"] = [r.wall for r in helps if r.ok]
        if self.inspect_h5 is None:  # make one output if the subsets did not
            d = self.scratch / "keep"
            d.mkdir(exist_ok=True)
            r = run_process(
                [
                    *self.melcli,
                    "mel",
                    str(self.data_dir("clips")),
                    "-o",
                    str(d / "feats.h5"),
                    "--overwrite",
                    "-q",
                ],
                poll=False,
            )
            if r.ok:
                self.inspect_h5 = d / "feats.h5"
        if self.inspect_h5 is not None:
            ins = [
                run_process([*self.melcli, "inspect", str(self.inspect_h5)], poll=False)
                for _ in range(n)
            ]
            self.extras["inspect"] = [r.wall for r in ins if r.ok]
            bad = [r for r in ins if not r.ok]
            if bad:
                self.extras["inspect_error"] = f"exit {bad[0].rc}: {bad[0].stderr_tail}"
        # cold vs warm numba cache: speech subset, speech parameters, mel
        data = self.data_dir("speech")
        out = self.scratch / "numba-out"
        out.mkdir(exist_ok=True)
        cmd = [
            *self.melcli,
            "mel",
            str(data),
            "-o",
            str(out / "feats.h5"),
            "--overwrite",
            "-q",
            *melcli_args("speech", "mel"),
        ]
        warm_dir = self.scratch / "numba-warm"
        warm_dir.mkdir(exist_ok=True)
        env_warm = dict(os.environ, NUMBA_CACHE_DIR=str(warm_dir))
        run_process(cmd, env=env_warm, poll=False)  # populate the warm cache
        cold, warm = [], []
        for i in range(1 if self.quick else self.repeats):
            cold_dir = self.scratch / f"numba-cold-{i}"
            cold_dir.mkdir()
            r1 = run_process(cmd, env=dict(os.environ, NUMBA_CACHE_DIR=str(cold_dir)), poll=False)
            r2 = run_process(cmd, env=env_warm, poll=False)
            if r1.ok:
                cold.append(r1.wall)
            if r2.ok:
                warm.append(r2.wall)
            shutil.rmtree(cold_dir, ignore_errors=True)
        self.extras["numba_cold"], self.extras["numba_warm"] = cold, warm
        self.extras["numba_cache_files"] = sum(1 for _ in warm_dir.rglob("*") if _.is_file())
        if not self.quick:
            # reference: what an empty numba cache costs the plain librosa loop (librosa's
            # guvectorize'd functions compile at import when their cache is missing)
            lib_cold = self.scratch / "numba-librosa-cold"
            lib_cold.mkdir()
            lib_cmd = [
                PY,
                BASELINES,
                "librosa",
                str(self.data_dir("speech")),
                str(out),
                "--kind",
                "mel",
                "--params",
                "speech",
                "--jobs",
                "1",
            ]
            r = run_process(
                lib_cmd, env=dict(os.environ, NUMBA_CACHE_DIR=str(lib_cold)), poll=False
            )
            if r.ok:
                self.extras["librosa_numba_cold"] = r.wall
                self.extras["librosa_numba_cold_import"] = (r.result or {}).get("t_import")

    def find(
        self, subset: str, params: str | None, kind: str | None, name: str
    ) -> Contender | None:
        """Look a contender up by identity."""
        for c in self.contenders:
            if c.key == (subset, params, kind, name):
                return c
        return None

    # ----------------------------------------------------------------------- report

    def floor(self, subset: str, params: str, kind: str) -> float | None:
        """(decode + minimal math) / cores, in-process medians."""
        d = self.find(subset, None, None, "decode")
        m = self.find(subset, None, None, "math")
        dv = d.median_field("decode_s") if d else None
        mv = m.median_field(params, f"{kind}_s") if m else None
        if dv is None or mv is None:
            return None
        return (dv + mv) / self.n_cores

    def report(self, subsets: list[str], started: str, elapsed: float) -> str:
        """Render the markdown report."""
        L: list[str] = []
        v = versions()
        L.append(f"# melcli benchmark ({self.scale}, {started})\n")
        L.append(
            f"- machine: {self.n_cores} cores ({cpu_model()}), {platform.platform()}; "
            f"load average at start {self.load_start}, at end {loadavg()}; "
            f"bench time {elapsed:.0f} s"
        )
        L.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
        env_keys = [
            k
            for k in sorted(os.environ)
            if k.startswith(("OPENBLAS", "OMP_", "MKL_", "NUMBA_", "JOBLIB", "LOKY"))
        ]
        L.append(
            "- environment (passed through unchanged): "
            + (", ".join(f"{k}={os.environ[k]}" for k in env_keys) or "no BLAS/numba vars")
        )
        L.append(
            f"- corpus: {corpus.corpus_dir(self.scale)} ({self.stamp['spec']['speech_source']}"
            "), "
            + ", ".join(
                f"{s} {self.stamp['subsets'][s]['n_files']} files / "
                f"{self.audio_s(s):.0f} s / {self.stamp['subsets'][s]['digest']}"
                for s in corpus.SUBSETS
            )
        )
        L.append(
            f"- {self.repeats} runs per contender, round-robin; wall = whole process, "
            "median; xRT = seconds of audio per wall-second; page cache warm"
        )
        L.append(
            "- decode / math rows: in-process seconds (decode: soundfile to float32; "
            "math: framing+window+float32 rfft+|X|^2[+mel matmul], 1 thread, blocks of "
            "~512 KB of frames into reused buffers, outputs not kept, fastest of 2 passes; "
            "audio already decoded, downmixed and resampled — resampling is not in the floor)"
        )
        L.append(
            f"- floor = (decode + math) / {self.n_cores} cores; limit = "
            f"{FLOOR_FACTOR} x floor + {FLOOR_FIXED} s; ratio = melcli / librosa-joblib "
            f"(target <= {RATIO_TARGET})"
        )
        L.append(
            "- peak MB: max over runs of the summed VmRSS of the process tree, polled "
            "every 20 ms from /proc (or the largest single process's ru_maxrss from "
            "wait4 if that is larger)"
        )
        L.append(
            f"- melcli: `{' '.join(self.melcli)}`"
            + (f" — **n/a: {self.melcli_error}**" if self.melcli_error else "")
        )
        L.append("")
        L.append("## Summary (xRT, higher is better)\n")
        L.append(
            "| subset | params | kind | decode only | minimal math, 1 core | librosa loop "
            "| librosa joblib x2 | melcli | melcli / joblib | melcli vs limit |"
        )
        L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        checks: list[tuple[str, bool | None]] = []
        for s in subsets:
            a = self.audio_s(s)
            dec = self.find(s, None, None, "decode")
            mat = self.find(s, None, None, "math")
            for params in PARAMS:
                for kind in KINDS:
                    cs = {
                        n: self.find(s, params, kind, n)
                        for n in ("melcli", "librosa-loop", "librosa-joblib")
                    }
                    if not any(cs.values()):
                        continue
                    dv = dec.median_field("decode_s") if dec else None
                    mv = mat.median_field(params, f"{kind}_s") if mat else None
                    xs = [a / dv if dv else None, a / mv if mv else None]
                    for n in ("librosa-loop", "librosa-joblib", "melcli"):
                        c = cs[n]
                        w = c.median_wall() if c else None
                        xs.append(a / w if w else None)
                    ratio, lim_txt = self._melcli_checks(s, params, kind, cs, checks)
                    L.append(
                        f"| {s} | {params} | {kind} | "
                        + " | ".join(
                            self._xrt(x, c)
                            for x, c in zip(
                                xs,
                                [dec, mat, cs["librosa-loop"], cs["librosa-joblib"], cs["melcli"]],
                                strict=True,
                            )
                        )
                        + f" | {ratio} | {lim_txt} |"
                    )
        L.append("")
        L.append("## All contenders\n")
        L.append(
            "Wall times of every run are listed in the `runs` column (for the decode and "
            "math rows these are whole-process times; their median column is in-process)."
            "\n"
        )
        L.append(
            "| subset | params | kind | contender | median wall s | runs | xRT | "
            "melcli / joblib | floor s | limit s | peak MB |"
        )
        L.append("|---|---|---|---|---:|---|---:|---:|---:|---:|---:|")
        for s in subsets:
            a = self.audio_s(s)
            for c in [c for c in self.contenders if c.subset == s]:
                if c.name in ("decode", "math"):
                    continue
                self._detail_row(L, c, a)
            dec = self.find(s, None, None, "decode")
            mat = self.find(s, None, None, "math")
            if dec:
                dv = dec.median_field("decode_s")
                L.append(
                    f"| {s} | - | - | decode only (in-process) | {fmt(dv, 3)} | "
                    f"{self._runs(dec)} | {fmt(a / dv if dv else None, 0)} | | | | "
                    f"{fmt(dec.peak_mb(), 0)} |"
                )
            if mat:
                for params in PARAMS:
                    r = mat.median_field(params, "resample_s")
                    for kind in ("mel", "stft"):  # what the minimal math computes
                        mv = mat.median_field(params, f"{kind}_s")
                        fl = self.floor(s, params, kind)
                        L.append(
                            f"| {s} | {params} | {kind} | minimal math 1 core "
                            f"(in-process; resample {fmt(r, 3)} s not included) | "
                            f"{fmt(mv, 3)} | {self._runs(mat)} | "
                            f"{fmt(a / mv if mv else None, 0)} | | {fmt(fl, 3)} | "
                            f"{fmt(None if fl is None else FLOOR_FACTOR * fl + FLOOR_FIXED)}"
                            f" | {fmt(mat.peak_mb(), 0)} |"
                        )
        L.append("")
        L.append("## Start-up, cold cache, memory\n")
        L.append("| check | measured | target | verdict |")
        L.append("|---|---:|---:|---|")
        h = self.extras.get("help")
        hm = statistics.median(h) if h else None
        checks.append(("help", None if hm is None else hm <= HELP_TARGET))
        L.append(
            f"| `melcli --help`, median of {len(h or [])} | {fmt(hm, 3)} s | "
            f"<= {HELP_TARGET} s | {mark(checks[-1][1])} |"
        )
        ins = self.extras.get("inspect")
        im = statistics.median(ins) if ins else None
        checks.append(("inspect", None if im is None else im <= INSPECT_TARGET))
        err = self.extras.get("inspect_error", "")
        L.append(
            f"| `melcli inspect feats.h5`, median of {len(ins or [])} | {fmt(im, 3)} s | "
            f"<= {INSPECT_TARGET} s | {mark(checks[-1][1])}{' ' + err if err else ''} |"
        )
        cold, warm = self.extras.get("numba_cold"), self.extras.get("numba_warm")
        if cold and warm:
            cm, wm = statistics.median(cold), statistics.median(warm)
            note = (
                " (the warm cache stayed empty: melcli caches no numba code, so cold and warm "
                "runs do the same work and the difference is run-to-run noise)"
                if self.extras.get("numba_cache_files") == 0
                else ""
            )
            checks.append(("numba", cm - wm <= COLD_TARGET))
            L.append(
                f"| empty NUMBA_CACHE_DIR vs warm (`melcli mel` speech/speech, "
                f"{len(cold)}+{len(warm)} runs; warm cache files: "
                f"{self.extras.get('numba_cache_files')}) | cold {cm:.2f} s, warm "
                f"{wm:.2f} s, diff {cm - wm:+.2f} s | <= +{COLD_TARGET} s | "
                f"{mark(checks[-1][1])}{note} |"
            )
            lc = self.extras.get("librosa_numba_cold")
            lw = self.find("speech", "speech", "mel", "librosa-loop")
            lwm = lw.median_wall() if lw else None
            if lc is not None:
                imp = self.extras.get("librosa_numba_cold_import")
                L.append(
                    f"| reference: librosa loop (speech/speech/mel) with an empty "
                    f"NUMBA_CACHE_DIR, 1 run | {lc:.2f} s (imports {fmt(imp)} s) vs warm "
                    f"{fmt(lwm)} s | | (info) |"
                )
        else:
            checks.append(("numba", None))
            L.append(f"| empty NUMBA_CACHE_DIR vs warm | n/a | <= +{COLD_TARGET} s | n/a |")
        if "long" in subsets:
            mins = self.audio_s("long") / 60
            for kind in KINDS:
                c = self.find("long", "speech", kind, "melcli")
                pk = c.peak_mb() if c else None
                ok = None if pk is None else pk <= LONG_MEM_TARGET_MB
                if kind == "mel":
                    checks.append(("long-mem", ok))
                tgt = f"<= {LONG_MEM_TARGET_MB:.0f} MB" if kind == "mel" else "(info)"
                L.append(
                    f"| peak RSS, process tree, `melcli {kind}` on the {mins:.0f}-min "
                    f"file, speech set | {fmt(pk, 0)} MB "
                    f"({fmt(c.median_wall() if c else None)} s) | {tgt} | "
                    f"{mark(ok) if kind == 'mel' else ''}"
                    f"{' ' + c.error if c and c.error else ''} |"
                )
            c = self.find("long", "speech", "mel", "librosa-loop")
            if c:
                L.append(
                    f"| peak RSS, librosa loop mel on the {mins:.0f}-min file (reference) | "
                    f"{fmt(c.peak_mb(), 0)} MB ({fmt(c.median_wall())} s) | | |"
                )
        ver = [c for c in self.contenders if c.name == "melcli" and c.verify is not None]
        if ver:
            bad = [c for c in ver if c.verify and c.verify.get("ok") is not True]
            worst = max((c.verify or {}).get("max_rel_err", 0.0) for c in ver)
            checks.append(("outputs", not bad))
            L.append(
                f"| melcli outputs vs librosa (entry count + 3 entries per configuration, "
                f"untimed) | {len(ver) - len(bad)}/{len(ver)} ok, max rel err {worst:.1e} | "
                f"<= 1e-3 | {mark(not bad)}"
                + "".join(
                    f"; {'/'.join(str(k) for k in c.key[:3])}: {(c.verify or {}).get('why')}"
                    for c in bad
                )
                + " |"
            )
        L.append("")
        n_pass = sum(1 for _, ok in checks if ok)
        n_fail = sum(1 for _, ok in checks if ok is False)
        n_na = sum(1 for _, ok in checks if ok is None)
        L.append(f"**Targets: {n_pass} pass, {n_fail} fail, {n_na} n/a.**")
        if self.quick:
            L.append(
                "\n_Quick mode: 10x smaller corpus, fewer runs, only the "
                + " and ".join(f"{p}/{k}" for p, k in QUICK_CONFIGS)
                + " configurations (unless --full-matrix), serial librosa loop for "
                "speech/mel only, one cold-numba run; numbers are dominated by process "
                "start-up and are noisy. Use `make bench` for the real table._"
            )
        return "\n".join(L) + "\n"

    def _melcli_checks(
        self,
        s: str,
        params: str,
        kind: str,
        cs: dict[str, Contender | None],
        checks: list[tuple[str, bool | None]],
    ) -> tuple[str, str]:
        m, j = cs["melcli"], cs["librosa-joblib"]
        mw = m.median_wall() if m else None
        jw = j.median_wall() if j else None
        if m is None or mw is None:
            why = self.melcli_error or (m.error if m else None) or "not run"
            return f"n/a ({why[:80]})", "n/a"
        ratio_ok = None if jw is None else mw / jw <= RATIO_TARGET
        if s != "long":  # no joblib contender (and no ratio target) on the long file
            checks.append((f"{s}/{params}/{kind} ratio", ratio_ok))
        ratio = "n/a" if jw is None else f"{mw / jw:.2f} {mark(ratio_ok)}"
        fl = self.floor(s, params, kind)
        if fl is None:
            return ratio, "n/a"
        lim = FLOOR_FACTOR * fl + FLOOR_FIXED
        if s == "long":  # the issue sets no time target on the long file
            return ratio, f"{mw:.2f} s vs {lim:.2f} s (info)"
        checks.append((f"{s}/{params}/{kind} floor", mw <= lim))
        return ratio, f"{mw:.2f} s vs {lim:.2f} s {mark(mw <= lim)}"

    @staticmethod
    def _xrt(x: float | None, c: Contender | None) -> str:
        if c is not None and c.error is not None and x is None:
            return "n/a (failed)"
        if c is not None and c.error is not None:
            return fmt(x, 0) + " (some runs failed)"
        return "-" if c is None else fmt(x, 0)

    @staticmethod
    def _runs(c: Contender) -> str:
        return " ".join(f"{r.wall:.2f}" if r.ok else "ERR" for r in c.runs)

    def _detail_row(self, L: list[str], c: Contender, a: float) -> None:
        w = c.median_wall()
        ratio = fl_txt = lim_txt = ""
        assert c.params is not None and c.kind is not None
        if c.name == "melcli" and w is not None:
            j = self.find(c.subset, c.params, c.kind, "librosa-joblib")
            jw = j.median_wall() if j else None
            if jw:
                ratio = f"{w / jw:.2f} {mark(w / jw <= RATIO_TARGET)}"
            fl = self.floor(c.subset, c.params, c.kind)
            if fl is not None:
                lim = FLOOR_FACTOR * fl + FLOOR_FIXED
                verdict = "(info)" if c.subset == "long" else mark(w <= lim)
                fl_txt, lim_txt = f"{fl:.3f}", f"{lim:.2f} {verdict}"
        n_bad = sum(1 for r in c.runs if not r.ok)
        name = c.name
        if c.error is not None:
            what = "n/a" if w is None else f"{n_bad}/{len(c.runs)} runs failed"
            name = f"{c.name} — {what}: {c.error[:160]}"
        if c.name == "melcli" and self.melcli_error:
            name = f"melcli — n/a: {self.melcli_error[:160]}"
        L.append(
            f"| {c.subset} | {c.params} | {c.kind} | {name} | {fmt(w)} | {self._runs(c)} | "
            f"{fmt(a / w if w else None, 0)} | {ratio} | {fl_txt} | {lim_txt} | "
            f"{fmt(c.peak_mb(), 0)} |"
        )

    def raw(self) -> dict[str, Any]:
        """Everything measured, for the JSON dump."""
        return {
            "scale": self.scale,
            "repeats": self.repeats,
            "melcli": self.melcli,
            "melcli_error": self.melcli_error,
            "stamp": self.stamp,
            "extras": self.extras,
            "contenders": [
                {"key": list(c.key), "error": c.error, "runs": [asdict(r) for r in c.runs]}
                for c in self.contenders
            ],
        }


def main(argv: list[str] | None = None) -> int:
    """Build the corpus, run everything, print and save the report."""
    ap = argparse.ArgumentParser(description="melcli benchmark (see bench/run.py docstring)")
    ap.add_argument("--quick", action="store_true", help="10x smaller corpus, 1 run each")
    ap.add_argument("--repeats", type=int, default=None, help="runs per contender (3; quick 1)")
    ap.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="SUBSET",
        help="restrict to subset(s): speech, music, clips, long (repeatable or comma-separated)",
    )
    ap.add_argument("--melcli", default=None, help="melcli command (default: the venv's)")
    ap.add_argument(
        "--full-matrix",
        action="store_true",
        help="with --quick: run every params x kind configuration anyway",
    )
    ap.add_argument(
        "--no-extras", action="store_true", help="skip --help/inspect/cold-numba timings"
    )
    args = ap.parse_args(argv)
    subsets = list(corpus.SUBSETS)
    if args.only:
        want = {x.strip() for o in args.only for x in o.split(",") if x.strip()}
        bad = want - set(corpus.SUBSETS)
        if bad:
            ap.error(f"unknown subset(s): {', '.join(sorted(bad))}")
        subsets = [s for s in corpus.SUBSETS if s in want]

    b = Bench(args)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.perf_counter()
    try:
        log(f"corpus ({b.scale}) ...")
        b.stamp = corpus.build(b.scale)
        t_bench = time.perf_counter()
        b.melcli_error = probe_melcli(b.melcli)
        if b.melcli_error:
            log(f"melcli not usable, its rows will be n/a: {b.melcli_error}")
        for s in subsets:
            log(f"subset {s}: {b.audio_s(s):.0f} s of audio")
            b.run_subset(s)
        if not args.no_extras:
            log("extras: --help, inspect, cold/warm numba cache")
            b.run_extras()
        elapsed = time.perf_counter() - t_bench
        md = b.report(subsets, started, elapsed)
    finally:
        shutil.rmtree(b.scratch, ignore_errors=True)
    sys.stdout.write(md)
    sys.stdout.flush()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y-%m-%d_%H%M%S") + ("_quick" if args.quick else "")
    (RESULTS_DIR / f"{stem}.md").write_text(md)
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(b.raw(), indent=1) + "\n")
    log(
        f"wrote {RESULTS_DIR / (stem + '.md')} (bench {elapsed:.0f} s, total "
        f"{time.perf_counter() - t_start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
