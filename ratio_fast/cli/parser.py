"""The argparse parser and help formatting shared by the subcommands."""
import argparse
import re


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
        if isinstance(action.default, (list, tuple)):  # as the flag takes it: "a,b", or "none" for no values
            shown = ",".join(str(value) for value in action.default) or "none"
            return f"{help_text} (default: {shown.replace('%', '%%')})"
        return f"{help_text} (default: %(default)s)"
