"""The errors portway reports to users: a message, a hint, an exit code.

Every failure a user can cause or meet ends up as a PortwayError, so the CLI
can print one line (what is wrong, what to do) without a traceback.
"""

from __future__ import annotations


class PortwayError(Exception):
    """A failure with a message for the user and a hint on what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def line(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def wrap(self, context: str) -> PortwayError:
        """The same error with context in front: `attach web to app: create veth: ...`."""
        return type(self)(f"{context}: {self.message}", self.hint, self.exit_code)

    def to_dict(self) -> dict[str, object]:
        return {"error": self.message, "hint": self.hint, "exit_code": self.exit_code}


class InvalidInput(PortwayError):
    """The request is malformed or contradicts itself; nothing was changed."""

    exit_code = 2


class NotFound(PortwayError):
    exit_code = 3


class Conflict(PortwayError):
    """The request collides with something that exists (a name, an address, a port)."""

    exit_code = 4


class KernelError(PortwayError):
    """The kernel refused an operation; what was done so far has been undone."""

    exit_code = 5


class TeardownErrors(PortwayError):
    """Several errors collected while tearing down; teardown went on past each."""

    def __init__(self, context: str, errors: list[str]) -> None:
        super().__init__(f"{context}: " + "; ".join(errors), "run 'portway gc' to retry", 5)
        self.errors = errors
