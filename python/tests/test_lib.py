"""Finding and loading libaltgrad, and error mapping (in subprocesses, so the
interpreter under test keeps its loaded library)."""

import os
import subprocess
import sys

import pytest

from altgrad import AltgradError, InvalidArgumentError, NotFoundError, _lib
from altgrad.errors import check, error_for

PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(_lib.__file__)))


def run_py(code, env_update):
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_PARENT
    for k, v in env_update.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


def test_altgrad_library_variable_is_obeyed():
    lib = _lib.library_path()
    r = run_py("import altgrad; print(altgrad.library_path())", {"ALTGRAD_LIBRARY": lib})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == lib


def test_a_wrong_altgrad_library_is_an_error_not_a_silent_fallback(tmp_path):
    r = run_py("import altgrad.quantization",
               {"ALTGRAD_LIBRARY": str(tmp_path / "nope.so")})
    assert r.returncode != 0
    assert "libaltgrad not found" in r.stderr and "ALTGRAD_LIBRARY" in r.stderr


def test_without_the_variable_the_build_tree_is_searched():
    r = run_py("from altgrad import _lib; print(_lib.candidate_paths())",
               {"ALTGRAD_LIBRARY": None})
    assert r.returncode == 0, r.stderr
    found = eval(r.stdout)
    in_tree = [p for p in found if os.path.basename(os.path.dirname(p)).startswith("build")]
    if not in_tree:
        pytest.skip("no build*/libaltgrad.so beside python/ in this checkout")
    assert all("asan" not in p for p in found)


def test_error_codes_become_exceptions_with_strerror_text():
    with pytest.raises(NotFoundError) as e:
        check(_lib.AG_ENOTFOUND, "run foo")
    assert e.value.code == -13
    assert _lib.strerror(-13) in str(e.value) and "run foo" in str(e.value)
    assert isinstance(e.value, LookupError)
    assert isinstance(error_for(_lib.AG_EINVAL), InvalidArgumentError)
    assert isinstance(error_for(_lib.AG_ESTORE), AltgradError)
    assert check(0) == 0

