"""The ctypes mirrors of altgrad.h's structs have the C layout: a tiny C
program compiled against the header prints every sizeof and offsetof."""

import ctypes
import os
import shutil
import subprocess

import pytest

from altgrad import _lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(_lib.__file__))))
HEADER_DIR = os.path.join(ROOT, "include")

STRUCTS = ["ag_format", "ag_stall_counts", "ag_run_info", "ag_run_list", "ag_tensor_info",
           "ag_tensor_list", "ag_history_point", "ag_history", "ag_history_query",
           "ag_scale_info", "ag_scale_list", "ag_top_entry", "ag_top_list", "ag_status",
           "ag_report_row", "ag_report"]


def c_layout(tmp_path, structs):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not os.path.isfile(os.path.join(HEADER_DIR, "altgrad", "altgrad.h")):
        pytest.skip("needs a C compiler and the source tree's include/")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include \"altgrad/altgrad.h\"",
             "int main(void) {"]
    for name, cls in structs:
        lines.append(f'printf("{name} %zu\\n", sizeof({name}));')
        for field, *_ in cls._fields_:
            if field.startswith("_"):
                continue
            lines.append(f'printf("{name}.{field} %zu\\n", offsetof({name}, {field}));')
    lines += ["return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", HEADER_DIR, str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return dict(line.rsplit(" ", 1) for line in out.splitlines())


def test_core_and_query_structs_match_the_header(tmp_path):
    structs = [(n, getattr(_lib, n)) for n in STRUCTS]
    got = c_layout(tmp_path, structs)
    for name, cls in structs:
        assert int(got[name]) == ctypes.sizeof(cls), name
        for field, *_ in cls._fields_:
            assert int(got[f"{name}.{field}"]) == getattr(cls, field).offset, (name, field)


def test_client_structs_match_the_header(tmp_path):
    from altgrad import client
    structs = [(n, getattr(client, n)) for n in ("ag_client_opts", "ag_snapshot", "ag_counts_batch",
                                                  "ag_client_stats")]
    got = c_layout(tmp_path, structs)
    for name, cls in structs:
        assert int(got[name]) == ctypes.sizeof(cls), name
        for field, *_ in cls._fields_:
            assert int(got[f"{name}.{field}"]) == getattr(cls, field).offset, (name, field)


def test_python_error_list_matches_the_header_and_the_library():
    """errors.ERRORS is Python's copy of AG_ERRNO_MAP: same names, values and
    texts as the header, and as ag_err_name/ag_strerror in the library."""
    import re
    from altgrad import errors
    hdr = open(os.path.join(os.path.dirname(__file__), "..", "..", "include", "altgrad",
                            "altgrad.h")).read()
    body = hdr[hdr.index("#define AG_ERRNO_MAP(XX)"):hdr.index("typedef enum ag_err")]
    in_header = [(n, int(v), t) for n, v, t in
                 re.findall(r'XX\((\w+),\s*(-?\d+),\s*"([^"]*)"\)', body)]
    assert len(in_header) >= 18
    assert list(errors.ERRORS) == in_header
    lib = _lib.lib()
    for name, value, text in in_header:
        assert getattr(_lib, "AG_" + name) == value
        assert lib.ag_err_name(value).decode() == name
        assert lib.ag_strerror(value).decode() == text == errors.strerror(value)
    assert lib.ag_err_name(-9999) is None
    assert errors.strerror(-9999) == lib.ag_strerror(-9999).decode() == "unknown error"


def test_errors_is_a_leaf_module():
    import ast
    src = open(os.path.join(os.path.dirname(__file__), "..", "altgrad", "errors.py")).read()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            assert node.module in ("__future__",) and node.level == 0, ast.dump(node)
        assert not isinstance(node, ast.Import), ast.dump(node)
