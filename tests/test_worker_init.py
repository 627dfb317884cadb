"""Worker set-up in one place (issue 9, item 4): the compute functions change no
process-wide state; each executor applies `worker_init` where its work runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import AudioFactory

PROBE = """
import json, sys
from threadpoolctl import threadpool_info
from melcli import pipeline
from melcli.discover import Source
from melcli.params import FeatureParams

def blas():
    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

before = blas()
res = pipeline.extract(Source("a.wav", sys.argv[1]), FeatureParams(kind="mel"))
assert res.failure is None, res.failure
after_extract = blas()
pipeline.worker_init()
print(json.dumps([before, after_extract, blas()]))
"""


def test_extract_leaves_blas_threads_alone_and_worker_init_sets_them(
    audio: AudioFactory, tmp_path: Path
) -> None:
    path = audio.mix("a.wav", sr=16000, seconds=1.0)
    env_threads = "3"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120,
        env={"OPENBLAS_NUM_THREADS": env_threads, "OMP_NUM_THREADS": env_threads,
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    before, after_extract, after_init = json.loads(proc.stdout)
    assert before and min(before) > 1  # the caller's setting (2 cores here at least)
    assert after_extract == before  # extract left it alone
    assert set(after_init) == {1}
