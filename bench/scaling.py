#!/usr/bin/env python3
"""How far one melcli client goes on a Dask cluster (docs/scaling.md).

Measures, on this machine, with the bench corpus (``bench/corpus.py``, full scale):

* ``compute``: one core's rate of features out (MB/s of output) for ``mel`` and
  ``stft`` with librosa's defaults, `melcli.pipeline.extract` in this process;
* ``fetch``: the client receiving finished results from two local Dask workers
  over TCP (MB/s), one result at a time as `melcli.cluster.DaskExecutor` does;
* ``write``: the client writing those results through melcli's own writer and
  checkpoint spool (`melcli.store.H5Writer`, `melcli.workdir.Spool`), MB/s;
* ``sharded``: the same with ``--shards``: the workers write the results into
  shard files (`melcli.store.write_shard`, timed as part of their tasks) and the
  client fetches records and links them (`melcli.store.H5Writer.link_piece`,
  spool): the client's rate in MB/s of the features it makes available;
* ``overhead``: a Dask task's cost for one client (empty tasks through the
  scheduler, as many in flight as `DaskExecutor` keeps), ms per task;
* ``rows``: whole ``melcli`` runs, ``--scheduler`` with two local workers
  (``--nthreads 1`` each; with shards, the default, and ``--no-shards``) against
  local ``-j 2``, on the speech and music subsets (median wall of ``--repeats``
  runs, alternated).

From these: the cluster size at which one client's write path saturates,
``workers = client rate / compute rate per core``. Results go to stdout as JSON.

Usage: ``python bench/scaling.py [--repeats 3] [--only rates|rows]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402

MB = 1e6
MELCLI = str(Path(sys.executable).parent / "melcli")


def log(msg: str) -> None:
    """Progress to stderr."""
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def files_of(subset: str) -> list[Path]:
    """The audio files of one subset of the full bench corpus (built if missing)."""
    corpus.build("full", verbose=False)
    root = corpus.corpus_dir("full") / subset
    return sorted(p for p in root.iterdir() if p.suffix in (".wav", ".flac"))


def compute_rate(kind: str, files: list[Path]) -> dict[str, float]:
    """One core: features out per second of `extract` (decode included), in MB/s."""
    from melcli import pipeline
    from melcli.discover import Source
    from melcli.params import FeatureParams

    pipeline.worker_init()
    params = FeatureParams(kind=kind)
    pipeline.extract(Source("warm", str(files[0])), params)  # imports, caches
    out, started = 0, time.perf_counter()
    for p in files:
        res = pipeline.extract(Source(p.name, str(p)), params)
        assert res.data is not None, res.failure
        out += res.data.nbytes
    took = time.perf_counter() - started
    return {"seconds": took, "output_mb": out / MB, "mb_per_s": out / MB / took}


def start_cluster(workers: int = 2) -> tuple[Any, Any]:
    """A `distributed.LocalCluster` of single-threaded worker processes, and a client."""
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    )  # fmt: skip
    return cluster, Client(cluster, set_as_default=False)


def fetch_all(futures: list[Any]) -> tuple[list[Any], float]:
    """Wait until every task is done on the workers, then fetch the results one task
    at a time as `melcli.cluster.DaskExecutor` does: (results, seconds fetching)."""
    for f in futures:  # every result computed and held by the workers
        while f.status == "pending":
            time.sleep(0.01)
    results, started = [], time.perf_counter()
    for f in futures:
        results.extend(f.result())
    return results, time.perf_counter() - started


def rates(nbytes: int, fetch: float, verb: str, took: float, entries: int) -> dict[str, float]:
    """The client's rates: fetching, then writing or linking (``verb``), then both."""
    return {
        "output_mb": nbytes / MB,
        "fetch_mb_per_s": nbytes / MB / fetch,
        f"{verb}_mb_per_s": nbytes / MB / took,
        "client_mb_per_s": nbytes / MB / (fetch + took),
        "entries_per_s": entries / (fetch + took),
    }


