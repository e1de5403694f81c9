"""The main job's output, as a newcomer reads it off a log file: no ERROR, no traceback, little of
llama.cpp's own log, progress lines from every training stage, and a final summary.

Runs `python -m flows.full_pipeline model=tiny_llama smoke=true` as a subprocess with its output
going to a pipe (not a terminal), with its own temporary Prefect server and no analytics setting in
the environment: main() itself must keep the server's telemetry heartbeat off.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Lines llama.cpp itself writes (model loader, tensor buffers, LoRA adapter loading, ggml).
LLAMA_CPP_LINE = re.compile(r"^(llama_|load_tensors|load_|print_info|ggml_|gguf_|lora|llm_|graph_|sched_|set_abort)")


def test_main_job_output_is_clean_and_ends_with_a_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    out_root = tmp_path / "pipeline"
    proc = subprocess.run(
        [sys.executable, "-m", "flows.full_pipeline", "model=tiny_llama", "smoke=true", f"out_root={out_root}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    output = proc.stdout  # both streams, in the order a log file would hold them
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output and not re.search(r"\|\s*ERROR\s*\|", output), output[-4000:]
    llama_lines = [ln for ln in output.splitlines() if LLAMA_CPP_LINE.match(ln)]
    assert len(llama_lines) <= 10, llama_lines[:20]
    assert "Loading weights" not in output, "transformers' per-file bars stay off"
    for stage in ("train", "lrc", "distill"):
        assert re.search(rf"\b{stage}: step 3/3 \(100%\), loss [\d.]+, [\d.]+ s/step, done$", output, re.M), stage
    tail = output.rstrip().splitlines()
    assert tail[-1].startswith("total time: ") and any(ln.startswith("GGUF: ") for ln in tail[-8:])
    assert any(ln.startswith("export-gguf") for ln in tail[-16:]), "the eval table is in the final summary"
    assert any(ln.startswith("MLflow model: wrinklefree-tiny_llama version ") for ln in tail[-8:]), "where to download the model"
    store = f"sqlite:///{Path(env['WRINKLEFREE_CACHE']) / 'mlflow' / 'mlflow.db'}"  # the default store, under the cache
    assert "WRINKLEFREE_MLFLOW_STORE" not in env and f"in {store} (experiment wrinklefree)" in output
    gguf_dir = next(out_root.glob("export/*"))
    assert (gguf_dir / "llama_cpp.log").read_text().count("\n") > 10, "llama.cpp's log went to its file"
