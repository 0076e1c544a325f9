#!/usr/bin/env python3
"""Turns the benchmarks' JSON output into the README's speed tables.

  for b in kernels select cache quant; do
    build/default/bench/kvcrush_bench_$b --benchmark_format=json --benchmark_out=$b.json \
        --benchmark_out_format=json --benchmark_min_time=0.2 > /dev/null
  done
  python3 bench/summarize.py kernels.json select.json cache.json quant.json \
      --avx2-build select_avx2_build.json

The optional --avx2-build file is the selection benchmark built for AVX2 (the
bench-avx2 preset): each of its select rows is divided by its own read pass,
and that ratio by the same ratio of the AVX-512 build, so the two runs need
not see the machine at the same speed.

A row run several times (--benchmark_repetitions, as the README runs the
selection benchmarks) stands for its median repetition. Every ratio is taken
between two rows of the same run, both timed the same
way (mean time per iteration): a kernel over the read pass (read_pass/H/N) or
memcpy (memcpy/H/N) of the same bytes. The quantization kernels have no such
row; their ratio is the benchmark's own x_read_pass counter (over the fastest
of 30 read passes of the same bytes, measured in the same process).
"""
import json
import sys


def load(paths):
    """Rows by name, and the rows of each file apart.

    A row run several times (--benchmark_repetitions) is its median
    repetition. Baseline rows (read_pass/, memcpy/) exist in several binaries
    under one name; a ratio takes the baseline from its own row's file, so
    both come from one process (see same_run)."""
    merged, files, context = {}, [], {}
    for index, path in enumerate(paths):
        with open(path) as f:
            data = json.load(f)
        context = data.get("context", context)
        runs = {}
        for b in data["benchmarks"]:
            if b.get("run_type", "iteration") == "iteration":
                runs.setdefault(b["name"], []).append(b)
        rows = {}
        for name, repeats in runs.items():
            repeats.sort(key=micros)
            rows[name] = dict(repeats[(len(repeats) - 1) // 2], _file=index)
        files.append(rows)
        merged.update(rows)
    return merged, files, context


def same_run(rows, files, row, base):
    """The baseline `base` from the file that holds `row`."""
    return files[rows[row]["_file"]].get(base) if row in rows else None


def micros(row):
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[row["time_unit"]]
    return row["real_time"] * scale


def fmt(x, digits=1):
    return f"{x:.{digits}f}"


def giga(x):
    return f"{x / 1e9:.2f}"


def table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def kernels(rows):
    isas = [i for i in ("scalar", "avx2", "avx512") if any(k.startswith(f"signatures/{i}/") for k in rows)]
    header = ["H", "N", "read pass (µs)"]
    header += [f"signatures {i} (× read)" for i in isas]
    header += [f"of which thresholds, {isas[-1]} (× read)"]
    header += [f"Hamming {i} (G tok/s)" for i in isas]
    header += ["buckets (µs)"]
    one_pass = any(k.startswith("bracket_pass/avx512/") for k in rows)
    if one_pass:
        header += ["bracket pass avx512 (× read)", "two-compare floor avx512 (× read)"]
    lines = []
    for h in (8, 32, 64, 128):
        for n in (4096, 32768, 131072):
            key = f"{h}/{n}"
            if f"read_pass/{key}" not in rows:
                continue
            line = [str(h), str(n), fmt(micros(rows[f"read_pass/{key}"]))]
            read = micros(rows[f"read_pass/{key}"])
            for i in isas:
                r = rows.get(f"signatures/{i}/{key}")
                line.append(fmt(micros(r) / read, 2) if r else "—")
            best = isas[-1]
            t = rows.get(f"thresholds/{best}/{key}")
            line.append(fmt(micros(t) / read, 2) if t else "—")
            for i in isas:
                r = rows.get(f"hamming/{i}/{key}")
                line.append(giga(r["tokens/s"]) if r else "—")
            buckets = [k for k in rows if k.startswith("buckets/") and k.endswith("/" + key)]
            line.append(fmt(micros(rows[buckets[0]])) if buckets else "—")
            if one_pass:
                for family in ("bracket_pass", "bracket_masks"):
                    r = rows.get(f"{family}/avx512/{key}")
                    line.append(fmt(micros(r) / read, 2) if r else "—")
            lines.append(line)
    return table(header, lines)


def select(rows):
    policies = ["snapkv", "snapkv+kvcrush", "h2o", "h2o+kvcrush"]
    header = ["H", "N", "read pass (µs)"] + [f"{p} µs (× read)" for p in policies]
    header += ["decode step (µs)", "snapkv+kvcrush / decode step"]
    lines = []
    for h in (1, 8, 32):
        for n in (4096, 32768, 131072):
            key = f"{h}/{n}"
            if f"select/snapkv/{key}" not in rows:
                continue
            read = micros(rows[f"read_pass/{key}"])
            line = [str(h), str(n), fmt(read)]
            for p in policies:
                r = rows[f"select/{p}/{key}"]
                line.append(f"{fmt(micros(r))} ({fmt(micros(r) / read, 2)})")
            decode = micros(rows[f"decode_attention/{key}"])
            line += [fmt(decode), fmt(micros(rows[f"select/snapkv+kvcrush/{key}"]) / decode, 3)]
            lines.append(line)
    return table(header, lines)


def select_modes(rows):
    """Each mode's time over token mode's, same policy, H and N."""
    policies = ["snapkv", "snapkv+kvcrush", "h2o", "h2o+kvcrush"]
    modes = ["block16", "block32", "per_head"]
    header = ["H", "N"] + [f"{p} {m}" for p in policies for m in modes]
    lines = []
    for h in (1, 8, 32):
        for n in (4096, 32768, 131072):
            if f"select/snapkv/block16/{h}/{n}" not in rows:
                continue
            line = [str(h), str(n)]
            for p in policies:
                token = micros(rows[f"select/{p}/{h}/{n}"])
                line += [fmt(micros(rows[f"select/{p}/{m}/{h}/{n}"]) / token, 2) for m in modes]
            lines.append(line)
    return table(header, lines)


AVX2_BUILD = "avx2_build:"


def build_ratio(rows, name):
    """AVX2 build over AVX-512 build for one select row, each over its own read pass."""
    h, n = name.split("/")[-2:]
    base = f"read_pass/{h}/{n}"
    other = AVX2_BUILD + name
    if not all(k in rows for k in (name, base, other, AVX2_BUILD + base)):
        return None
    return (micros(rows[other]) / micros(rows[AVX2_BUILD + base])) / (micros(rows[name]) / micros(rows[base]))


def avx2_table(ratio_of):
    """Rows (H, N) by columns (policy, mode) of ratio_of("select/<policy><mode>/H/N"); an (H, N)
    without a plain snapkv ratio is left out, a missing cell is a dash."""
    policies = ["snapkv", "snapkv+kvcrush", "h2o", "h2o+kvcrush"]
    modes = ["", "/block32", "/per_head"]
    header = ["H", "N"] + [f"{p}{m.replace('/', ' ')}" for p in policies for m in modes]
    lines = []
    for h in (1, 8, 32):
        for n in (4096, 32768, 131072):
            if ratio_of(f"select/snapkv/{h}/{n}") is None:
                continue
            line = [str(h), str(n)]
            for p in policies:
                for m in modes:
                    r = ratio_of(f"select/{p}{m}/{h}/{n}")
                    line.append("—" if r is None else fmt(r, 2))
            lines.append(line)
    return table(header, lines)


def select_avx2_build(rows):
    """The AVX2 build over the AVX-512 build (two binaries, each row over its run's read pass)."""
    return avx2_table(lambda name: build_ratio(rows, name))


def kernel_ratio(rows, name):
    """The AVX2 kernels over the AVX-512 kernels for one select row, same binary and run."""
    slow = "select_avx2/" + name[len("select/"):]
    return micros(rows[slow]) / micros(rows[name]) if slow in rows and name in rows else None


def select_avx2(rows):
    """AVX2 kernels over AVX-512 kernels, same binary and run."""
    return avx2_table(lambda name: kernel_ratio(rows, name))


def evict_layers(rows):
    found = sorted((int(k.split("/")[1]), k) for k in rows if k.startswith("evict_layers/"))
    if not found:
        return "(no evict_layers rows)"
    one = micros(rows[found[0][1]])
    header = ["threads", "layers", "H", "N", "ms", "speed-up over 1 thread"]
    lines = []
    for threads, key in found:
        parts = key.split("/")
        t = micros(rows[key])
        lines.append([str(threads), parts[2], parts[3], parts[4], fmt(t / 1000, 2), fmt(one / t, 2)])
    return table(header, lines)


def cache(rows):
    header = ["H", "N", "memcpy (µs)", "compact [head][token][dim] (× memcpy)", "compact [token][head][dim] (× memcpy)",
              "paged token eviction (× memcpy, ns per freed block)", "paged block eviction (ns per freed block)"]
    lines = []
    for n in (4096, 32768):
        key = f"8/{n}"
        if f"memcpy/{key}" not in rows:
            continue
        copy = micros(rows[f"memcpy/{key}"])
        tokens = rows[f"paged_evict_tokens/{key}"]
        lines.append([
            "8", str(n), fmt(copy),
            fmt(micros(rows[f"compact/head_token_dim/{key}"]) / copy, 2),
            fmt(micros(rows[f"compact/token_head_dim/{key}"]) / copy, 2),
            f"{fmt(micros(tokens) / copy, 2)}, {fmt(tokens['ns_per_freed_block'], 0)}",
            fmt(rows[f"paged_evict_blocks/{key}"]["ns_per_freed_block"], 0),
        ])
    return table(header, lines)


def quant(rows):
    isas = [i for i in ("scalar", "avx2", "avx512") if any(k.startswith(f"quant_dot/{i}/") for k in rows)]
    header = ["kernel", "bits"] + [f"{i} (× read, M tok/s)" for i in isas]
    lines = []
    key = "128/32768"
    for kernel in ("quantize", "quant_dot", "quant_sum"):
        for bits in (8, 4, 2):
            line = [kernel, str(bits)]
            for i in isas:
                r = rows.get(f"{kernel}/{i}/int{bits}/{key}")
                line.append(f"{fmt(r['x_read_pass'], 2)}, {fmt(r['tokens/s'] / 1e6, 0)}" if r else "—")
            lines.append(line)
    line = ["f16_dot", "16"]
    for i in isas:
        r = rows.get(f"f16_dot/{i}/f16/{key}")
        line.append(f"{fmt(r['x_read_pass'], 2)}, {fmt(r['tokens/s'] / 1e6, 0)}" if r else "—")
    lines.append(line)
    return table(header, lines)


def ratio(rows, files, row, base):
    """row over its baseline, both from one file."""
    b = same_run(rows, files, row, base)
    return micros(rows[row]) / micros(b) if b is not None else None


def span(values):
    values = [v for v in values if v is not None]
    return f"{min(values):.2f}–{max(values):.2f}×" if values else "—"


def targets(rows, files):
    """The issue's targets, each measured value a ratio of two rows of one run."""
    policies = ["snapkv", "snapkv+kvcrush", "h2o", "h2o+kvcrush"]
    sizes = [(h, n) for h in (1, 8, 32) for n in (4096, 32768, 131072)]
    lines = []
    hamming = [rows[f"hamming/avx512/{h}/32768"]["tokens/s"] / 1e9 for h in (8, 32, 64)
               if f"hamming/avx512/{h}/32768" in rows]
    if hamming:
        lines.append(["Hamming distances (AVX-512), H ≤ 64, N = 32768", "≥ 5 G tokens/s",
                      f"{min(hamming):.1f}–{max(hamming):.1f} G tokens/s", "yes" if min(hamming) >= 5 else "no"])
    block = [ratio(rows, files, f"select/{p}/{m}/{h}/{n}", f"select/{p}/{h}/{n}")
             for p in policies for m in ("block16", "block32") for h, n in sizes]
    block = [v for v in block if v is not None]
    if block:
        lines.append(["block mode (b = 16, 32) over token mode, H ∈ {1, 8, 32}, N ∈ {4K, 32K, 128K}", "≤ 1.25×",
                      span(block), "yes" if max(block) <= 1.25 else "no"])
    layers = sorted((int(k.split("/")[1]), k) for k in rows if k.startswith("evict_layers/"))
    if len(layers) >= 2:
        speed = micros(rows[layers[0][1]]) / micros(rows[layers[1][1]])
        lines.append(["32 layers (H = 8, N = 32768), 2 threads over 1", "≥ 1.8× faster", f"{speed:.2f}×",
                      "yes" if speed >= 1.8 else "no"])
    for keys, limit in (([(32, 32768), (32, 131072)], 2.5), ([(8, 32768), (32, 4096)], 6.0)):
        values = [ratio(rows, files, f"select/snapkv+kvcrush/{h}/{n}", f"read_pass/{h}/{n}") for h, n in keys]
        where = ", ".join(f"H = {h}, N = {n}" for h, n in keys)
        met = all(v is not None and v <= limit for v in values)
        lines.append([f"SnapKV+KVCrush over the read pass, {where}", f"≤ {limit:g}×",
                      " and ".join(f"{v:.2f}×" for v in values if v is not None), "yes" if met else "no"])
    sig = ratio(rows, files, "signatures/avx512/32/32768", "read_pass/32/32768")
    if sig is not None:
        lines.append(["signature step over the read pass, H = 32, N = 32768", "≤ 1.5×", f"{sig:.2f}×",
                      "yes" if sig <= 1.5 else "no"])
    avx2 = {k: kernel_ratio(rows, "select/" + k[len("select_avx2/"):]) for k in rows if k.startswith("select_avx2/")}
    avx2 = {k: v for k, v in avx2.items() if v is not None}
    if avx2:
        over = sorted((v, k) for k, v in avx2.items() if v > 1.6)
        note = f"{span(avx2.values())}; {len(over)} of {len(avx2)} rows above 1.6×"
        if over:
            note += f", worst {over[-1][1]}"
        lines.append(["AVX2 kernels over AVX-512, every select row (one binary)", "≤ 1.6×", note,
                      "yes" if not over else "no"])
    built = {k: build_ratio(rows, k) for k in rows if k.startswith("select/") and k.count("/") >= 3}
    built = {k: v for k, v in built.items() if v is not None}
    if built:
        over = sorted((v, k) for k, v in built.items() if v > 1.6)
        note = f"{span(built.values())}; {len(over)} of {len(built)} rows above 1.6×"
        if over:
            note += f", worst {over[-1][1]}"
        lines.append(["AVX2 build over AVX-512 build, every select row (two binaries, each over its read pass)",
                      "≤ 1.6×", note, "yes" if not over else "no"])
    return table(["what", "target", "measured", "met"], lines)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    args = sys.argv[1:]
    avx2_build = []
    while "--avx2-build" in args:
        at = args.index("--avx2-build")
        avx2_build.append(args[at + 1])
        del args[at:at + 2]
    rows, files, context = load(args)
    if avx2_build:
        other, _, _ = load(avx2_build)
        rows.update({AVX2_BUILD + k: v for k, v in other.items()})
    sections = [("Targets", "select/", lambda r: targets(r, files)), ("KVCrush kernels", "signatures/", kernels),
                ("Selection, scores to keep set", "select/", select),
                ("Selection modes, time over token mode", "select/snapkv/block16/", select_modes),
                ("AVX2 kernels, time over AVX-512 kernels", "select_avx2/", select_avx2),
                ("AVX2 build, time over AVX-512 build", AVX2_BUILD + "select/", select_avx2_build),
                ("Selection of many layers on an executor (SnapKV+KVCrush)", "evict_layers/", evict_layers),
                ("Cache compaction and paged eviction (float16, head_dim 128)", "compact/", cache),
                ("Quantized cache kernels (head_dim 128, N = 32768, one head)", "quant_dot/", quant)]
    print(f"Measured {context.get('date', '?')} on {context.get('num_cpus', '?')} CPUs "
          f"({context.get('mhz_per_cpu', '?')} MHz nominal).")
    for title, prefix, fn in sections:
        # The section's baselines (read_pass/, memcpy/) come from the file that
        # holds its rows, so that each ratio is taken within one process.
        home = next((f for f in files if any(k.startswith(prefix) for k in f)), None)
        if home is None and not any(k.startswith(prefix) for k in rows):
            continue
        scoped = dict(rows)
        if home is not None:
            scoped.update(home)
        try:
            text = fn(scoped)
        except KeyError as missing:
            # A filtered run: the section's rows are not all there.
            print(f"(section {title!r} skipped: no row {missing})", file=sys.stderr)
            continue
        print(f"\n#### {title}\n")
        print(text)


if __name__ == "__main__":
    main()
