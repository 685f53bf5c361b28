"""The one exception type that means "the user's input or usage is wrong" (exit status 2)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or invocation.

    The CLI prints ``str(error)`` on one line and exits 2, without a traceback, so the
    message must name what is wrong and where: the file, the record and the field.
    """

    exit_code = 2


def where(file: str | None = None, record: str | None = None, field: str | None = None) -> str:
    """Format a location as ``file:record: field`` for one-line error messages."""
    parts = [p for p in (file, record) if p]
    loc = ":".join(parts)
    if field:
        loc = f"{loc}: field '{field}'" if loc else f"field '{field}'"
    return loc
