"""Training configs as TOML files whose keys are ``deconvnet train`` options.

A config names options by their long flag with underscores (``batch_size = 8``,
``lr_steps = [9000]``); the command line overrides any of them. Built-in configs live in
``deconvkernels/configs/`` and are named without the suffix (``--config deconvnet_stage1``).
The options a run used, config and command line merged, are saved in its checkpoints.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN_DIR", "builtin_configs", "find_config", "load_config", "check_config"]

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "configs"


def builtin_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A config file: a path, or the name of a built-in config."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_DIR / f"{path.name}.toml"
    if path.suffix == "" and builtin.is_file():
        return builtin
    raise FileNotFoundError(
        f"config {os.fspath(name_or_path)!r} not found (not a file, not a built-in: "
        f"{', '.join(builtin_configs())})"
    )


def load_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config; a syntax error is a ``ValueError`` naming the file and line."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = find_config(name_or_path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {os.fspath(path)!r}: {e}") from e


def _expected(action: argparse.Action) -> tuple[type, ...] | str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        return (bool,)
    kind = action.type or str
    if action.nargs in ("*", "+"):
        return "list"
    if kind is float:
        return (int, float)
    return (kind,)


def check_config(
    config: dict[str, Any], parser: argparse.ArgumentParser, source: str
) -> dict[str, Any]:
    """Check a config against a parser's options: unknown keys and wrong types are a
    ``ValueError`` naming the key, the file and what was expected. Returns argparse defaults."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key not in actions:
            raise ValueError(
                f"config {source!r}: unknown key {key!r}; known: {', '.join(sorted(actions))}"
            )
        action = actions[key]
        expected = _expected(action)
        if expected == "list":
            item = action.type or str
            if not isinstance(value, list) or not all(
                isinstance(v, item) and not isinstance(v, bool) for v in value
            ):
                raise ValueError(
                    f"config {source!r}: {key} must be a list of {item.__name__}, got {value!r}"
                )
        elif not isinstance(value, expected) or (
            isinstance(value, bool) and bool not in expected
        ):
            names = "/".join(t.__name__ for t in expected)
            raise ValueError(f"config {source!r}: {key} must be {names}, got {value!r}")
        if action.choices is not None and value not in action.choices:
            raise ValueError(
                f"config {source!r}: {key} must be one of {list(action.choices)}, got {value!r}"
            )
        out[key] = value
    return out
