#!/usr/bin/env python3
"""Top-1 interval half-widths of a kvcrush-eval results file (Markdown).

Prints, for every '### <model>: <text>' section, the number of rows with a
top-1 interval, their widest and median half-width (in points), and the
widest row. With --at-most W it fails when some row's half-width exceeds W:
the README's claim about the precision of a run, checked against the run.
Usage: check_half_widths.py RESULTS.md [--at-most W]
"""
import re
import statistics
import sys

INTERVAL = re.compile(r'([-+]?\d+\.\d+)% \[([-+]?\d+\.\d+), ([-+]?\d+\.\d+)\]')


def half_widths(lines):
    """Maps each section to [(half-width, row label)] over its main table's
    top-1 column (the paired and equal-byte tables have no such column)."""
    result, section, column = {}, None, None
    for line in lines:
        if line.startswith('### '):
            section, column = line[4:].strip(), None
            continue
        if not line.startswith('|') or section is None:
            column = None if not line.startswith('|') else column
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if 'top-1 agreement' in cells:
            column = cells.index('top-1 agreement')
            continue
        if column is None or column >= len(cells):
            continue
        found = INTERVAL.fullmatch(cells[column])
        if found and cells[0] != 'full':
            low, high = float(found.group(2)), float(found.group(3))
            result.setdefault(section, []).append(((high - low) / 2, f'{cells[0]} {cells[1]}'))
    return result


def main(argv):
    if not argv or len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != '--at-most'):
        sys.exit(__doc__)
    limit = float(argv[2]) if len(argv) == 3 else None
    sections = half_widths(open(argv[0], encoding='utf-8').read().split('\n'))
    failures = 0
    for section, rows in sections.items():
        widest = max(rows)
        print(f'{section}: {len(rows)} rows, top-1 half-width median {statistics.median(w for w, _ in rows):.2f}, '
              f'widest {widest[0]:.2f} ({widest[1]})')
        for width, label in rows:
            if limit is not None and width > limit + 1e-9:
                print(f'  {label}: half-width {width:.3f} points > {limit}')
                failures += 1
    if not sections:
        print('no top-1 intervals found')
        return 1
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
