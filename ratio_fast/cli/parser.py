"""The argparse parser and help formatting shared by the subcommands, and the flags of the
settings config.py declares: every subcommand's flags, help and defaults come from there."""
from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterable

from ..config import OPTIONS, about, declared_default, flag_name, item_type, value_type
from ..errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, reading every value that starts like a negative number ("-1,2", "-1e-3") as a
    value, as Python 3.13 does, rather than as an unknown flag: a bad number then gets the command's
    one-line error (e.g. "--radii must be a finite number > 0, got -1.0"), not argparse's usage text.
    (Set on the parser itself, so every subcommand's parser, of this class too, does the same.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default after its help; on/off for switches; the epilog as written.

    A default of None is not shown: those flags' help says what happens without them.
    """

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "%(default)" in help_text:
            return help_text
        if not action.option_strings:
            return help_text
        if isinstance(action, argparse.BooleanOptionalAction):
            return f"{help_text} (default: {'on' if action.default else 'off'})"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            # The default of a switch is whether the flag's effect is on without the flag.
            return f"{help_text} (default: {'on' if action.default == action.const else 'off'})"
        return f"{help_text} (default: %(default)s)"


class _Lists(argparse.Action):
    """A repeatable flag whose values replace its default (e.g. the list from --config) rather than extend it."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else list(items)
        setattr(namespace, self.dest, items + [values])


def add_settings(p: argparse.ArgumentParser, config_class, group: str, defaults=None, g=None, *,
                 only: Iterable[str] | None = None, skip: Iterable[str] = ()):
    """Add the flags of `config_class`'s settings (config.py) in `group`, in their declaration
    order, to `g` (default: a new argument group; OPTIONS: the parser itself); returns where they
    went. `defaults`: an instance whose values the flags default to (default: the declared ones).
    A list setting (tuple[...]) is a comma list, shown and taken as text: `config_from_args`
    reads it."""
    g = g or (p if group == OPTIONS else p.add_argument_group(group))
    for field in dataclasses.fields(config_class):
        info = about(field)
        if (info.group != group or not info.has_flag or field.name in skip
                or (only is not None and field.name not in only)):
            continue
        kind, may_be_unset = value_type(field)
        default = getattr(defaults, field.name) if defaults is not None else declared_default(field)
        # A setting with a noun is checked by the config, in one line naming its choices; argparse would add its usage.
        choices = None if info.noun else info.choices
        help_text = info.help.replace("%", "%%")  # argparse formats help with %
        options = dict(default=default, help=help_text, metavar=info.metavar, choices=choices)
        if kind == "bool" and not info.negatable:
            options.update(action="store_true")
        elif kind == "bool":
            options.update(action=argparse.BooleanOptionalAction)
            if may_be_unset:  # None: the fast choice for the device, decided when the command knows its device
                options.update(help=help_text + " (default: on for CUDA, off for CPU)")
        elif kind == "list[str]":
            options.update(action=_Lists)
        elif kind.startswith("tuple["):  # the items are checked by the config, in one line per bad item
            options.update(default=None if default is None else comma_list(default), choices=None)
        else:
            options.update(type={"int": int, "float": float, "str": None}[kind])
        g.add_argument(flag_name(field.name), **{key: value for key, value in options.items() if value is not None})
    return g


def setting_groups(config_class) -> list[str]:
    """The --help groups of `config_class`'s settings, in the order of their first setting."""
    return list(dict.fromkeys(about(field).group for field in dataclasses.fields(config_class)))


def comma_list(values) -> str:
    """A list setting's value as its flag takes it: 0.5,1,1.5 (numbers as %g), or none for no values."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "none"


def config_from_args(config_class, args: argparse.Namespace):
    """The `config_class` of the parsed flags (comma lists read here); UserError naming the flag."""
    values = {}
    for field in dataclasses.fields(config_class):
        if not hasattr(args, field.name):
            continue
        value, (kind, _) = getattr(args, field.name), value_type(field)
        if kind.startswith("tuple[") and isinstance(value, str):
            value = _read_list(flag_name(field.name), value, item_type(kind))
        values[field.name] = value
    return config_class(**values)


def _read_list(flag: str, text: str, kind: str) -> tuple:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if items == ["none"]:
        return ()
    if not items:
        raise UserError(f"{flag}: empty list")
    convert, noun = {"int": (int, "an integer"), "float": (float, "a number"), "str": (str, "")}[kind]
    values = []
    for item in items:
        try:
            values.append(convert(item))
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not {noun}") from None
    return tuple(values)
