"""Loading libaltgrad and declaring its C API for ctypes.

Everything else in the package talks to the C library through the `lib()`
handle returned here. The structs mirror include/altgrad/altgrad.h field for
field (python/tests/test_abi.py checks them against the header with a C
compiler); a symbol the loaded library lacks (an older or core-only build) is
left undeclared, and func(name) raises AltgradError for it. The client's
declarations live in client.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading
from ctypes import (POINTER, c_char, c_char_p, c_double, c_float, c_int, c_int64, c_size_t,
                    c_uint8, c_uint16, c_uint64, c_void_p)

# ---------------------------------------------------------------------------
# Constants of altgrad.h
# ---------------------------------------------------------------------------
# The error codes: errors.py holds the one Python copy of AG_ERRNO_MAP.
from .errors import CODES as _CODES  # noqa: E402  (errors is a leaf module)
globals().update(_CODES)

AG_FORMAT_NAME_MAX = 15
AG_FORMATS_MAX = 64
AG_SCALE_MIN = 1e-10
AG_AMAX_HISTORY_DEFAULT_LEN = 16
AG_AMAX_HISTORY_MAX_LEN = 65536
AG_GRAD_EPSILON = 1e-10
AG_NAME_MAX = 255
AG_LAUNCH_ID_MAX = 128

AG_AMAX_MAX = 0
AG_AMAX_MOST_RECENT = 1

AG_ROLE_WEIGHT = 0
AG_ROLE_GRADIENT = 1
AG_ROLE_ACTIVATION = 2
AG_ROLE_UPDATE = 3
ROLES = {"weight": AG_ROLE_WEIGHT, "gradient": AG_ROLE_GRADIENT,
         "activation": AG_ROLE_ACTIVATION, "update": AG_ROLE_UPDATE}

# ag_result: the results whose document keys ag_result_key() lists.
AG_RESULT_RUNS = 0
AG_RESULT_TENSORS = 1
AG_RESULT_HISTORY = 2
AG_RESULT_SCALES = 3
AG_RESULT_TOP = 4
AG_RESULT_STATUS = 5
AG_RESULT_REPORT = 6

AG_DTYPE_F32 = 0
AG_DTYPE_BF16 = 1
AG_DTYPE_F16 = 2
# the daemon's --formats default (altgrad.h AG_DEFAULT_FORMATS)
AG_DEFAULT_FORMATS = "E0M7,E1M6,E3M4,E5M2,E7M0"
# ag_status.caps bits (altgrad.h)
AG_CAP_BUNDLE = 1
AG_CAP_QERR = 2
AG_CAP_SHM = 4  # r_run only: the daemon can map this client's shared-memory segment


# ---------------------------------------------------------------------------
# Structs (same layout as altgrad.h)
# ---------------------------------------------------------------------------
class ag_format(ctypes.Structure):
    _fields_ = [
        ("name", c_char * (AG_FORMAT_NAME_MAX + 1)),
        ("exponent_bits", c_int),
        ("mantissa_bits", c_int),
        ("bias", c_int),
        ("has_inf", c_int),
        ("has_nan", c_int),
        ("max_finite", c_float),
        ("min_positive", c_float),
        ("min_exponent", c_int),
        ("max_exponent", c_int),
        ("bits", c_int),
        ("pattern_bytes", c_int),
        ("nan_mode", c_int),
        ("unscaled", c_int),
        ("block", c_int),
        ("element", ctypes.c_void_p),
        ("scale_kind", c_int),
    ]


class ag_quant_error(ctypes.Structure):
    _fields_ = [
        ("sq_error", c_double),
        ("sq_signal", c_double),
        ("count", c_uint64),
    ]


class ag_stall_counts(ctypes.Structure):
    _fields_ = [
        ("stalled", c_uint64),
        ("total", c_uint64),
        ("overflow", c_uint64),
        ("underflow", c_uint64),
        ("nonfinite", c_uint64),
    ]


class ag_run_info(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("host", c_char_p),
        ("pid", c_int64),
        ("client_id", c_uint64),
        ("started_ms", c_int64),
        ("ended_ms", c_int64),
        ("last_step", c_uint64),
        ("messages", c_uint64),
        ("dropped", c_uint64),
        ("metadata", c_char_p),
        ("world_size", c_uint64),
        ("ranks_seen", c_uint64),
        ("rank_drops", c_char_p),
        ("incomplete", c_uint64),
    ]


class ag_run_list(ctypes.Structure):
    _fields_ = [("n", c_size_t), ("items", POINTER(ag_run_info))]


class ag_tensor_info(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("role", c_int),
        ("numel", c_uint64),
        ("first_step", c_uint64),
        ("last_step", c_uint64),
        ("snapshots", c_uint64),
        ("last_amax", c_double),
    ]


class ag_tensor_list(ctypes.Structure):
    _fields_ = [("n", c_size_t), ("items", POINTER(ag_tensor_info))]


class ag_history_point(ctypes.Structure):
    _fields_ = [
        ("step", c_uint64),
        ("stalled", c_uint64),
        ("total", c_uint64),
        ("stall_rate", c_double),
        ("flips", c_uint64),
        ("overflow", c_uint64),
        ("underflow", c_uint64),
        ("nonfinite", c_uint64),
        ("amax", c_double),
        ("scale", c_double),
        ("computed", c_char_p),
        ("ranks", c_uint64),
        ("complete", c_uint64),
        ("mse", c_double),
        ("sqnr_db", c_double),
    ]


class ag_history(ctypes.Structure):
    _fields_ = [
        ("run", c_char_p),
        ("tensor", c_char_p),
        ("format", c_char_p),
        ("n", c_size_t),
        ("points", POINTER(ag_history_point)),
    ]


class ag_history_query(ctypes.Structure):
    _fields_ = [
        ("run", c_char_p),
        ("tensor", c_char_p),
        ("format", c_char_p),
        ("from_step", c_uint64),
        ("to_step", c_uint64),
        ("every", c_uint64),
    ]


class ag_scale_info(ctypes.Structure):
    _fields_ = [
        ("tensor", c_char_p),
        ("step", c_uint64),
        ("amax", c_double),
        ("scale", c_double),
    ]


class ag_scale_list(ctypes.Structure):
    _fields_ = [("format", c_char_p), ("n", c_size_t), ("items", POINTER(ag_scale_info))]


class ag_top_entry(ctypes.Structure):
    _fields_ = [
        ("tensor", c_char_p),
        ("stalled", c_uint64),
        ("total", c_uint64),
        ("stall_rate", c_double),
        ("steps", c_uint64),
    ]


class ag_top_list(ctypes.Structure):
    _fields_ = [
        ("format", c_char_p),
        ("from_step", c_uint64),
        ("to_step", c_uint64),
        ("n", c_size_t),
        ("items", POINTER(ag_top_entry)),
    ]


class ag_report_row(ctypes.Structure):
    _fields_ = [
        ("tensor", c_char_p),
        ("format", c_char_p),
        ("steps", c_uint64),
        ("last_rate", c_double),
        ("mean_rate", c_double),
        ("max_rate", c_double),
        ("sparkline", c_char_p),
        ("last_sqnr_db", c_double),
    ]


class ag_report(ctypes.Structure):
    _fields_ = [("n", c_size_t), ("items", POINTER(ag_report_row))]


class ag_status(ctypes.Structure):
    _fields_ = [
        ("version", c_char_p),
        ("uptime_s", c_double),
        ("messages", c_uint64),
        ("bytes", c_uint64),
        ("rejected", c_uint64),
        ("dropped", c_uint64),
        ("queue_depth", c_uint64),
        ("rows_written", c_uint64),
        ("runs", c_uint64),
        ("tensors", c_uint64),
        ("db_path", c_char_p),
        ("formats", c_char_p),
        ("store", c_char_p),
        ("discarded", c_uint64),
        ("history_len", c_uint64),
        ("amax_mode", c_char_p),
        ("scale_mode", c_char_p),
        ("margin", c_double),
        ("scale_min", c_double),
        ("caps", c_uint64),
        ("shm_segments", c_uint64),
        ("shm_passed", c_uint64),
        ("shm_snapshots", c_uint64),
        ("shm_refused", c_uint64),
    ]


# ---------------------------------------------------------------------------
# Signatures: name -> (restype, argtypes)
# ---------------------------------------------------------------------------
_fmt_p = POINTER(ag_format)
_f32_p = POINTER(c_float)
_u8_p = POINTER(c_uint8)
_u16_p = POINTER(c_uint16)
_counts_p = POINTER(ag_stall_counts)

CORE_SIGNATURES = {
    "ag_strerror": (c_char_p, [c_int]),
    "ag_err_name": (c_char_p, [c_int]),
    "ag_version": (c_char_p, []),
    "ag_format_get": (_fmt_p, [c_char_p]),
    "ag_format_count": (c_size_t, []),
    "ag_format_at": (_fmt_p, [c_size_t]),
    "ag_format_define": (c_int, [c_char_p, c_int, c_int, c_int, c_int, c_int,
                                 POINTER(_fmt_p)]),
    "ag_format_define_ex": (c_int, [c_char_p, c_int, c_int, c_int, c_int, POINTER(_fmt_p)]),
    "ag_format_list": (c_size_t, [c_int, POINTER(_fmt_p), c_size_t]),
    "ag_format_unscaled": (c_int, [_fmt_p, POINTER(_fmt_p)]),
    "ag_encode": (c_uint16, [_fmt_p, c_float]),
    "ag_decode": (c_float, [_fmt_p, c_uint16]),
    "ag_quant_error_multi": (c_int, [POINTER(_fmt_p), _f32_p, c_size_t, c_void_p, c_size_t,
                                     POINTER(ag_quant_error)]),
    "ag_quant_mse": (c_double, [POINTER(ag_quant_error)]),
    "ag_quant_sqnr_db": (c_double, [POINTER(ag_quant_error)]),
    "ag_encode_array": (c_int, [_fmt_p, c_float, c_void_p, c_void_p, c_size_t]),
    "ag_decode_array": (c_int, [_fmt_p, c_float, c_void_p, c_void_p, c_size_t]),
    "ag_quantize": (None, [_fmt_p, c_float, c_void_p, c_void_p, c_size_t]),
    "ag_quantize_checked": (c_int, [_fmt_p, c_float, c_void_p, c_void_p, c_size_t]),
    "ag_dequantize": (c_int, [c_float, c_void_p, c_void_p, c_size_t]),
    "ag_amax": (c_int, [c_void_p, c_size_t, _f32_p, POINTER(c_uint64)]),
    "ag_compute_scale": (c_double, [c_double, _fmt_p, c_double]),
    "ag_amax_history_new": (c_int, [POINTER(c_void_p), c_size_t, c_int]),
    "ag_amax_history_free": (None, [c_void_p]),
    "ag_amax_history_push": (c_int, [c_void_p, c_double]),
    "ag_amax_history_update": (c_int, [c_void_p, c_void_p, c_size_t]),
    "ag_amax_history_get": (c_double, [c_void_p]),
    "ag_amax_history_size": (c_size_t, [c_void_p]),
    "ag_amax_history_capacity": (c_size_t, [c_void_p]),
    "ag_amax_history_nonfinite": (c_uint64, [c_void_p]),
    "ag_amax_history_reset": (None, [c_void_p]),
    "ag_amax_history_values": (c_int, [c_void_p, POINTER(c_double), c_size_t,
                                       POINTER(c_size_t)]),
    "ag_stall_sgd": (c_int, [_fmt_p, c_float, c_float, c_void_p, c_void_p, c_size_t,
                             _counts_p]),
    "ag_stall_update": (c_int, [_fmt_p, c_float, c_void_p, c_void_p, c_size_t, _counts_p]),
    "ag_block_stall_sgd": (c_int, [_fmt_p, c_float, c_float, c_void_p, c_void_p, c_size_t,
                                   _counts_p]),
    "ag_block_stall_update": (c_int, [_fmt_p, c_float, c_void_p, c_void_p, c_size_t,
                                      _counts_p]),
    "ag_block_scale": (c_int, [_fmt_p, c_float, c_void_p, c_size_t, POINTER(c_float)]),
    "ag_stall_sgd_multi": (c_int, [POINTER(_fmt_p), _f32_p, c_size_t, c_float, c_void_p,
                                   c_void_p, c_size_t, _counts_p]),
    "ag_stall_update_multi": (c_int, [POINTER(_fmt_p), _f32_p, c_size_t, c_void_p,
                                      c_void_p, c_size_t, _counts_p]),
    "ag_count_flips": (c_int, [_fmt_p, c_void_p, c_float, c_void_p, c_float, c_size_t,
                               POINTER(c_uint64)]),
    "ag_count_pattern_flips": (c_int, [_fmt_p, c_float, c_void_p, c_void_p, c_size_t,
                                       POINTER(c_uint64)]),
    "ag_role_name": (c_char_p, [c_int]),
    "ag_role_parse": (c_int, [c_char_p]),
    "ag_bf16_to_f32": (c_int, [c_void_p, c_void_p, c_size_t]),
    "ag_f16_to_f32": (c_int, [c_void_p, c_void_p, c_size_t]),
    "ag_free": (None, [c_void_p]),
    "ag_result_key": (c_char_p, [c_int, c_size_t]),
}

class LibraryNotFound(OSError):
    """libaltgrad could not be located or loaded."""


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def candidate_paths() -> list:
    """Where the library is looked for, in order (existing files only, except
    the explicit $ALTGRAD_LIBRARY which is returned as given)."""
    env = os.environ.get("ALTGRAD_LIBRARY")
    if env:
        return [env]
    pkg = _package_dir()
    paths = [os.path.join(pkg, name) for name in ("libaltgrad.so", "libaltgrad.so.0.2",
                                                  "libaltgrad.dylib")]
    # Source tree: python/altgrad -> <root>/build*/libaltgrad.so. Plain "build"
    # first, then the newest other build dir; sanitized or fuzz builds cannot
    # be loaded into an uninstrumented interpreter, so they are skipped.
    root = os.path.dirname(os.path.dirname(pkg))
    builds = []
    for d in glob.glob(os.path.join(root, "build*")):
        base = os.path.basename(d)
        if any(tag in base for tag in ("asan", "san", "fuzz")):
            continue
        lib = os.path.join(d, "libaltgrad.so")
        if os.path.isfile(lib):
            builds.append((base != "build", -os.path.getmtime(lib), lib))
    paths += [lib for _, _, lib in sorted(builds)]
    return [p for p in paths if os.path.isfile(p)]


def _declare(cdll, table):
    missing = []
    for name, (restype, argtypes) in table.items():
        fn = getattr(cdll, name, None)
        if fn is None:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    return missing


_lock = threading.Lock()
_cdll = None
_path = None


def load(path: str = None):
    """Load (once) and return the ctypes handle of libaltgrad."""
    global _cdll, _path
    with _lock:
        if _cdll is not None and path is None:
            return _cdll
        tried = []
        paths = [path] if path else candidate_paths()
        found = None
        if not path and not os.environ.get("ALTGRAD_LIBRARY"):
            sys_name = ctypes.util.find_library("altgrad")
            if sys_name:
                paths.append(sys_name)
            paths.append("libaltgrad.so.0.2")
        for p in paths:
            try:
                found = ctypes.CDLL(p)
                _path = p
                break
            except OSError as e:
                tried.append(f"{p}: {e}")
        if found is None:
            raise LibraryNotFound(
                "libaltgrad not found; build it (cmake --build build --target altgrad) or set "
                "ALTGRAD_LIBRARY to its path. Tried: " + ("; ".join(tried) or "nothing"))
        missing = _declare(found, CORE_SIGNATURES)
        if "ag_strerror" in missing or "ag_format_get" in missing:
            raise LibraryNotFound(f"{_path} is not libaltgrad (no ag_strerror/ag_format_get)")
        _cdll = found
        return found


def lib():
    return _cdll if _cdll is not None else load()


def library_path() -> str:
    lib()
    return _path


def has(name: str) -> bool:
    """Whether the loaded library exports the C function `name`."""
    return getattr(lib(), name, None) is not None


def strerror(code: int) -> str:
    s = lib().ag_strerror(int(code))
    return s.decode() if s else f"error {code}"


def func(name: str):
    """The declared C function `name`; AltgradError if the library lacks it."""
    fn = getattr(lib(), name, None)
    if fn is None:
        from .errors import AltgradError
        raise AltgradError(AG_EINVAL, f"{name} is not in {library_path()} "
                           "(library built without that part)")
    return fn


def result_keys(result: int) -> tuple:
    """The document keys of one row (or of status's record) of `result`, an
    AG_RESULT_* value, in order, as the library's protocol tables list them
    (ag_result_key); each is also the C member, so the ctypes mirror's
    field, that holds the value."""
    fn = func("ag_result_key")
    keys = []
    while True:
        k = fn(result, len(keys))
        if k is None:
            return tuple(keys)
        keys.append(k.decode("ascii"))


def cstr(s, what="name") -> bytes:
    """Encode a Python str for a const char * argument (None stays None)."""
    if s is None:
        return None
    if isinstance(s, bytes):
        b = s
    elif isinstance(s, str):
        b = s.encode("utf-8")
    else:
        raise TypeError(f"{what} must be str, got {type(s).__name__}")
    if b"\0" in b:
        raise ValueError(f"{what} contains a NUL byte")
    return b


def pystr(b) -> str:
    return None if b is None else b.decode("utf-8", "replace")


__all__ = ["load", "lib", "library_path", "has", "strerror", "func", "LibraryNotFound",
           "candidate_paths"]
