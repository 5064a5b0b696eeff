"""The one exception type users see.

A `UserError` is bad input, not a bug: the CLI prints its message as a single
`error: ...` line (no traceback) and exits with status 2. Messages name the file
or config key at fault and say how to fix it.
"""


class UserError(Exception):
    """Bad input from the user: a file, a config key, a command-line value."""
