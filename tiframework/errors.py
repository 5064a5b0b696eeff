"""The one exception type users see.

A `UserError` is bad input, not a bug: the CLI prints its message as a single
`error: ...` line (no traceback) and exits with status 2. Messages name the file
or config key at fault and say how to fix it.
"""


class UserError(Exception):
    """Bad input from the user: a file, a config key, a command-line value."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run after it saved its current step.

    A `KeyboardInterrupt`, so code that treats Ctrl-C as "not a failure" (a sweep's trial is
    redone, not counted) still does; `message` says where the run saved and how to resume
    (the CLI prints it and exits 130), `summary` is what `summary.json` holds (None when a
    second Ctrl-C stopped it before it could save).
    """

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.message, self.summary = message, summary
