"""Help formatting shared by the subcommands."""
import argparse


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
