"""User-facing errors.

A `CapatlasError` is an input problem the user can fix (bad config, missing
file, malformed record). The CLI prints its message without a traceback and
exits with status 2; anything else is a bug and keeps its traceback.
"""


class CapatlasError(Exception):
    """An error caused by the user's input; the message names the culprit."""
