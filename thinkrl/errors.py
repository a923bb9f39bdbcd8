"""User-facing errors.

`ThinkrlError` carries a one-line message meant for a person: what was wrong, where, and what was
expected. The CLI turns it into `error: <message>` on stderr and exit code 2, never a traceback.
`IncompleteError` (exit code 3) is the same for work that failed in part and resumes on a rerun.
Anything else that escapes is a bug and keeps its traceback.
"""


class ThinkrlError(Exception):
    """Bad input or a failed precondition, reported as one line (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever the caller passed


class IncompleteError(ThinkrlError):
    """Work that failed in part (judge requests the server never answered usably): everything that finished is
    kept and the artifact is left unfinished (no manifest), so a rerun of the same command does only the rest
    (exit code 3)."""

    exit_code = 3
