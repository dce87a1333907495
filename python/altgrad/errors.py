"""Exceptions raised by the altgrad package, and the error codes.

A failed C call surfaces as AltgradError carrying the ag_err code and the text
of ag_strerror() (plus the daemon's own message for remote errors). A few codes
map onto subclasses that also derive from the matching builtin exception, so
callers can catch LookupError or TimeoutError without knowing altgrad.

A leaf module: it imports nothing of the package. ERRORS is Python's copy of
AG_ERRNO_MAP in include/altgrad/altgrad.h (name, value, ag_strerror text);
python/tests/test_abi.py checks it against the header and the library.
"""

from __future__ import annotations

ERRORS = (
    ("OK", 0, "success"),
    ("EINVAL", -1, "invalid argument"),
    ("ENOMEM", -2, "out of memory"),
    ("EFORMAT", -3, "unknown or impossible format"),
    ("EEXIST", -4, "a different format is registered under that name"),
    ("ERANGE", -5, "value out of range"),
    ("ENOSPC", -6, "table full"),
    ("EPROTO", -7, "malformed message"),
    ("EVERSION", -8, "unsupported protocol version"),
    ("ETOOBIG", -9, "message, string or array too large"),
    ("EAGAIN", -10, "send queue full, message dropped"),
    ("ETIMEDOUT", -11, "timed out"),
    ("ECLOSED", -12, "closed"),
    ("ENOTFOUND", -13, "not found"),
    ("ETRANSPORT", -14, "transport error"),
    ("ESTORE", -15, "database error"),
    ("EIO", -16, "I/O error"),
    ("EREMOTE", -17, "the daemon reported an error"),
    ("ELOST", -18, "messages were lost on the way to the daemon"),
)
CODES = {"AG_" + name: value for name, value, _ in ERRORS}
_TEXT = {value: text for _, value, text in ERRORS}
globals().update(CODES)  # AG_OK, AG_EINVAL, ... as module constants


def strerror(code: int) -> str:
    """ag_strerror's text for `code`, without a call into the library."""
    return _TEXT.get(int(code), "unknown error")


class AltgradError(Exception):
    """A libaltgrad call failed; `code` is the ag_err value (negative)."""

    def __init__(self, code: int, message: str = None):
        self.code = int(code)
        if message is None:
            message = strerror(code)
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
    AG_ENOTFOUND: NotFoundError,
    AG_ETIMEDOUT: AltgradTimeoutError,
    AG_EREMOTE: RemoteError,
    AG_ETRANSPORT: TransportError,
    AG_ELOST: LostError,
    AG_EFORMAT: FormatError,
    AG_EEXIST: FormatError,
    AG_EINVAL: InvalidArgumentError,
    AG_ERANGE: InvalidArgumentError,
}


def error_for(code: int, detail: str = None) -> AltgradError:
    """The exception for ag_err `code`; `detail` (e.g. the daemon's text) is
    appended to the ag_strerror text when given."""
    text = strerror(code)
    if detail:
        text = f"{text}: {detail}"
    return _BY_CODE.get(int(code), AltgradError)(code, text)


def check(code: int, detail: str = None) -> int:
    """Raise the matching AltgradError when `code` is negative; else return it."""
    if code < 0:
        raise error_for(code, detail)
    return code