def client_rates(kind: str, files: list[Path], client: Any) -> dict[str, float]:
    """The client's path for results: fetch from the workers, then write (HDF5 + spool)."""
    from melcli import cluster, store
    from melcli.discover import Source
    from melcli.params import FeatureParams
    from melcli.pipeline import Task
    from melcli.plan import source_state
    from melcli.workdir import Spool, WorkDir

    params = FeatureParams(kind=kind)
    from melcli._version import __version__

    futures = [
        client.submit(
            cluster.run_batch, [Task(Source(p.name, str(p)))], params, __version__, pure=False
        )  # fmt: skip
        for p in files
    ]
    results, fetch = fetch_all(futures)
    nbytes = sum(r.data.nbytes for r in results if r.data is not None)
    client.cancel(futures)
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        out = Path(tmp) / "feats.h5"
        work = WorkDir(out)
        work.start({"params": params.to_dict(), "format": "h5"}, keep=False)
        writer = store.open_writer(out, "h5", work, out.with_suffix(".json"))
        spool = Spool(work, read_back=writer.read_piece)
        started = time.perf_counter()
        for res in results:
            assert res.meta is not None and res.data is not None
            state = source_state(res.source.path, checksum=False).fields()
            rec = {**res.meta.to_dict(), **state}
            writer.write_piece(rec, 0, res.data)
            spool.add_entry(rec, res.data)
        spool.flush()
        write = time.perf_counter() - started
        writer.abort()
        work.remove()
    return rates(nbytes, fetch, "write", write, len(results))


def sharded_rates(kind: str, files: list[Path], client: Any, per_task: int) -> dict[str, float]:
    """``--shards``: the client fetches records (the workers wrote the arrays into
    shard files, ``per_task`` files to a task and a shard) and links them into the
    HDF5 file, with the spool's checkpoints."""
    from melcli import cluster, store
    from melcli._version import __version__
    from melcli.discover import Source
    from melcli.params import FeatureParams
    from melcli.pipeline import Shards, Task
    from melcli.plan import source_state
    from melcli.workdir import Spool, WorkDir

    params = FeatureParams(kind=kind)
    tasks = [Task(Source(p.name, str(p))) for p in files]
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        out = Path(tmp) / "feats.h5"
        work = WorkDir(out)
        work.start({"params": params.to_dict(), "format": "h5"}, keep=False)
        work.shards.mkdir()
        futures = [
            client.submit(
                cluster.run_batch,
                tasks[i : i + per_task],
                params,
                __version__,
                Shards(str(work.shards), "h5"),
                pure=False,
            )  # fmt: skip
            for i in range(0, len(tasks), per_task)
        ]
        results, fetch = fetch_all(futures)
        client.cancel(futures)
        writer = store.open_writer(out, "h5", work, out.with_suffix(".json"))
        spool = Spool(work, read_back=writer.read_piece)
        assert isinstance(writer, store.H5Writer)
        nbytes, started = 0, time.perf_counter()
        for res in results:
            assert res.meta is not None and res.stored is not None
            state = source_state(res.source.path, checksum=False).fields()
            rec = {**res.meta.to_dict(), **state}
            st = res.stored
            writer.link_piece(rec, 0, st.shard, st.dataset, st.frames)
            spool.add_entry({**rec, "shard": st.shard, "dataset": st.dataset,
                             "frames": st.frames}, np.empty((0,), np.float32))  # fmt: skip
            nbytes += store.entry_nbytes(rec)
        spool.flush()
        link = time.perf_counter() - started
        writer.abort()
        work.remove()
    return rates(nbytes, fetch, "link", link, len(results))


