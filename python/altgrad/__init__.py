"""altgrad: watch which tensors lose their updates to 8-bit rounding.

Python bindings over libaltgrad (ctypes, no build step):
- altgrad.quantization: the seed engine's API (formats, quantize, scales, stalls)
- altgrad.Client: stream statistics and gradient snapshots to altgradd, query it
- altgrad.torch.Monitor: attach to a PyTorch model + optimizer
"""

from ._lib import LibraryNotFound, library_path
from .errors import (AltgradError, AltgradTimeoutError, FormatError, InvalidArgumentError,
                     LostError, NotFoundError, RemoteError, TransportError)

__version__ = "0.2.0"


def version() -> str:
    """The loaded libaltgrad's version string."""
    from . import _lib
    return _lib.lib().ag_version().decode()


def get_format(name):
    """Any registered format by name (built-in or defined; see
    altgrad.quantization.get_format), usable wherever the seed's formats are."""
    from .quantization.formats import get_format as _get
    return _get(name)


def list_formats(bits=None):
    """Every registered format, or those `bits` wide."""
    from .quantization.formats import list_formats as _list
    return _list(bits)


def __getattr__(name):
    # Client is imported lazily so `import altgrad.quantization` works with a
    # core-only library and without paying for the client's declarations.
    if name == "Client":
        from .client import Client
        return Client
    raise AttributeError(f"module 'altgrad' has no attribute {name!r}")


__all__ = ["Client", "AltgradError", "NotFoundError", "AltgradTimeoutError", "RemoteError",
           "TransportError", "LostError", "FormatError", "InvalidArgumentError",
           "LibraryNotFound", "library_path", "version", "__version__", "get_format",
           "list_formats"]
