#!/usr/bin/env python3
"""KV-cache eviction in a PyTorch model with the kvcrush Python package.

The integration guide for PyTorch users: a plain PyTorch Llama (the llama2.c
checkpoint austen-kjv-14m: 32 query heads sharing 8 KV heads) prefills a
chunk of Pride and Prejudice, keeps the attention of its last `window`
queries, and lets kvcrush choose which tokens each layer keeps (SnapKV
scores + KVCrush representatives). The cache shrinks in place
(kvcrush.compact on the NumPy memory the model's tensors share), then the
model decodes the rest of the chunk teacher-forced, evicting again whenever a
layer would exceed its budget, exactly as kvcrush-eval's engine does. It
prints how often the compressed cache predicts the same next token as the
full cache (top-1 agreement).

The three lines that matter for an engine are marked "kvcrush:" below:
    A = window attention (Hq, W, N) of the last W queries, as NumPy
    keep = kvcrush.select(attention=A, kv_heads=8, policy="snapkv+kvcrush",
                          budget=128, sink=4, recent=16, kernel=7)
    kvcrush.compact(K, V, keep=keep, tokens=N)   # K, V: (H, capacity, D)

--compare-eval PATH runs kvcrush-eval (the C++ engine) on the same chunk
with the same settings and checks that both report the same agreement.
"""

import argparse
import csv
import heapq
import io
import os
import pathlib
import struct
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
# What is missing is reported by main() as a skip, not a traceback.
try:
    import numpy as np
    import torch
except ImportError as error:
    MISSING = "%s (Debian: apt-get install python3-numpy python3-torch)" % error
else:
    MISSING = None
    try:
        import kvcrush
    except ImportError:  # running from a source checkout
        sys.path.insert(0, str(REPO / "python"))
        import kvcrush


# ---- The model: llama2.c checkpoint, plain PyTorch -------------------------------


class Config:
    def __init__(self, dim, hidden, layers, heads, kv_heads, vocab, seq_len):
        self.dim, self.hidden, self.layers = dim, hidden, layers
        self.heads, self.kv_heads, self.vocab, self.seq_len = heads, kv_heads, abs(vocab), seq_len
        self.shared_classifier = vocab > 0
        self.head_dim = dim // heads
        self.group = heads // kv_heads


def load_checkpoint(path):
    """llama2.c format: 7 int32 (dim, hidden, layers, heads, kv_heads, vocab,
    seq_len), then float32 weights (see ../shared/models/README.md)."""
    raw = pathlib.Path(path).read_bytes()
    c = Config(*struct.unpack_from("<7i", raw, 0))
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    kv_dim = c.kv_heads * c.head_dim
    shapes = [("embedding", (c.vocab, c.dim)), ("attention_norm", (c.layers, c.dim)),
              ("wq", (c.layers, c.dim, c.dim)), ("wk", (c.layers, kv_dim, c.dim)),
              ("wv", (c.layers, kv_dim, c.dim)), ("wo", (c.layers, c.dim, c.dim)),
              ("ffn_norm", (c.layers, c.dim)), ("w1", (c.layers, c.hidden, c.dim)),
              ("w2", (c.layers, c.dim, c.hidden)), ("w3", (c.layers, c.hidden, c.dim)),
              ("final_norm", (c.dim,))]
    weights, offset = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        weights[name] = torch.from_numpy(data[offset:offset + size].reshape(shape).copy())
        offset += size
    offset += c.seq_len * c.head_dim  # two legacy RoPE tables of seq_len * head_dim / 2
    if c.shared_classifier:
        weights["classifier"] = weights["embedding"]
    else:
        weights["classifier"] = torch.from_numpy(data[offset:offset + c.vocab * c.dim].reshape(c.vocab, c.dim).copy())
    return c, weights


class LayerCache:
    """One layer's keys and values, [head][token][dim], in NumPy memory that
    the model reads through torch views: kvcrush.compact moves tokens in
    place, and the tensors see the result without a copy."""

    def __init__(self, c, capacity):
        self.k = np.zeros((c.kv_heads, capacity, c.head_dim), dtype=np.float32)
        self.v = np.zeros_like(self.k)
        self.k_t, self.v_t = torch.from_numpy(self.k), torch.from_numpy(self.v)
        self.length = 0


