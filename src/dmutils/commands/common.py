"""Arguments shared by the commands that read params."""
from __future__ import annotations

import argparse


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """The params file and ``--set`` overrides, shared by every command that reads params."""
    parser.add_argument("params", nargs="?", default=None, help="params YAML (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set masks.tau=2 (repeatable)")


def describe_data(role: str, dataset) -> str:
    """One line naming what a command reads: role, folder, split and image count (no surprise dataset)."""
    root, split = getattr(dataset, "root", "?"), getattr(dataset, "split", None)
    return f"{role}: {root}" + (f", split {split}" if split else "") + f", {len(dataset)} images"
