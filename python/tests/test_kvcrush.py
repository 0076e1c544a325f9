"""Tests of the kvcrush Python package: results equal to the CLI's on the
same .npy files, to plain NumPy versions of SPEC.md, and every error path.

Environment: KVCRUSH_LIBRARY (the library under test) and KVCRUSH_CLI (the
kvcrush executable; CLI comparisons skip without it), both set by ctest.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PACKAGE_DIR))
import kvcrush  # noqa: E402

CLI = os.environ.get("KVCRUSH_CLI")
needs_cli = pytest.mark.skipif(not CLI, reason="KVCRUSH_CLI (the kvcrush executable) is not set")


def rng(seed=0):
    return np.random.default_rng(seed)


def grid_scores(shape, seed=0):
    """Scores on a coarse grid: many ties, which the order breaks by position."""
    return (rng(seed).integers(0, 64, size=shape) * 0.25).astype(np.float32)


def attention(shape, seed=0):
    a = rng(seed).random(shape).astype(np.float32)
    return a / a.sum(axis=-1, keepdims=True)


# ---- Plain NumPy versions of SPEC.md, independent of the library --------------


def top_k(values, positions, k):
    """SPEC 2: by value descending, ties by smaller position first."""
    order = np.lexsort((positions, -values.astype(np.float64)))
    return positions[order[:k]]


def reference_keep(s, budget, sink, recent, per_head=False):
    """SPEC 1 and 3 without KVCrush (crush 0)."""
    heads, n = s.shape
    if n <= budget:
        return np.arange(n)
    protected = np.r_[np.arange(min(sink, n)), np.arange(max(n - recent, 0), n)]
    evictable = np.arange(sink, n - recent)
    k = budget - sink - recent
    if per_head:
        return np.stack([np.sort(np.r_[protected, top_k(s[h, evictable], evictable, k)]) for h in range(heads)])
    importance = s[0].copy()
    for h in range(1, heads):  # float32, head order
        importance += s[h]
    return np.sort(np.r_[protected, top_k(importance[evictable], evictable, k)])


def reference_window_scores(a, kv_heads, kernel, pool, gqa):
    """SPEC 5: sum over the window, pool outside it, reduce each GQA group."""
    hq, w, n = a.shape
    raw = a[:, 0, :].copy()
    for i in range(1, w):
        raw += a[:, i, :]
    pooled = raw.copy()
    outside = n - w
    half = kernel // 2
    for q in range(hq):
        for t in range(outside):
            lo, hi = max(t - half, 0), min(t + half + 1, outside)
            if pool == "avg":
                acc = np.float32(0)
                for j in range(lo, hi):
                    acc += raw[q, j]
                pooled[q, t] = acc / np.float32(kernel)
            else:
                pooled[q, t] = raw[q, lo:hi].max()
    groups = pooled.reshape(kv_heads, hq // kv_heads, n)
    return {"max": groups.max(axis=1), "sum": groups.sum(axis=1), "mean": groups.mean(axis=1)}[gqa], pooled


def reference_signatures(s, sink, recent):
    """SPEC 4.1, median threshold: bit h set for head h's top floor(|E|/2)."""
    heads, n = s.shape
    evictable = np.arange(sink, n - recent)
    words = (heads + 63) // 64
    out = np.zeros((len(evictable), words), dtype=np.uint64)
    for h in range(heads):
        top = top_k(s[h, evictable], evictable, len(evictable) // 2)
        out[top - sink, h // 64] |= np.uint64(1) << np.uint64(h % 64)
    return out


# ---- The package against the SPEC ------------------------------------------------


def test_version_and_isa():
    assert kvcrush.version() == "0.1.0"
    assert kvcrush.isa() in ("scalar", "avx2", "avx512")
    assert pathlib.Path(kvcrush.library_path()).exists()


def test_use_isa_gives_the_same_keep_sets():
    best = kvcrush.isa()
    scores = np.random.default_rng(3).random((8, 1000), dtype=np.float32)
    try:
        reference = kvcrush.select(scores=scores, policy="precomputed+kvcrush", budget=200, sink=4, recent=16)
        for level in ("scalar", "avx2", "avx512")[: ("scalar", "avx2", "avx512").index(best) + 1]:
            kvcrush.use_isa(level)
            assert kvcrush.isa() == level
            again = kvcrush.select(scores=scores, policy="precomputed+kvcrush", budget=200, sink=4, recent=16)
            assert np.array_equal(np.asarray(again), np.asarray(reference))
        with pytest.raises(ValueError, match="not an ISA level"):
            kvcrush.use_isa("avx1024")
    finally:
        kvcrush.use_isa(None)
    assert kvcrush.isa() == best


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("heads,tokens", [(1, 50), (8, 301), (70, 130)])
def test_select_matches_spec_without_kvcrush(heads, tokens, per_head):
    s = grid_scores((heads, tokens), seed=heads)
    got = kvcrush.select(scores=s, budget=40, sink=4, recent=8, per_head=per_head)
    want = reference_keep(s, 40, 4, 8, per_head)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_select_keeps_everything_when_the_cache_fits():
    s = grid_scores((3, 20))
    np.testing.assert_array_equal(kvcrush.select(scores=s, budget=64, crush=0.5), np.arange(20))


def test_kvcrush_representatives_fill_their_share():
    s = grid_scores((8, 400))
    plain = kvcrush.select(scores=s, budget=100, sink=4, recent=16)
    crushed = kvcrush.select(scores=s, budget=100, sink=4, recent=16, crush=0.5, anchor="ones")
    assert len(crushed) == 100 and np.all(np.diff(crushed) > 0)
    # Half of the 80 unprotected picks are representatives instead of the
    # next most important tokens: the importance half is plain's top 40.
    imp = reference_keep(s, 4 + 16 + 40, 4, 16)
    assert set(imp) <= set(crushed)
    assert set(crushed) != set(plain)
    # The same request through the policy string.
    via_policy = kvcrush.select(scores=s, budget=100, sink=4, recent=16, policy="precomputed+kvcrush",
                                anchor="ones")
    np.testing.assert_array_equal(via_policy, crushed)


def test_adaptive_split_covers_the_mass_then_crushes():
    # E = positions 1..8 with scores 4 1 2 1 0 3 0 5 (mass 16), B_rest = 4:
    # mass 0.5 is covered by positions 8 and 1 (5 + 4 >= 8), KVCrush adds two.
    s = np.array([[9, 4, 1, 2, 1, 0, 3, 0, 5, 9]], dtype=np.float32)
    adaptive = kvcrush.select(scores=s, budget=6, sink=1, recent=1, crush_split="adaptive", crush_mass=0.5)
    fixed = kvcrush.select(scores=s, budget=6, sink=1, recent=1, crush=0.5)
    np.testing.assert_array_equal(adaptive, fixed)
    assert {1, 8} <= set(adaptive)
    with pytest.raises(ValueError, match="crush applies to the fixed split"):
        kvcrush.select(scores=s, budget=6, sink=1, recent=1, crush=0.5, crush_split="adaptive")
    with pytest.raises(ValueError, match="crush_mass must be in"):
        kvcrush.select(scores=s, budget=6, sink=1, recent=1, crush_split="adaptive", crush_mass=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        kvcrush.select(scores=-s, budget=6, sink=1, recent=1, crush_split="adaptive")


def test_adakv_gives_ragged_per_head_keep_sets():
    s = rng(3).random((8, 300)).astype(np.float32) * (1 + np.arange(8, dtype=np.float32)[:, None] ** 2)
    keep = kvcrush.select(scores=s, budget=64, sink=4, recent=16, policy="precomputed+adakv+kvcrush")
    assert isinstance(keep, list) and len(keep) == 8
    assert sum(len(k) for k in keep) == 8 * 64  # the layer's budget, shared out
    assert len({len(k) for k in keep}) > 1
    for k in keep:
        assert np.all(np.diff(k) > 0)
        assert set(range(4)) <= set(k) and set(range(284, 300)) <= set(k)


def test_block_mode_returns_block_indices():
    s = grid_scores((4, 103))
    blocks = kvcrush.select(scores=s, budget=32, sink=4, recent=8, block_size=4, crush=0.5)
    # 32 / 4 = 8 blocks, plus the partial last block (tokens 100..102).
    assert len(blocks) == 9 and blocks[0] == 0 and blocks[-1] == 25 and blocks[-2] == 24


def test_window_scores_match_spec():
    a = attention((8, 6, 90), seed=1)
    for pool, gqa in (("avg", "mean"), ("max", "max"), ("avg", "sum")):
        kv, query = kvcrush.window_scores(a, kv_heads=2, pool=pool, kernel=5, gqa=gqa, query_scores=True)
        want_kv, want_query = reference_window_scores(a, 2, 5, pool, gqa)
        np.testing.assert_array_equal(query, want_query)
        np.testing.assert_allclose(kv, want_kv, rtol=1e-6)
    # window=W uses only the last W rows.
    np.testing.assert_array_equal(kvcrush.window_scores(a, kv_heads=2, window=3),
                                  kvcrush.window_scores(a[:, 3:, :], kv_heads=2))


def test_signatures_match_spec():
    s = rng(5).random((70, 60)).astype(np.float32)
    got = kvcrush.signatures(s, sink=3, recent=5)
    assert got.dtype == np.uint64 and got.shape == (52, 2)
    np.testing.assert_array_equal(got, reference_signatures(s, 3, 5))


def reference_pyramid(budget, window, layers, tokens, beta=20):
    """SPEC 6 (KVCache-Factory's PyramidKV formula), integer division."""
    if tokens < budget or tokens < 2 * (budget - window):
        return [budget] * layers
    low = (budget - window) // beta
    high = 2 * (budget - window) - low
    if high >= tokens - window:
        high = tokens - window
        low = 2 * (budget - window) - high
    step = (high - low) // (layers - 1)
    return [high - layer * step + window for layer in range(layers)]


def test_budgets():
    for args in ((256, 32, 32, 4096), (100, 8, 5, 150), (64, 16, 3, 100), (64, 16, 4, 60)):
        pyramid = kvcrush.budgets(pyramid=True, budget=args[0], window=args[1], layers=args[2], tokens=args[3])
        np.testing.assert_array_equal(pyramid, reference_pyramid(*args))
    assert kvcrush.budgets(pyramid=True, budget=256, window=32, layers=32, tokens=4096)[0] > 256
    np.testing.assert_array_equal(kvcrush.budgets(budget=128, layers=3), [128, 128, 128])


def test_torch_like_inputs_and_float64_are_converted():
    s = rng(0).random((4, 80))  # float64
    np.testing.assert_array_equal(kvcrush.select(scores=s, budget=20),
                                  kvcrush.select(scores=s.astype(np.float32), budget=20))
    np.testing.assert_array_equal(kvcrush.select(scores=s.tolist(), budget=20),
                                  kvcrush.select(scores=s.astype(np.float32), budget=20))


# ---- Compaction --------------------------------------------------------------------


def make_cache(layout, heads, tokens, dim, dtype, seed=0):
    shape = (heads, tokens, dim) if layout == "head_token_dim" else (tokens, heads, dim)
    values = rng(seed).standard_normal(shape).astype(np.float32)
    if dtype == "bfloat16":
        return (values.view(np.uint32) >> 16).astype(np.uint16)  # raw bfloat16 bits
    return values.astype(np.float16 if dtype == "float16" else np.float32)


def head_rows(cache, layout, h):
    return cache[h] if layout == "head_token_dim" else cache[:, h]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["head_token_dim", "token_head_dim"])
def test_compact_moves_kept_tokens_to_the_front(dtype, layout):
    heads, tokens, dim = 4, 50, 8
    s = grid_scores((heads, tokens))
    for keep in (kvcrush.select(scores=s, budget=20, sink=2, recent=4),
                 kvcrush.select(scores=s, budget=20, sink=2, recent=4, per_head=True),
                 kvcrush.select(scores=s, budget=20, sink=2, recent=4, policy="precomputed+adakv")):
        k = make_cache(layout, heads, tokens, dim, dtype, seed=1)
        v = make_cache(layout, heads, tokens, dim, dtype, seed=2)
        k0, v0 = k.copy(), v.copy()
        length = kvcrush.compact(k, v, keep=keep, layout=layout, dtype=dtype)
        rows = list(keep) if isinstance(keep, list) or keep.ndim == 2 else [keep] * heads
        assert length == max(len(r) for r in rows)
        for h in range(heads):
            r = rows[h]
            np.testing.assert_array_equal(head_rows(k, layout, h)[: len(r)], head_rows(k0, layout, h)[r])
            np.testing.assert_array_equal(head_rows(v, layout, h)[: len(r)], head_rows(v0, layout, h)[r])


def test_compact_blocks_and_keys_alone():
    k = make_cache("head_token_dim", 2, 10, 3, "float32")
    k0 = k.copy()
    assert kvcrush.compact(k, keep=np.array([0, 2]), block_size=4) == 6  # tokens 0-3 and 8-9
    np.testing.assert_array_equal(k[:, :6], k0[:, [0, 1, 2, 3, 8, 9]])


def test_compact_rejects_bad_input_and_moves_nothing():
    k = make_cache("head_token_dim", 2, 10, 3, "float32")
    v = k.copy()
    k0 = k.copy()
    with pytest.raises(ValueError, match="strictly increasing"):
        kvcrush.compact(k, v, keep=np.array([0, 5, 3]))
    with pytest.raises(ValueError, match="outside the cache"):
        kvcrush.compact(k, v, keep=np.array([0, 10]))
    with pytest.raises(ValueError, match="C-contiguous"):
        kvcrush.compact(k[:, ::2], keep=np.array([0]))
    with pytest.raises(ValueError, match="dtype"):
        kvcrush.compact(k, keep=np.array([0]), dtype="float16")
    with pytest.raises(ValueError, match="dtype='bfloat16'"):
        kvcrush.compact(k.view(np.uint16), keep=np.array([0]))
    with pytest.raises(ValueError, match="window 13 must be in"):
        kvcrush.select(attention=attention((4, 12, 30)), kv_heads=2, window=13, budget=20)
    with pytest.raises(ValueError, match="NumPy array"):
        kvcrush.compact(k.tolist(), keep=np.array([0]))
    np.testing.assert_array_equal(k, k0)
    np.testing.assert_array_equal(v, k0)


# ---- Errors --------------------------------------------------------------------------


def test_errors_raise_value_error_with_the_library_message():
    s = grid_scores((4, 64))
    with pytest.raises(ValueError, match="below sink \\+ recent"):
        kvcrush.select(scores=s, budget=6, sink=4, recent=4)
    with pytest.raises(ValueError, match="anchor"):
        kvcrush.select(scores=s, budget=32, crush=0.5, anchor="middle")
    with pytest.raises(ValueError, match="turbo"):
        kvcrush.select(scores=s, budget=32, policy="snapkv+turbo")
    with pytest.raises(ValueError, match="window attention"):
        kvcrush.select(scores=s, budget=32, policy="snapkv")
    with pytest.raises(ValueError, match="crush"):
        kvcrush.select(scores=s, budget=32, crush=float("nan"))
    with pytest.raises(ValueError, match="exactly one"):
        kvcrush.select(budget=32)
    with pytest.raises(ValueError, match="2 dimensions"):
        kvcrush.select(scores=s[0], budget=32)
    with pytest.raises(ValueError, match="attention only"):
        kvcrush.select(scores=s, budget=32, kv_heads=2)
    with pytest.raises(ValueError, match="divide"):
        kvcrush.window_scores(attention((6, 2, 20)), kv_heads=4)
    with pytest.raises(ValueError, match="layer"):
        kvcrush.budgets(budget=10, layers=0)
    with pytest.raises(TypeError):
        kvcrush.select(scores=s, budget=32, bogus=1)
    bad = s.copy()
    bad[1, 30] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kvcrush.select(scores=bad, budget=32, sink=4, recent=4, crush=0.5)
    with pytest.raises(ValueError, match="NaN"):
        kvcrush.signatures(bad, sink=4, recent=4)


def test_library_lookup_order(tmp_path):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    code = "import kvcrush; print(kvcrush.library_path())"
    # 1. KVCRUSH_LIBRARY, and only it, when set.
    env["KVCRUSH_LIBRARY"] = str(tmp_path / "missing.so")
    run = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_DIR, env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "missing.so" in run.stderr and "KVCRUSH_LIBRARY" in run.stderr
    # 2. Next to the package.
    package = tmp_path / "kvcrush"
    package.mkdir()
    shutil.copy(PACKAGE_DIR / "kvcrush" / "__init__.py", package)
    shutil.copy(kvcrush.library_path(), package / "libkvcrush_c.so")
    del env["KVCRUSH_LIBRARY"]
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(package / "libkvcrush_c.so")
    # 3. The default build tree of the checkout the package sits in.
    (package / "libkvcrush_c.so").unlink()
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "build/default/src/libkvcrush_c.so" in run.stdout + run.stderr


# ---- The CLI on the same .npy files ---------------------------------------------------


def cli_args(options):
    """Keyword arguments -> CLI options: dashes for underscores, flags for True."""
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def run_cli(*args):
    run = subprocess.run([CLI, *args], capture_output=True, text=True)
    return run


SCORE_CASES = [
    dict(budget=64, sink=4, recent=16),
    dict(budget=64, sink=4, recent=16, crush=0.5, anchor="ones"),
    dict(budget=64, sink=2, recent=8, crush=1, representative="linspace", threshold="mean"),
    dict(budget=64, sink=4, recent=16, crush=0.25, anchor="random", seed=7, per_head=True),
    dict(budget=64, sink=4, recent=8, crush=0.5, anchor="inv_mean", representative="stride", block_size=4),
    dict(budget=48, crush=0.75, anchor="alternating", representative="bucket_start", per_head=True),
    dict(budget=64, sink=4, recent=16, crush_split="adaptive"),
    dict(budget=64, sink=4, recent=16, crush_split="adaptive", crush_mass=0.5, per_head=True),
    dict(budget=64, sink=4, recent=8, crush_split="adaptive", crush_mass=0.3, block_size=4),
]


@needs_cli
@pytest.mark.parametrize("options", SCORE_CASES)
def test_select_from_scores_equals_cli(tmp_path, options):
    s = rng(11).random((8, 333)).astype(np.float32)
    np.save(tmp_path / "S.npy", s)
    run = run_cli("select", "--scores", str(tmp_path / "S.npy"), *cli_args(options), "--out", str(tmp_path / "k.npy"))
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(kvcrush.select(scores=np.load(tmp_path / "S.npy"), **options),
                                  np.load(tmp_path / "k.npy"))


ATTENTION_CASES = [
    dict(kv_heads=2, budget=64, crush=0.5),
    dict(kv_heads=2, window=8, pool="max", kernel=5, gqa="max", budget=64, sink=4, crush=0.5,
         signature_heads="query", per_head=True),
    dict(kv_heads=4, window=4, gqa="sum", budget=40, sink=2, recent=6, crush=0.5, anchor="zeros"),
]


@needs_cli
@pytest.mark.parametrize("options", ATTENTION_CASES)
def test_select_from_attention_equals_cli(tmp_path, options):
    np.save(tmp_path / "A.npy", attention((8, 12, 200), seed=4))
    run = run_cli("select", "--attention", str(tmp_path / "A.npy"), *cli_args(options), "--out",
                  str(tmp_path / "k.npy"))
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(kvcrush.select(attention=np.load(tmp_path / "A.npy"), **options),
                                  np.load(tmp_path / "k.npy"))


@needs_cli
@pytest.mark.parametrize("options", [dict(sink=4, recent=8), dict(threshold="mean")])
def test_signatures_equal_cli(tmp_path, options):
    np.save(tmp_path / "S.npy", rng(2).random((70, 150)).astype(np.float32))
    run = run_cli("signatures", "--scores", str(tmp_path / "S.npy"), *cli_args(options), "--out",
                  str(tmp_path / "sig.npy"))
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(kvcrush.signatures(np.load(tmp_path / "S.npy"), **options),
                                  np.load(tmp_path / "sig.npy"))


@needs_cli
@pytest.mark.parametrize("options", [dict(pyramid=True, budget=256, window=32, layers=32, tokens=4096),
                                     dict(pyramid=True, budget=100, window=8, layers=5, tokens=150, beta=4),
                                     dict(budget=64, window=8, layers=3, tokens=100)])
def test_budgets_equal_cli(options):
    run = run_cli("budgets", *cli_args(options))
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(kvcrush.budgets(**options), [int(x) for x in run.stdout.split()])


@needs_cli
def test_errors_carry_the_cli_message(tmp_path):
    np.save(tmp_path / "S.npy", grid_scores((4, 64)))
    run = run_cli("select", "--scores", str(tmp_path / "S.npy"), "--budget", "6", "--sink", "4", "--recent", "4",
                  "--out", str(tmp_path / "k.npy"))
    assert run.returncode == 2
    with pytest.raises(ValueError) as error:
        kvcrush.select(scores=np.load(tmp_path / "S.npy"), budget=6, sink=4, recent=4)
    assert run.stderr.strip() == "kvcrush: error: " + str(error.value)


def test_readme_python_example(tmp_path):
    """The README's Python snippet, run as a reader would (PYTHONPATH=python)."""
    readme = (PACKAGE_DIR.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- readme-example:python -->")
    end = readme.index("<!-- /readme-example:python -->", start)
    code = readme[start:end].split("```python\n", 1)[1].rsplit("```", 1)[0]
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_DIR), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    kept, isa, lengths = run.stdout.split(" ", 2)
    assert kept == "1024" and isa == kvcrush.isa()
    assert sum(int(n) for n in lengths.strip("[]\n").split(",")) == 8 * 1024