class Llama:
    def __init__(self, c, w):
        self.c, self.w = c, w
        i = torch.arange(0, c.head_dim, 2, dtype=torch.float32)
        self.freq = 1.0 / torch.pow(torch.tensor(10000.0), i / c.head_dim)

    @staticmethod
    def rms_norm(x, weight):
        return weight * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5))

    def rope(self, x, positions):
        """Rotates adjacent pairs (2i, 2i+1) of every head; x: (T, heads, D)."""
        angle = positions.to(torch.float32)[:, None] * self.freq[None, :]
        cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def forward(self, tokens, start, caches, keep_rows=0):
        """Tokens at positions start.., appended to every layer's cache and
        attending over all of it (causally). Returns the logits (T, vocab) and,
        per layer, the attention probabilities of the last keep_rows queries
        (Hq, keep_rows, cache length)."""
        c, w = self.c, self.w
        t = len(tokens)
        positions = torch.arange(start, start + t)
        x = w["embedding"][torch.as_tensor(tokens)]
        rows = []
        for layer, cache in enumerate(caches):
            xb = self.rms_norm(x, w["attention_norm"][layer])
            q = self.rope((xb @ w["wq"][layer].T).view(t, c.heads, c.head_dim), positions)
            k = self.rope((xb @ w["wk"][layer].T).view(t, c.kv_heads, c.head_dim), positions)
            v = (xb @ w["wv"][layer].T).view(t, c.kv_heads, c.head_dim)
            n0 = cache.length
            cache.k_t[:, n0:n0 + t] = k.transpose(0, 1)
            cache.v_t[:, n0:n0 + t] = v.transpose(0, 1)
            cache.length = n = n0 + t
            keys = cache.k_t[:, :n].repeat_interleave(c.group, dim=0)  # (Hq, n, D): GQA
            values = cache.v_t[:, :n].repeat_interleave(c.group, dim=0)
            scores = torch.einsum("thd,hnd->htn", q, keys) / float(np.sqrt(np.float32(c.head_dim)))
            # Causal: query i (cache slot n0 + i) sees slots <= n0 + i.
            mask = torch.arange(n)[None, :] > (n0 + torch.arange(t))[:, None]
            probabilities = torch.softmax(scores.masked_fill(mask[None], float("-inf")), dim=-1)
            if keep_rows:
                rows.append(probabilities[:, t - keep_rows:, :].numpy().copy())
            out = torch.einsum("htn,hnd->thd", probabilities, values).reshape(t, c.dim)
            x = x + out @ w["wo"][layer].T
            xb = self.rms_norm(x, w["ffn_norm"][layer])
            gate = xb @ w["w1"][layer].T
            x = x + (torch.nn.functional.silu(gate) * (xb @ w["w3"][layer].T)) @ w["w2"][layer].T
        logits = self.rms_norm(x, w["final_norm"]) @ w["classifier"].T
        return logits, rows


# ---- Tokenizer: llama2.c BPE ---------------------------------------------------------


class Tokenizer:
    BOS = 1

    def __init__(self, path, vocab):
        raw = pathlib.Path(path).read_bytes()
        offset, self.pieces, self.scores = 4, [], []
        for _ in range(vocab):
            score, length = struct.unpack_from("<fi", raw, offset)
            offset += 8
            self.pieces.append(raw[offset:offset + length])
            self.scores.append(score)
            offset += length
        self.ids = {piece: i for i, piece in reversed(list(enumerate(self.pieces)))}

    def encode(self, text):
        """Dummy-prefix space, one unit per UTF-8 character (bytes + 3 when
        not in the vocabulary), then merges of the best-scoring adjacent pair,
        leftmost first (a heap over a linked list of symbols)."""
        ids = []
        for unit in [" "] + list(text):
            b = unit.encode("utf-8")
            ids.extend([self.ids[b]] if b in self.ids else [byte + 3 for byte in b])
        n = len(ids)
        nxt, prv = list(range(1, n)) + [-1], list(range(-1, n - 1))
        alive = [True] * n
        heap = []

        def propose(left):
            if left < 0 or nxt[left] < 0:
                return
            right = nxt[left]
            merged = self.ids.get(self.pieces[ids[left]] + self.pieces[ids[right]])
            if merged is not None and self.scores[merged] > -1e10:
                heapq.heappush(heap, (-self.scores[merged], left, right, ids[left], ids[right], merged))

        for i in range(n - 1):
            propose(i)
        while heap:
            _, left, right, left_id, right_id, merged = heapq.heappop(heap)
            if not (alive[left] and alive[right]) or nxt[left] != right or ids[left] != left_id \
                    or ids[right] != right_id:
                continue  # stale: a symbol changed or was merged away since the pair was proposed
            ids[left] = merged
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            alive[right] = False
            nxt[right] = -1
            propose(prv[left])
            propose(left)
        out, i = [], 0
        while i >= 0:
            out.append(ids[i])
            i = nxt[i]
        return out


