"""docs/quality.md stays true to the CLI: every `python -m model` command in it parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from model.cli import build_parser
from model.quality.configs import parse_configs
from model.quality.learned import pyiqa_name
from model.quality.vocab import OWN_METRICS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "quality.md").read_text()


def _commands() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", DOC, flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [
        shlex.split(line.split("#")[0])[3:]
        for line in text.splitlines()
        if line.strip().startswith("python -m model ")
    ]


def test_every_documented_command_parses() -> None:
    commands = _commands()
    assert {c[0] if c[0] != "-v" else c[1] for c in commands} == {"degrade", "eval"}
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # exits (SystemExit) on an unknown option or value
        if args.command == "eval":
            parse_configs(args.configs.split(","))
            for name in args.metrics.split(","):
                assert name in OWN_METRICS or pyiqa_name(name)
