"""altgrad: watch which tensors lose their updates to 8-bit rounding.

Python bindings over libaltgrad (ctypes, no build step):
- altgrad.quantization: the seed engine's API (formats, quantize, scales, stalls)
- altgrad.Client: stream statistics and gradient snapshots to altgradd, query it
- altgrad.torch.Monitor: attach to a PyTorch model + optimizer
"""

from ._lib import LibraryNotFound, library_path
from .errors import (AltgradError, AltgradTimeoutError, FormatError, InvalidArgumentError,
                     LostError, NotFoundError, RemoteError, TransportError)

__version__ = "0.1.0"


def version() -> str:
    """The loaded libaltgrad's version string."""
    from . import _lib
    return _lib.lib().ag_version().decode()


def __getattr__(name):
    # Client is imported lazily so `import altgrad.quantization` works with a
    # core-only library and without paying for the client's declarations.
    if name == "Client":
        from .client import Client
        return Client
    raise AttributeError(f"module 'altgrad' has no attribute {name!r}")


__all__ = ["Client", "AltgradError", "NotFoundError", "AltgradTimeoutError", "RemoteError",
           "TransportError", "LostError", "FormatError", "InvalidArgumentError",
           "LibraryNotFound", "library_path", "version", "__version__"]
