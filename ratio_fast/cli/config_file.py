"""Training settings from a JSON file (`--config FILE`), checked field by field against TrainConfig.

A run directory's config.json is a valid input, so a finished run can be repeated or varied:
`ratio-fast train --config runs/a/config.json --seed 1 --out runs/b`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..choices import DEFAULT_NORM
from ..config import NORM_DEFAULTS, TrainConfig, flag_name, upgrade_legacy_settings, value_type
from ..errors import UserError

# Field type (as written in config.py, without "| None") -> JSON types accepted for it; null
# is accepted too where the field may be None.
_ACCEPTED = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list[str]": (list,)}


def read_config_file(path: str | Path) -> dict:
    """The settings in `path` as TrainConfig field values; UserError naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: cannot read it ({e})") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--config {path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a JSON object of settings, got {type(values).__name__}")
    values = upgrade_legacy_settings(values, f"--config {path}")  # config.json files of earlier versions
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    for name, value in values.items():
        kind, may_be_unset = value_type(fields[name])
        accepted = _ACCEPTED[kind] + ((type(None),) if may_be_unset else ())
        is_bool_as_number = isinstance(value, bool) and bool not in accepted
        not_strings = isinstance(value, list) and not all(isinstance(item, str) for item in value)
        if not isinstance(value, accepted) or is_bool_as_number or not_strings:
            wanted = str(fields[name].type).replace("None", "null")
            raise UserError(f"--config {path}: {name} must be {wanted}, got {json.dumps(value)}")
    try:
        TrainConfig(**values)  # the ranges (finite radii, positive sizes, ...) as for flags
    except UserError as e:
        raise UserError(f"--config {path}: {e}") from None
    return values


def check_norm_change(path: str | Path, file_settings: dict, given: set[str], norm: str) -> None:
    """UserError if --norm on the command line differs from the file's norm while the file sets
    radii or step sizes (of its norm) that the command line leaves as they are: an L2 radius of
    0.5 would otherwise become an L-infinity box of 0.5."""
    file_norm = file_settings.get("norm", DEFAULT_NORM)
    stale = [name for name in NORM_DEFAULTS if file_settings.get(name) is not None and name not in given]
    if "norm" in given and norm != file_norm and stale:
        flags = ", ".join(flag_name(name) for name in stale)
        raise UserError(f"--norm {norm}: --config {path} sets {flags} for {file_norm}; give them for {norm} "
                        f"on the command line too, or take them out of the file")
