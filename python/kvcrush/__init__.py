"""kvcrush from Python: KV-cache eviction (KVCrush, SnapKV, H2O, AdaKV, ...)
on NumPy arrays, through the C library libkvcrush_c and ctypes.

The functions mirror the ``kvcrush`` command-line tool: ``select``,
``window_scores``, ``signatures``, ``budgets`` and ``compact``. Keyword
arguments are the CLI's option names with dashes as underscores::

    import kvcrush
    keep = kvcrush.select(scores=S, budget=256, sink=4, recent=32, crush=0.5, anchor="ones")

Arrays go in as NumPy arrays (or anything ``numpy.asarray`` takes, such as
CPU PyTorch tensors); results come back as NumPy arrays. Bad input raises
``ValueError`` with the library's message. Selection semantics:
docs/SEMANTICS.md in the kvcrush repository
(exact, deterministic, ties broken by position).

The library is found through ``KVCRUSH_LIBRARY`` (a path to
libkvcrush_c.so), then next to this package, then in the default build tree
(``build/default/src``) of the source checkout the package sits in.
"""

import ctypes
import os
import pathlib
import threading

import numpy as np

__all__ = ["select", "window_scores", "signatures", "budgets", "compact", "version", "isa", "use_isa",
           "library_path"]

_OK, _INVALID, _TOO_SMALL, _NO_MEMORY, _INTERNAL = 0, 1, 2, 3, 4
_LIBRARY_NAMES = ("libkvcrush_c.so", "libkvcrush_c.dylib", "kvcrush_c.dll")

_i64 = ctypes.c_int64
_p_i64 = ctypes.POINTER(ctypes.c_int64)
_p_f32 = ctypes.POINTER(ctypes.c_float)
_p_u64 = ctypes.POINTER(ctypes.c_uint64)
_str = ctypes.c_char_p


class _SelectOptions(ctypes.Structure):
    # Field for field kvcrush_select_options in include/kvcrush/c_api.h.
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("policy", _str),
        ("budget", _i64),
        ("sink", _i64),
        ("recent", _i64),
        ("crush", ctypes.c_double),
        ("anchor", _str),
        ("seed", ctypes.c_uint64),
        ("representative", _str),
        ("threshold", _str),
        ("per_head", ctypes.c_int),
        ("block_size", _i64),
        ("adakv_alpha", ctypes.c_double),
        ("signature_heads", _str),
        ("kv_heads", _i64),
        ("window", _i64),
        ("pool", _str),
        ("kernel", _i64),
        ("gqa", _str),
        ("crush_split", _str),
        ("crush_mass", ctypes.c_double),
    ]


def _candidates():
    env = os.environ.get("KVCRUSH_LIBRARY")
    if env:
        # An explicit choice is the only one: falling back elsewhere would
        # hide a wrong path.
        return [pathlib.Path(env)]
    here = pathlib.Path(__file__).resolve().parent
    found = [here / name for name in _LIBRARY_NAMES]
    # python/kvcrush/ in a source checkout: ../../build/default/src
    found += [here.parent.parent / "build" / "default" / "src" / name for name in _LIBRARY_NAMES]
    return found


_lock = threading.Lock()
_lib = None
_lib_path = None


def _load():
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = _candidates()
        for path in tried:
            if path.exists():
                lib = ctypes.CDLL(str(path))
                _declare(lib)
                _lib_path = str(path)
                _lib = lib
                return lib
        raise OSError(
            "kvcrush: libkvcrush_c not found; looked at "
            + ", ".join(str(p) for p in tried)
            + " (build the kvcrush_c target, or set KVCRUSH_LIBRARY to the library's path)"
        )


