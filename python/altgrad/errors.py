"""Exceptions raised by the altgrad package.

A failed C call surfaces as AltgradError carrying the ag_err code and the text
of ag_strerror() (plus the daemon's own message for remote errors). A few codes
map onto subclasses that also derive from the matching builtin exception, so
callers can catch LookupError or TimeoutError without knowing altgrad.
"""

from __future__ import annotations

from . import _lib


class AltgradError(Exception):
    """A libaltgrad call failed; `code` is the ag_err value (negative)."""

    def __init__(self, code: int, message: str = None):
        self.code = int(code)
        if message is None:
            message = _lib.strerror(code)
        self.message = message
        super().__init__(f"{message} ({self.code})")


class NotFoundError(AltgradError, LookupError):
    """AG_ENOTFOUND: no such run, tensor or format."""


class AltgradTimeoutError(AltgradError, TimeoutError):
    """AG_ETIMEDOUT: the daemon did not answer in time."""


class RemoteError(AltgradError):
    """AG_EREMOTE: the daemon answered with an error."""


class TransportError(AltgradError, ConnectionError):
    """AG_ETRANSPORT: no daemon there (a query fails at once, its message
    naming the socket and why), or another transport failure."""


class LostError(AltgradError):
    """AG_ELOST: the daemon stored a later message but not every earlier one,
    so those were lost on the way (flush; the count is stats()["undelivered"])."""


class FormatError(AltgradError, ValueError):
    """AG_EFORMAT / AG_EEXIST: an impossible or conflicting format definition."""


class InvalidArgumentError(AltgradError, ValueError):
    """AG_EINVAL / AG_ERANGE: the C library rejected an argument."""


_BY_CODE = {
    _lib.AG_ENOTFOUND: NotFoundError,
    _lib.AG_ETIMEDOUT: AltgradTimeoutError,
    _lib.AG_EREMOTE: RemoteError,
    _lib.AG_ETRANSPORT: TransportError,
    _lib.AG_ELOST: LostError,
    _lib.AG_EFORMAT: FormatError,
    _lib.AG_EEXIST: FormatError,
    _lib.AG_EINVAL: InvalidArgumentError,
    _lib.AG_ERANGE: InvalidArgumentError,
}


def error_for(code: int, detail: str = None) -> AltgradError:
    """The exception for ag_err `code`; `detail` (e.g. the daemon's text) is
    appended to the ag_strerror text when given."""
    text = _lib.strerror(code)
    if detail:
        text = f"{text}: {detail}"
    return _BY_CODE.get(int(code), AltgradError)(code, text)


def check(code: int, detail: str = None) -> int:
    """Raise the matching AltgradError when `code` is negative; else return it."""
    if code < 0:
        raise error_for(code, detail)
    return code