def task_overhead(client: Any, n: int = 2000, in_flight: int = 4) -> float:
    """Milliseconds per empty task, through the scheduler, ``in_flight`` out at once."""
    from distributed import as_completed

    done = as_completed(loop=client.loop)
    it = iter(range(n))
    for i in range(in_flight):
        done.add(client.submit(int, next(it), pure=False, key=f"empty-{i}"))
    started = time.perf_counter()
    for future in done:
        future.release()
        nxt = next(it, None)
        if nxt is not None:
            done.add(client.submit(int, nxt, pure=False, key=f"empty-{nxt}"))
    return (time.perf_counter() - started) / (n - in_flight) * 1e3


def run_rows(address: str, repeats: int) -> list[dict[str, Any]]:
    """Whole runs: --scheduler (two local workers) against local -j 2, alternated."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling-rows-") as tmp:
        for subset in ("speech", "music"):
            data = corpus.corpus_dir("full") / subset
            for kind in ("mel", "stft"):
                walls: dict[str, list[float]] = {"-j 2": [], "--scheduler": [], "--no-shards": []}
                extras = {"-j 2": ["-j", "2"], "--scheduler": ["--scheduler", address],
                          "--no-shards": ["--scheduler", address, "--no-shards"]}  # fmt: skip
                for rep in range(repeats):
                    order = list(walls) if rep % 2 == 0 else list(walls)[::-1]
                    for how in order:
                        extra = extras[how]
                        cmd = [MELCLI, kind, str(data), "-o", f"{tmp}/o.h5", "--overwrite", "-q",
                               *extra]  # fmt: skip
                        started = time.perf_counter()
                        subprocess.run(cmd, check=True, capture_output=True)
                        walls[how].append(time.perf_counter() - started)
                med = {how: statistics.median(w) for how, w in walls.items()}
                rows.append({
                    "subset": subset, "kind": kind, "j2_s": med["-j 2"],
                    "cluster_s": med["--scheduler"], "ratio": med["--scheduler"] / med["-j 2"],
                    "cluster_no_shards_s": med["--no-shards"],
                    "no_shards_ratio": med["--no-shards"] / med["-j 2"], "walls": walls,
                })  # fmt: skip
                log(f"{subset} {kind}: -j 2 {med['-j 2']:.2f} s, --scheduler (shards) "
                    f"{med['--scheduler']:.2f} s, "
                    f"--no-shards {med['--no-shards']:.2f} s")  # fmt: skip
    return rows


def main() -> None:
    """Measure and print the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["rates", "rows"])
    args = ap.parse_args()
    report: dict[str, Any] = {"cores": len(os.sched_getaffinity(0))}
    speech, music = files_of("speech"), files_of("music")
    cluster, client = start_cluster()
    try:
        if args.only != "rows":
            for kind in ("mel", "stft"):
                report[f"compute_{kind}"] = compute_rate(kind, speech[:60] + music[:12])
                log(f"compute {kind}: {report[f'compute_{kind}']}")
                report[f"client_{kind}"] = client_rates(kind, speech[:60] + music[:12], client)
                log(f"client {kind}: {report[f'client_{kind}']}")
                for per_task in (1, 24):  # as client_rates; as melcli batches 10 s files
                    name = f"sharded_{kind}_{per_task}"
                    report[name] = sharded_rates(kind, speech[:60] + music[:12], client, per_task)
                    log(f"{name}: {report[name]}")
                    report[f"saturation_{name}"] = (
                        report[name]["client_mb_per_s"] / report[f"compute_{kind}"]["mb_per_s"]
                    )
                report[f"saturation_{kind}"] = (
                    report[f"client_{kind}"]["client_mb_per_s"]
                    / report[f"compute_{kind}"]["mb_per_s"]
                )
            report["task_overhead_ms"] = task_overhead(client)
            log(f"task overhead: {report['task_overhead_ms']:.2f} ms")
        if args.only != "rates":
            report["rows"] = run_rows(cluster.scheduler_address, args.repeats)
    finally:
        client.close()
        cluster.close()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
