#!/usr/bin/env python3
"""Writes the synthetic seed inputs of the checkpoint and tokenizer fuzz
targets (tests/fuzz/corpus/{checkpoint,tokenizer}/seed-*): tiny llama2.c
files in the real formats, so that the committed corpus stays a few KB and
holds no model weights. Standard library only; rerun after a format change.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def checkpoint(dim, hidden, layers, heads, kv_heads, vocab, seq_len):
    """Header plus weights of exactly the size the header implies."""
    head_dim = dim // heads
    n = abs(vocab) * dim + layers * dim  # embedding, attention norm
    n += 2 * layers * dim * dim + 2 * layers * kv_heads * head_dim * dim  # wq, wo, wk, wv
    n += layers * dim + 3 * layers * hidden * dim + dim  # ffn norm, w1..w3, final norm
    n += seq_len * head_dim  # the two legacy RoPE tables
    if vocab < 0:
        n += abs(vocab) * dim  # separate classifier
    weights = [((i * 7) % 11 - 5) * 0.05 for i in range(n)]
    return struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq_len) + struct.pack(
        "<%df" % n, *weights)


# Mode byte 0: the file as is; 1: header, then weights padded by the target.
tiny = checkpoint(4, 6, 1, 2, 1, 5, 4)
write("checkpoint", "raw-tiny", b"\x00" + tiny)
write("checkpoint", "raw-unshared-gqa", b"\x00" + checkpoint(8, 4, 2, 4, 2, -6, 3))
write("checkpoint", "raw-header-only", b"\x00" + tiny[:28])
write("checkpoint", "raw-too-long", b"\x00" + tiny + b"\x00\x00\x80\x7f")
write("checkpoint", "padded-tiny", b"\x01" + tiny[:28])
write("checkpoint", "padded-weights", b"\x01" + tiny[:64])


def tokenizer_file(max_len, tokens):
    out = struct.pack("<i", max_len)
    for piece, score in tokens:
        out += struct.pack("<fi", score, len(piece)) + piece
    return out


def target_input(flags, text, file, vocab):
    # flags, vocab_size in [1, 600] (2 bytes: value - 1), text length (1 byte), text, file
    return bytes([flags]) + struct.pack("<HB", vocab - 1, len(text)) + text + file


# llama2.c's layout: <unk>, <s>, </s>, the 256 byte tokens, then merges.
vocab = [(b"<unk>", 0.0), (b"<s>", 0.0), (b"</s>", 0.0)]
vocab += [(b"<0x%02X>" % b, 0.0) for b in range(256)]
vocab += [(b" ", -1.0), (b"a", -2.0), (b"b", -2.0), (b"ab", -0.5), (b" a", -0.7), (b" ab", -0.1),
          (b"\xc3\xa9", -3.0), (b"ba", -0.5), (b"aa", float("nan")), (b"bb", float("-inf"))]
full = tokenizer_file(6, vocab)
write("tokenizer", "bytes-and-merges", target_input(1, b"ab aab\xc3\xa9 bba\xff", full, len(vocab)))
write("tokenizer", "eos-ties", target_input(3, b"abab baba", full, len(vocab)))
small = [(b"<unk>", 0.0), (b"<s>", 0.0), (b"</s>", 0.0), (b" ", 0.0), (b"x", 0.0), (b" x", 1.0)]
write("tokenizer", "small-vocab", target_input(1, b"xx x", tokenizer_file(2, small), len(small)))
write("tokenizer", "no-fallback", target_input(0, b"y", tokenizer_file(2, small), len(small)))
write("tokenizer", "truncated", target_input(1, b"a", full[:40], len(vocab)))
write("tokenizer", "bad-length", target_input(1, b"a", struct.pack("<ifi", 2, 0.0, 9) + b"abc", 1))
