"""Each query result's fields are described once, in the library's reply
tables (proto/spec.c): Client's document columns are ag_result_key()'s keys,
and each key names the field of the ctypes mirror (the C member) that holds
its value."""

from altgrad import _lib
from altgrad import client

RESULTS = {
    _lib.AG_RESULT_RUNS: _lib.ag_run_info,
    _lib.AG_RESULT_TENSORS: _lib.ag_tensor_info,
    _lib.AG_RESULT_HISTORY: _lib.ag_history_point,
    _lib.AG_RESULT_SCALES: _lib.ag_scale_info,
    _lib.AG_RESULT_TOP: _lib.ag_top_entry,
    _lib.AG_RESULT_STATUS: _lib.ag_status,
    _lib.AG_RESULT_REPORT: _lib.ag_report_row,
}


def c_keys(result):
    fn = _lib.func("ag_result_key")
    keys, i = [], 0
    while (k := fn(result, i)) is not None:
        keys.append(k.decode())
        i += 1
    return tuple(keys)


def test_client_columns_are_the_librarys_keys():
    for result in RESULTS:
        keys = c_keys(result)
        assert keys, result
        assert client._cols(result) == keys
        assert client._cols(result) is client._cols(result)  # read once


def test_every_key_is_the_c_member_that_holds_it():
    for result, struct in RESULTS.items():
        members = [f[0] for f in struct._fields_]
        for k in c_keys(result):
            assert k in members, (struct.__name__, k)


def test_no_column_list_is_kept_beside_the_library():
    for name in ("_RUN_COLS", "_TENSOR_COLS", "_POINT_COLS", "_SCALE_COLS", "_TOP_COLS",
                 "_STATUS_COLS"):
        assert not hasattr(client, name), name


def test_keys_end_with_null_and_unknown_results_have_none():
    fn = _lib.func("ag_result_key")
    assert fn(_lib.AG_RESULT_REPORT + 1, 0) is None
    assert fn(-1, 0) is None
    assert fn(_lib.AG_RESULT_TOP, 1) == b"stall_rate"
    assert fn(_lib.AG_RESULT_TOP, len(c_keys(_lib.AG_RESULT_TOP))) is None