def first_chunk(tokenizer, text, context):
    """kvcrush-eval's first chunk of a text: BOS + the first context - 1 tokens.
    BPE merges are local, so a prefix many times longer than the chunk
    tokenizes its beginning as the whole book does (and is fast)."""
    tokens = tokenizer.encode(text[: 40 * context])
    if len(tokens) < context - 1:
        raise ValueError("the text holds fewer than %d tokens" % (context - 1))
    return [Tokenizer.BOS] + tokens[: context - 1]


# ---- Eviction with kvcrush ---------------------------------------------------------------


class SnapKVWindow:
    """The attention rows of a layer's last `window` queries, kept in step
    with its cache (kvcrush-eval's eviction controller does the same): rows
    are compacted with the cache and zero-padded for tokens they never saw."""

    def __init__(self, window):
        self.window = window
        self.rows = []  # each (Hq, width)

    def observe(self, rows):
        for r in rows:
            self.rows.append(r)
        del self.rows[: max(len(self.rows) - self.window, 0)]

    def attention(self, n):
        """(Hq, rows, n), oldest row first, as kvcrush.select takes it."""
        out = np.zeros((self.rows[0].shape[0], len(self.rows), n), dtype=np.float32)
        for i, r in enumerate(self.rows):
            out[:, i, : r.shape[1]] = r
        return out

    def compact(self, keep, n):
        a = self.attention(n)[:, :, keep]
        self.rows = [a[:, i, :] for i in range(a.shape[1])]


def evict(cache, window, args, budget):
    """kvcrush: SnapKV + KVCrush choose `budget` tokens, then the cache shrinks in place."""
    n = cache.length
    keep = kvcrush.select(attention=window.attention(n), kv_heads=cache.k.shape[0], policy="snapkv+kvcrush",
                          budget=budget, sink=args.sink, recent=args.window, kernel=7, crush=args.crush,
                          anchor=args.anchor)
    cache.length = kvcrush.compact(cache.k, cache.v, keep=keep, tokens=n)
    window.compact(keep, n)


def run(args):
    c, weights = load_checkpoint(args.model)
    model = Llama(c, weights)
    tokenizer = Tokenizer(args.tokenizer, c.vocab)
    # Bytes decoded as such: no newline translation, as the C++ reader.
    chunk = first_chunk(tokenizer, pathlib.Path(args.text).read_bytes().decode("utf-8"), args.context)
    length = len(chunk)
    prefill = int(args.prefill * length) if args.prefill < 1 else int(args.prefill)
    budget = int(args.budget * length)

    with torch.no_grad():
        # The full cache's predictions for every position.
        full_caches = [LayerCache(c, length) for _ in range(c.layers)]
        full_logits, _ = model.forward(chunk[:-1], 0, full_caches)
        full_best = full_logits.argmax(-1).numpy()

        # Prefill, keeping the last `window` attention rows of every layer...
        caches = [LayerCache(c, length) for _ in range(c.layers)]
        windows = [SnapKVWindow(args.window) for _ in range(c.layers)]
        _, rows = model.forward(chunk[:prefill], 0, caches, keep_rows=args.window)
        for window, r in zip(windows, rows):
            window.observe([r[:, i, :] for i in range(r.shape[1])])
        # ...compress every layer to the budget...
        for cache, window in zip(caches, windows):
            evict(cache, window, args, budget)
        # ...and decode the rest, evicting whenever a layer would exceed
        # budget + slack (down to budget, or one below with slack 0).
        agree = 0
        for p in range(prefill, length - 1):
            for cache, window in zip(caches, windows):
                if cache.length + 1 > budget + args.slack:
                    evict(cache, window, args, min(budget, budget + args.slack - 1))
            logits, rows = model.forward([chunk[p]], p, caches, keep_rows=1)
            for window, r in zip(windows, rows):
                window.observe([r[:, 0, :]])
            agree += int(logits[0].argmax()) == int(full_best[p])
            assert max(cache.length for cache in caches) <= budget + args.slack
    positions = length - 1 - prefill
    return agree, positions


