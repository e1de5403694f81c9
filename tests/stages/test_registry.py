"""The stage registry is the one place a stage is named: everything else is generated from it.

- The pipeline, the CLI's commands, planning, the SkyPilot command line, MLflow run numbers, the
  Prefect forms and the per-stage flows all list the registered stages, in the registry's order.
- The recipe in docs/architecture.md, done once: a toy stage is one file, found by the registry as
  if it sat in wrinklefree_core/stages/. In a fresh process it then runs from the CLI, is refused by
  its own check, sits in the pipeline between distill and export, has its own typed Prefect flow,
  and that flow runs it through a real Prefect engine and caches it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from flows.params import PipelineParams
from flows.stage_flows import FLOWS
from flows.stage_params import STAGE_PARAMS
from tasks.skypilot_task import stage_command
from tasks.stage_plan import STAGES
from wrinklefree_core.cli import build_parser
from wrinklefree_core.stages.base import commands, get, number, pipeline_names, register, upstream_of

REPO = Path(__file__).resolve().parents[2]


def test_every_layer_lists_the_registered_stages_in_order():
    assert pipeline_names() == ("convert", "train", "lrc", "distill", "export") == STAGES
    assert list(commands()) == ["convert", "train", "export", "eval"]
    choices = build_parser()._actions[1].choices
    assert sorted(choices) == sorted([*commands(), "config", "options"])
    assert list(FLOWS) == list(STAGE_PARAMS) == list(STAGES)
    fields = list(PipelineParams.model_fields)
    assert fields[fields.index("common") + 1 : fields.index("eval")] == list(STAGES)
    assert [PipelineParams.model_fields[s].title for s in STAGES] == [f"{n} · {s}" for n, s in enumerate(STAGES, 1)]
    assert [number(s) for s in STAGES] == [1, 2, 3, 4, 5] and number("eval") == 0
    assert upstream_of("convert") is None and upstream_of("export").name == "distill"
    # lrc and distill run as `wrinklefree train` with their recipe first, so a later training= still wins.
    assert stage_command("lrc", ["training.max_steps=3"]) == ("train", ["training=lrc_calibration", "training.max_steps=3"])
    assert stage_command("export", ["format=gguf"]) == ("export", ["format=gguf"])
    deployments = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())["deployments"]
    entrypoints = {d["entrypoint"] for d in deployments}
    assert {f"flows/stage_flows.py:{s}_flow" for s in STAGES} <= entrypoints


def test_a_name_is_registered_once():
    convert = get("convert")
    assert register(convert) is convert  # the same entry again (a re-import) is no change
    with pytest.raises(ValueError, match="stage 'convert' is registered twice"):
        register(dataclasses.replace(convert, summary="another convert"))
    assert get("convert") is convert


def test_a_stage_check_refuses_a_config_that_does_not_do_the_stage():
    from wrinklefree_core.config import compose

    assert get("lrc").problem(compose("train", ["training=unified", "checkpoint=x"])).startswith("stage 'lrc' needs a recipe")
    assert get("distill").problem(compose("train", ["training=bitdistill_full"])).startswith("stage 'distill' needs its input checkpoint")
    assert get("distill").problem(compose("train", ["training=bitdistill_full", "checkpoint=x"])) is None


TOY = '''
    """A toy stage: records the checkpoint it was given in out/toy.json (a test of the registry's recipe)."""

    from __future__ import annotations

    import json
    from pathlib import Path

    from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, build_manifest, manifest_json
    from wrinklefree_core.artifacts.result import StageResult
    from wrinklefree_core.stages.base import Section, Stage, register


    def run_toy(cfg):
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "toy.json").write_text(json.dumps({"checkpoint": cfg.checkpoint, "threads": cfg.compute.num_nodes}))
        metrics = {"answer": 42.0}
        (out / MANIFEST_NAME).write_text(manifest_json(build_manifest("toy", cfg.model_dump(mode="json"), {"checkpoint": cfg.checkpoint}, metrics)))
        return StageResult(out=out, metrics=metrics, summary=f"toy wrote {out}")


    STAGE = register(
        Stage(
            name="toy",
            summary="BitNet checkpoint -> toy.json",
            command="toy",
            run=run_toy,
            position=45,
            sections=(Section("compute", "Where the toy runs."),),
            check=lambda cfg: "toy runs on one node: pass compute.num_nodes=1" if cfg.compute.num_nodes != 1 else None,
        )
    )
'''

PROBE = '''
    import contextlib, io, json, sys
    from pathlib import Path

    import wrinklefree_core.stages as package

    package.__path__.append(sys.argv[1])  # the toy's file, found as if it sat in wrinklefree_core/stages/
    work = Path(sys.argv[2])

    from prefect.utilities.callables import parameter_schema

    from flows.params import PipelineParams
    from flows.stage_flows import FLOWS
    from tasks.stage_plan import STAGES
    from wrinklefree_core import cli

    found = {"stages": list(STAGES), "fields": list(PipelineParams.model_fields)}
    found["titles"] = {s: PipelineParams.model_fields[s].title for s in ("toy", "export")}
    schema = parameter_schema(FLOWS["toy"]).model_dump()
    found["flow_params"] = list(schema["properties"])
    found["flow_upstream"] = schema["properties"]["upstream_uri"]["description"]
    found["export_upstream"] = parameter_schema(FLOWS["export"]).model_dump()["properties"]["upstream_uri"]["description"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        found["cli_rc"] = cli.main(["toy", "checkpoint=/some/checkpoint", f"out={work / 'cli'}", "--json"])
    found["cli_out"] = printed.getvalue().strip().splitlines()[-1]
    found["refused_rc"] = cli.main(["toy", "compute.num_nodes=2", f"out={work / 'refused'}"])
    first = FLOWS["toy"](upstream_uri=str(work / "cli"), out_root=str(work / "root"))
    again = FLOWS["toy"](upstream_uri=str(work / "cli"), out_root=str(work / "root"))
    found["flow"] = [first["cached"], again["cached"], first["uri"], again["uri"]]
    found["flow_toy_json"] = json.loads((Path(first["uri"]) / "toy.json").read_text())
    print("RESULT " + json.dumps(found))
'''


def test_a_toy_stage_is_one_file_that_every_layer_picks_up(tmp_path):
    (tmp_path / "stage_dir").mkdir()
    (tmp_path / "stage_dir" / "toy.py").write_text(textwrap.dedent(TOY))
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "probe.py"), str(tmp_path / "stage_dir"), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(lines[-1].removeprefix("RESULT "))
    assert found["stages"] == ["convert", "train", "lrc", "distill", "toy", "export"]
    fields = found["fields"]
    assert fields[fields.index("common") + 1 : fields.index("eval")] == found["stages"]
    assert found["titles"] == {"toy": "5 · toy", "export": "6 · export"}
    assert found["flow_params"][:2] == ["upstream_uri", "compute"] and "refresh" in found["flow_params"]
    assert found["flow_upstream"].startswith("the distill stage's output") and found["export_upstream"].startswith("the toy stage's output")
    assert found["cli_rc"] == 0 and json.loads(found["cli_out"]) == {"out": str(tmp_path / "cli"), "metrics": {"answer": 42.0}}
    assert found["refused_rc"] == 2 and "toy runs on one node" in done.stderr and not (tmp_path / "refused").exists()
    cached_first, cached_again, uri, uri_again = found["flow"]
    assert (cached_first, cached_again) == (False, True) and uri == uri_again
    assert Path(uri).parent == tmp_path / "root" / "toy"
    assert found["flow_toy_json"] == {"checkpoint": str(tmp_path / "cli"), "threads": 1}