def _declare(lib):
    status = ctypes.c_int
    signatures = {
        "kvcrush_version": (_str, []),
        "kvcrush_isa": (_str, []),
        "kvcrush_use_isa": (ctypes.c_int, [_str]),
        "kvcrush_c_api_version": (ctypes.c_int, []),
        "kvcrush_last_error": (_str, []),
        "kvcrush_select_options_init": (None, [ctypes.POINTER(_SelectOptions)]),
        "kvcrush_keep_shape": (status, [ctypes.POINTER(_SelectOptions), _i64, _i64, _i64, _p_i64, _p_i64]),
        "kvcrush_select_scores": (
            status,
            [ctypes.c_void_p, _p_f32, _i64, _i64, ctypes.POINTER(_SelectOptions), _p_i64, _i64, _i64, _p_i64],
        ),
        "kvcrush_select_attention": (
            status,
            [ctypes.c_void_p, _p_f32, _i64, _i64, _i64, ctypes.POINTER(_SelectOptions), _p_i64, _i64, _i64, _p_i64],
        ),
        "kvcrush_window_scores": (
            status,
            [ctypes.c_void_p, _p_f32, _i64, _i64, _i64, _i64, _i64, _str, _i64, _str, _p_f32, _p_f32],
        ),
        "kvcrush_signature_shape": (status, [_i64, _i64, _i64, _i64, _p_i64, _p_i64]),
        "kvcrush_signatures": (
            status,
            [ctypes.c_void_p, _p_f32, _i64, _i64, _i64, _i64, _str, _p_u64, _i64, _i64],
        ),
        "kvcrush_budgets": (status, [ctypes.c_int, _i64, _i64, _i64, _i64, _i64, _p_i64, _i64]),
        "kvcrush_compact": (
            status,
            [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, _i64, _i64, _i64, _i64, _p_i64, _i64,
             _i64, _p_i64, _i64, _p_i64],
        ),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    if lib.kvcrush_c_api_version() != 1:
        raise OSError("kvcrush: the library's C API version %d is not the one this package speaks (1)"
                      % lib.kvcrush_c_api_version())


def _check(status):
    if status == _OK:
        return
    message = _load().kvcrush_last_error().decode("utf-8", "replace")
    if message.startswith("kvcrush: "):
        message = message[len("kvcrush: "):]
    if status == _NO_MEMORY:
        raise MemoryError(message)
    if status == _INTERNAL:
        raise RuntimeError(message)
    raise ValueError(message)


def version():
    """The library's version, e.g. "0.1.0"."""
    return _load().kvcrush_version().decode()


def isa():
    """The instruction set in use: scalar, avx2 or avx512, chosen at run time (the best this
    machine supports, capped by the environment variable KVCRUSH_ISA or by use_isa)."""
    return _load().kvcrush_isa().decode()


def use_isa(level=None):
    """Use the kernels of `level` ("scalar", "avx2" or "avx512") from now on; None: the best
    this machine supports. ValueError, changing nothing, for a level the machine lacks."""
    _check(_load().kvcrush_use_isa(None if level is None else level.encode()))


def library_path():
    """Path of the libkvcrush_c in use."""
    _load()
    return _lib_path


def _float32(array, name, ndim):
    """A C-contiguous float32 copy or view of `array` with `ndim` dimensions."""
    if array is None:
        raise ValueError("%s is required" % name)
    a = np.asarray(array)
    if a.dtype.kind not in "fiu":
        raise ValueError("%s must hold real numbers, got dtype %s" % (name, a.dtype))
    if a.ndim != ndim:
        raise ValueError("%s must have %d dimensions, got shape %s" % (name, ndim, a.shape))
    # The library computes in float32 (SPEC): other real types are converted.
    return np.ascontiguousarray(a, dtype=np.float32)


def _text(value, name):
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("%s must be a string, got %r" % (name, value))
    return value.encode()


def _integer(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError("%s must be an integer, got %r" % (name, value))
    return int(value)


def _ptr(array, ctype):
    return array.ctypes.data_as(ctypes.POINTER(ctype))


def select(scores=None, *, attention=None, budget, sink=0, recent=None, crush=None, anchor=None, seed=0,
           representative=None, threshold=None, per_head=False, block_size=1, policy=None, adakv_alpha=0.2,
           signature_heads=None, kv_heads=None, window=None, pool=None, kernel=7, gqa=None, crush_split=None,
           crush_mass=0.9):
    """Keep sets of one layer, as ``kvcrush select``.

    Give exactly one of ``scores`` (H, N) per-KV-head scores, or
    ``attention`` (Hq, W, N) window attention probabilities with
    ``kv_heads`` (SnapKV scores are formed from it; ``window``, ``pool``,
    ``kernel``, ``gqa`` and ``signature_heads`` apply, and ``recent``
    defaults to the window).

    ``policy`` takes ``policy_config::parse`` names: "snapkv+kvcrush",
    "precomputed+adakv", "h2o" (scores = accumulated attention), ... The
    default is "precomputed" for scores and "snapkv" for attention.
    ``crush`` > 0 adds KVCrush representatives as the CLI's ``--crush``;
    left as None it is 0.5 with "+kvcrush" in the policy, else 0.
    ``crush_split="adaptive"`` (with ``crush`` left None) instead lets the
    importance policy keep the fewest evictable tokens covering
    ``crush_mass`` (in (0, 1], default 0.9) of their non-negative score
    mass, within the budget, and gives KVCrush the rest (SEMANTICS 4.5).

    Returns int64 positions (block indices with ``block_size`` > 1): shape
    (B,) shared, (H, B) with ``per_head``, and for "+adakv" policies (whose
    heads keep different numbers of tokens) a list of H 1-D arrays.
    """
    if (scores is None) == (attention is None):
        raise ValueError("give exactly one of scores and attention")
    lib = _load()
    o = _SelectOptions()
    lib.kvcrush_select_options_init(ctypes.byref(o))
    o.policy = _text(policy, "policy")
    o.budget = _integer(budget, "budget")
    o.sink = _integer(sink, "sink")
    o.recent = -1 if recent is None else _integer(recent, "recent")
    if recent is not None and o.recent < 0:
        raise ValueError("recent must be >= 0 (got %d)" % o.recent)
    o.crush = -1.0 if crush is None else float(crush)
    if crush is not None and not (o.crush >= 0.0):  # also catches NaN
        raise ValueError("crush must be in [0, 1] (got %r)" % crush)
    o.crush_split = _text(crush_split, "crush_split")
    o.crush_mass = float(crush_mass)
    o.anchor = _text(anchor, "anchor")
    o.seed = _integer(seed, "seed")
    o.representative = _text(representative, "representative")
    o.threshold = _text(threshold, "threshold")
    o.per_head = 1 if per_head else 0
    o.block_size = _integer(block_size, "block_size")
    o.adakv_alpha = float(adakv_alpha)
    o.signature_heads = _text(signature_heads, "signature_heads")
    o.kernel = _integer(kernel, "kernel")
    o.pool = _text(pool, "pool")
    o.gqa = _text(gqa, "gqa")
    if scores is not None:
        for name, value in (("kv_heads", kv_heads), ("window", window), ("pool", pool), ("gqa", gqa),
                            ("signature_heads", signature_heads)):
            if value is not None:
                raise ValueError("%s applies to attention only" % name)
        if kernel != 7:
            raise ValueError("kernel applies to attention only")
        s = _float32(scores, "scores", 2)
        heads, tokens = s.shape
        rows_w = 0
    else:
        if kv_heads is None:
            raise ValueError("attention needs kv_heads")
        a = _float32(attention, "attention", 3)
        query_heads, rows_w, tokens = a.shape
        o.kv_heads = _integer(kv_heads, "kv_heads")
        o.window = 0 if window is None else _integer(window, "window")
        if window is not None and o.window < 1:
            raise ValueError("window %d must be in [1, %d]" % (o.window, rows_w))
        heads = o.kv_heads
    rows, width = _i64(), _i64()
    if heads >= 1:
        _check(lib.kvcrush_keep_shape(ctypes.byref(o), heads, tokens, rows_w, ctypes.byref(rows), ctypes.byref(width)))
    else:
        rows.value, width.value = 1, 0  # let the selection call name the problem
    keep = np.empty((max(rows.value, 1), max(width.value, 1)), dtype=np.int64)
    counts = np.zeros(max(rows.value, 1), dtype=np.int64)
    if scores is not None:
        _check(lib.kvcrush_select_scores(None, _ptr(s, ctypes.c_float), heads, tokens, ctypes.byref(o),
                                         _ptr(keep, ctypes.c_int64), rows.value, keep.shape[1],
                                         _ptr(counts, ctypes.c_int64)))
    else:
        _check(lib.kvcrush_select_attention(None, _ptr(a, ctypes.c_float), query_heads, rows_w, tokens,
                                            ctypes.byref(o), _ptr(keep, ctypes.c_int64), rows.value, keep.shape[1],
                                            _ptr(counts, ctypes.c_int64)))
    # Head-wise budgets are ragged by nature: always a list, so callers need
    # not test which shape came back.
    if policy is not None and "adakv" in policy.split("+"):
        return [keep[h, : counts[h]].copy() for h in range(rows.value)]
    if rows.value == 1 and not per_head:
        return keep[0, : counts[0]].copy()
    return keep[:, : counts[0]].copy()


def window_scores(attention, *, kv_heads, window=None, pool="avg", kernel=7, gqa="mean", query_scores=False):
    """SnapKV scores (H, N) float32 from window attention (Hq, W, N).

    The last ``window`` rows (default all) are summed, pooled along tokens
    outside the window (``pool`` avg|max, odd ``kernel``) and reduced over
    each KV head's query heads (``gqa`` mean|max|sum). With
    ``query_scores=True`` returns ``(kv_scores, query_scores)``, the latter
    (Hq, N): the pooled per-query-head rows.
    """
    lib = _load()
    a = _float32(attention, "attention", 3)
    query_heads, rows, tokens = a.shape
    h = _integer(kv_heads, "kv_heads")
    w = 0 if window is None else _integer(window, "window")
    if window is not None and w < 1:
        raise ValueError("window %d must be in [1, %d]" % (w, rows))
    kv = np.empty((max(h, 1), tokens), dtype=np.float32)
    query = np.empty((query_heads, tokens), dtype=np.float32) if query_scores else None
    _check(lib.kvcrush_window_scores(None, _ptr(a, ctypes.c_float), query_heads, rows, tokens, h, w,
                                     _text(pool, "pool"), _integer(kernel, "kernel"), _text(gqa, "gqa"),
                                     _ptr(kv, ctypes.c_float), _ptr(query, ctypes.c_float) if query_scores else None))
    return (kv, query) if query_scores else kv


def signatures(scores, *, sink=0, recent=0, threshold="median"):
    """KVCrush signatures, as ``kvcrush signatures``: uint64 (|E|, ceil(H/64)),
    one row per evictable token E = [sink, N - recent); bit h of word h/64 is
    set when the token is in head h's top half (median) or above its mean."""
    lib = _load()
    s = _float32(scores, "scores", 2)
    heads, tokens = s.shape
    rows, words = _i64(), _i64()
    _check(lib.kvcrush_signature_shape(heads, tokens, _integer(sink, "sink"), _integer(recent, "recent"),
                                       ctypes.byref(rows), ctypes.byref(words)))
    out = np.empty((rows.value, words.value), dtype=np.uint64)
    _check(lib.kvcrush_signatures(None, _ptr(s, ctypes.c_float), heads, tokens, sink, recent,
                                  _text(threshold, "threshold"), _ptr(out, ctypes.c_uint64), rows.value,
                                  words.value))
    return out


def budgets(*, budget, layers, window=0, tokens=0, pyramid=False, beta=20):
    """Per-layer budgets, as ``kvcrush budgets``: PyramidKV's (``pyramid``,
    KVCache-Factory's formula with ``beta``) or uniform; int64 (layers,)."""
    lib = _load()
    n = _integer(layers, "layers")
    out = np.empty(max(n, 1), dtype=np.int64)
    _check(lib.kvcrush_budgets(1 if pyramid else 0, _integer(budget, "budget"), _integer(window, "window"), n,
                               _integer(tokens, "tokens"), _integer(beta, "beta"), _ptr(out, ctypes.c_int64),
                               out.shape[0]))
    return out[:n]


_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
_LAYOUTS = {"head_token_dim": 0, "token_head_dim": 1}


def _cache_arg(array, name, dtype):
    if not isinstance(array, np.ndarray):
        raise ValueError("%s must be a NumPy array (compaction works in place; use tensor.numpy() for PyTorch)"
                         % name)
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError("%s must be C-contiguous and writable (compaction works in place)" % name)
    if array.ndim != 3:
        raise ValueError("%s must have 3 dimensions, got shape %s" % (name, array.shape))
    expected = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    if array.dtype != expected:
        hint = " (pass dtype='bfloat16' for bfloat16 bits)" if array.dtype == np.uint16 else ""
        raise ValueError("%s has dtype %s; dtype %r needs %s%s%s" % (
            name, array.dtype, dtype, np.dtype(expected).name,
            " (the raw bfloat16 bits)" if dtype == "bfloat16" else "", hint))


def compact(keys, values=None, *, keep, layout="head_token_dim", tokens=None, block_size=1, dtype=None):
    """Compacts one layer's cache in place: for every head h, token keep[h][i]
    becomes token i (kept tokens move to the front, in position order).

    ``keys`` and ``values`` (optional): C-contiguous arrays, (H, capacity, D)
    for ``layout="head_token_dim"`` or (N, H, D) for "token_head_dim";
    float32, float16, or uint16 holding bfloat16 bits (``dtype="bfloat16"``).
    ``tokens``: tokens in use (default: all). ``keep``: what ``select``
    returns: (B,) shared, (H, B) per head, a list of per-head arrays
    (ragged), or block indices with ``block_size``. Returns the new length
    (the longest head's). Nothing moves unless every argument is valid.
    """
    lib = _load()
    if dtype is None:
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(
            getattr(keys, "dtype", None), "float32")
    if dtype not in _DTYPES:
        raise ValueError("dtype must be one of %s (got %r)" % (", ".join(_DTYPES), dtype))
    if layout not in _LAYOUTS:
        raise ValueError("layout must be one of %s (got %r)" % (", ".join(_LAYOUTS), layout))
    _cache_arg(keys, "keys", dtype)
    if values is not None:
        _cache_arg(values, "values", dtype)
        if values.shape != keys.shape:
            raise ValueError("values have shape %s, keys %s" % (values.shape, keys.shape))
    if layout == "head_token_dim":
        heads, capacity, dim = keys.shape
    else:
        capacity, heads, dim = keys.shape
    n = capacity if tokens is None else _integer(tokens, "tokens")
    counts = None
    if isinstance(keep, (list, tuple)) and len(keep) > 0 and np.ndim(keep[0]) == 1:
        rows = [np.asarray(r) for r in keep]
        for r in rows:
            if r.dtype.kind not in "iu":
                raise ValueError("keep must hold integer positions, got dtype %s" % r.dtype)
        width = max(len(r) for r in rows)
        k = np.zeros((len(rows), max(width, 1)), dtype=np.int64)
        counts = np.array([len(r) for r in rows], dtype=np.int64)
        for i, r in enumerate(rows):
            k[i, : len(r)] = r
    else:
        k = np.asarray(keep)
        if k.dtype.kind not in "iu":
            raise ValueError("keep must hold integer positions, got dtype %s" % k.dtype)
        if k.ndim == 1:
            k = k.reshape(1, -1)
        elif k.ndim != 2:
            raise ValueError("keep must be (B,), (H, B) or a list of per-head arrays, got shape %s" % (k.shape,))
        k = np.ascontiguousarray(k, dtype=np.int64)
    new_length = _i64()
    _check(lib.kvcrush_compact(
        keys.ctypes.data, values.ctypes.data if values is not None else None, _DTYPES[dtype], _LAYOUTS[layout],
        heads, n, dim, capacity if layout == "head_token_dim" else 0, _ptr(k, ctypes.c_int64), k.shape[0],
        k.shape[1], _ptr(counts, ctypes.c_int64) if counts is not None else None, _integer(block_size, "block_size"),
        ctypes.byref(new_length)))
    return new_length.value
