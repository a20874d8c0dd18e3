"""User-facing errors.

A `UserError` is something the user can fix (a missing file, a bad spec, a mismatched checkpoint).
The CLI prints its message on one line and exits with status 2, without a traceback; the Python API
simply raises it.
"""


class UserError(Exception):
    """An error caused by the user's input; its message says what is wrong and what to do."""
