"""The one user-facing error type. Its message says what is wrong and ends with the fix."""


class UserError(Exception):
    """An error caused by input (a loop file, a flag, a workspace): shown as lines, never a traceback."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)