def eval_agreement(args):
    """kvcrush-eval's top-1 agreement for the same chunk and settings."""
    command = [args.compare_eval, "--model", args.model, "--tokenizer", args.tokenizer, "--text", args.text,
               "--chunks", "1", "--context", str(args.context), "--prefill", str(args.prefill),
               "--policies", "snapkv+kvcrush", "--budgets", str(args.budget), "--sink", str(args.sink),
               "--window", str(args.window), "--slack", str(args.slack), "--crush", str(args.crush),
               "--anchor", args.anchor, "--byte-budgets", "none", "--format", "csv", "--quiet"]
    run_eval = subprocess.run(command, capture_output=True, text=True)
    if run_eval.returncode != 0:
        raise RuntimeError("kvcrush-eval failed: " + run_eval.stderr)
    for row in csv.DictReader(io.StringIO(run_eval.stdout)):
        if row["policy"] == "snapkv+kvcrush":
            return float(row["top1_agreement"]), int(row["positions"])
    raise RuntimeError("kvcrush-eval printed no snapkv+kvcrush row:\n" + run_eval.stdout)


def main():
    shared = pathlib.Path(os.environ.get("KVCRUSH_SHARED_DIR", REPO.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(shared / "models" / "austen-kjv-14m.bin"))
    parser.add_argument("--tokenizer", default=str(shared / "models" / "tok512.bin"))
    parser.add_argument("--text", default=str(shared / "data" / "pride_and_prejudice.txt"))
    parser.add_argument("--context", type=int, default=512, help="tokens in the chunk, BOS included")
    parser.add_argument("--prefill", type=float, default=0.5, help="fraction of the chunk (< 1) or tokens")
    parser.add_argument("--budget", type=float, default=0.25, help="tokens kept per layer, fraction of the chunk")
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=16, help="SnapKV window = recent tokens kept")
    parser.add_argument("--slack", type=int, default=0, help="tokens allowed above the budget between evictions")
    parser.add_argument("--crush", type=float, default=0.5, help="KVCrush share of the unprotected budget")
    parser.add_argument("--anchor", default="mean")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    parser.add_argument("--compare-eval", metavar="KVCRUSH_EVAL",
                        help="also run kvcrush-eval with these settings and require the same agreement")
    args = parser.parse_args()

    if MISSING:
        print("SKIPPED: the PyTorch example needs NumPy and PyTorch: " + MISSING)
        return 77
    for path in (args.model, args.tokenizer, args.text):
        if not pathlib.Path(path).exists():
            if os.environ.get("CI") == "true":
                print("FAILED: %s is missing" % path)
                return 1
            print("SKIPPED: %s is missing (the shared models and texts)" % path)
            return 77
    torch.set_num_threads(args.threads)

    agree, positions = run(args)
    print("snapkv+kvcrush at %.3g of %d tokens (kvcrush %s, %s): top-1 agreement with the full cache %d/%d = %.4f"
          % (args.budget, args.context, kvcrush.version(), kvcrush.isa(), agree, positions, agree / positions))
    if args.compare_eval:
        figure, eval_positions = eval_agreement(args)
        print("kvcrush-eval on the same chunk and settings: %.4f over %d positions" % (figure, eval_positions))
        # Same chunk, same selections: the figures match exactly. Both
        # engines compute in float32 but sum in different orders, so one
        # near-tie between two next tokens may flip; allow that one.
        if eval_positions != positions or abs(figure * positions - agree) > 1.0 + 1e-6:
            print("FAILED: the PyTorch example and kvcrush-eval disagree")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
