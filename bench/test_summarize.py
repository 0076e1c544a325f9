#!/usr/bin/env python3
"""Checks bench/summarize.py on synthetic benchmark output: a row run several
times stands for its median repetition, each ratio takes its baseline from its
own binary's file, and --avx2-build divides the two builds' read-pass ratios."""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def row(name, micros):
    return {"name": name, "run_type": "iteration", "real_time": micros, "time_unit": "us"}


def write(folder, name, rows):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump({"context": {"date": "test", "num_cpus": 2, "mhz_per_cpu": 1000}, "benchmarks": rows}, f)
    return path


def main():
    with tempfile.TemporaryDirectory() as folder:
        # The kernel binary's read pass is twice the selection binary's: a
        # ratio that mixed the two would read 4.00x or 10.00x below.
        kernels = write(folder, "kernels.json", [row("read_pass/32/32768", 100.0),
                                                 row("signatures/avx512/32/32768", 500.0)])
        select = write(folder, "select.json", [
            row("read_pass/32/32768", 50.0),
            # Three repetitions: the median (400) counts, not the first, the mean or the last.
            row("select/snapkv+kvcrush/32/32768", 300.0), row("select/snapkv+kvcrush/32/32768", 400.0),
            row("select/snapkv+kvcrush/32/32768", 900.0),
            {"name": "select/snapkv+kvcrush/32/32768_mean", "run_type": "aggregate", "real_time": 1.0,
             "time_unit": "us"}])
        # The AVX2 build ran while the machine was slower (its read pass took
        # 100): 960 / 100 over 400 / 50 is 1.20.
        avx2 = write(folder, "avx2.json", [row("read_pass/32/32768", 100.0),
                                           row("select/snapkv+kvcrush/32/32768", 960.0)])
        out = subprocess.run([sys.executable, os.path.join(HERE, "summarize.py"), kernels, select,
                              "--avx2-build", avx2], check=True, capture_output=True, text=True).stdout
    expected = ["| signature step over the read pass, H = 32, N = 32768 | ≤ 1.5× | 5.00× | no |",
                "8.00×",
                "| AVX2 build over AVX-512 build, every select row (two binaries, each over its read pass) "
                "| ≤ 1.6× | 1.20–1.20×; 0 of 1 rows above 1.6× | yes |"]
    missing = [e for e in expected if e not in out]
    if missing:
        print(out)
        sys.exit(f"summarize.py output lacks: {missing}")
    print("summarize.py: medians, same-file baselines and the AVX2 build ratio as expected")


if __name__ == "__main__":
    main()
