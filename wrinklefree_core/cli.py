"""`wrinklefree <command> key=value ...`: the one entry point a local run and a cloud job both execute.

The stage commands and their help come from the stage registry (stages/base.py); `config` and
`options` print configuration. Overrides use the config syntax documented in docs/configuration.md
(`group=option`, `a.b=value`). Inputs (`model=`, `checkpoint=`, `teacher=`) and `out=` may be
gs://bucket/prefix URIs; with `gcs.enabled=true gcs.bucket=NAME` and no `out=`, outputs go to that
bucket (artifacts/io.py). Errors exit non-zero with one line that says what is wrong and what to use
instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import yaml

from wrinklefree_core.stages.base import Stage, commands

INFO_COMMANDS = {
    "config": "print the resolved config of a stage: `wrinklefree config train training=unified ...`",
    "options": "list the options of every config group",
}


def _cmd_config(args: argparse.Namespace) -> int:
    from wrinklefree_core.config import compose

    names = ", ".join(commands())
    if not args.overrides or "=" in args.overrides[0]:
        raise SystemExit(f"usage: wrinklefree config STAGE [key=value ...]  (STAGE: {names})")
    stage, overrides = args.overrides[0], args.overrides[1:]
    cfg = compose(stage, overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _cmd_options(args: argparse.Namespace) -> int:
    from wrinklefree_core.config import group_options
    from wrinklefree_core.config.run import GROUPS

    for group in GROUPS:
        print(f"{group}: {', '.join(group_options(group))}")
    return 0


def run_command(stage: Stage, args: argparse.Namespace) -> int:
    """Compose the stage's config from the overrides, run it, print its report (or `--json`)."""
    from wrinklefree_core.config import ConfigError, compose

    cfg = compose(stage.command, args.overrides)
    problem = stage.check(cfg)
    if problem:
        raise ConfigError(problem)
    if stage.announce is not None:
        print(stage.announce(cfg), flush=True)
    result = stage.run(cfg)
    if not result.metrics:  # a non-zero rank of a multi-device run: rank 0 reports
        return 0
    print(json.dumps(stage.as_json(result)) if args.json else stage.report(result))
    return 0


def command_table() -> dict[str, Callable[[argparse.Namespace], int]]:
    """Every command: the registry's stages, then config and options."""
    table: dict[str, Callable[[argparse.Namespace], int]] = {
        name: (lambda args, stage=stage: run_command(stage, args)) for name, stage in commands().items()
    }
    table.update(config=_cmd_config, options=_cmd_options)
    return table


def _help() -> str:
    lines = ["commands:"]
    for name, stage in commands().items():
        usage = (stage.usage or stage.summary).splitlines()
        lines.append(f"  {name:<9} {usage[0]}")
        lines += [f"            {more}" for more in usage[1:]]
    lines += [f"  {name:<9} {text}" for name, text in INFO_COMMANDS.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wrinklefree",
        description="Turn HF language models into ternary BitNet models that llama.cpp runs.",
        epilog=_help() + "\n\nExample: wrinklefree convert model=smollm2_135m out=outputs/smollm2-bitnet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(command_table()), help="what to run")
    parser.add_argument("overrides", nargs="*", help="config overrides: group=option or a.b.c=value")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    from wrinklefree_core.console import quiet_libraries
    from wrinklefree_core.errors import USER_ERRORS

    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return command_table()[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
