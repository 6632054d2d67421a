"""The one exception type for mistakes a user can fix (bad flags, files, checkpoints).

The CLI prints these as a single line without a traceback; everything else is a bug and
keeps its traceback.
"""


class UserError(ValueError):
    """A problem with the user's input: the message names the flag or file and what is wrong.

    A ValueError, so code that embeds the API objects can catch bad settings the usual way.
    """


class TrainingStopped(Exception):
    """A run that cannot usefully continue (e.g. every step diverges): reported in one line, exit 1."""


class Note(UserWarning):
    """Something a user should know that is no error (a file loaded unverified, images skipped):
    a warning for API users, one 'note:' line in the CLI."""
