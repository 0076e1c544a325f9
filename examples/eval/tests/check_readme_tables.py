#!/usr/bin/env python3
"""The README's accuracy tables are copies of examples/eval/results/main.md.

Every table under a README heading '#### <model>: <text>' (the main
command's per-text sections, equal-byte sections included) must appear,
line for line, in main.md under '### <model>: <text>'. A table copied under
the wrong heading, or left from an older run, fails with the first line
that differs. Usage: check_readme_tables.py README.md main.md
"""
import re
import sys


def sections(lines, marker):
    """Maps each heading's title to the tables (lists of lines) beneath it."""
    result, title, table = {}, None, []
    for line in lines + ['']:
        if line.startswith('#'):
            if table and title:
                result.setdefault(title, []).append(table)
            table = []
            match = re.match(marker + r' (\S+: \S+?)(?:, equal bytes)?$', line)
            title = match.group(1) if match else None
            if match and line.endswith(', equal bytes'):
                title += ', equal bytes'
            continue
        if line.startswith('|'):
            table.append(line)
        elif table:
            if title:
                result.setdefault(title, []).append(table)
            table = []
    return result


def main(readme_path, results_path):
    readme = sections(open(readme_path, encoding='utf-8').read().split('\n'), '####')
    # main.md keeps a text's equal-byte table in the text's own '###' section,
    # after its main and paired tables; the README gives it its own heading.
    results = sections(open(results_path, encoding='utf-8').read().split('\n'), '###')
    shown = {}
    for title, tables in readme.items():
        shown.setdefault(title.replace(', equal bytes', ''), []).extend(tables)
    failures = []
    for title, tables in shown.items():
        wanted = results.get(title)
        if wanted is None:
            failures.append(f'{title}: no section "### {title}" in {results_path}')
            continue
        if len(tables) != len(wanted):
            failures.append(f'{title}: {len(tables)} tables in the README, {len(wanted)} in {results_path}')
        for number, (table, other) in enumerate(zip(tables, wanted), 1):
            if table != other:
                line = next((a for a, b in zip(table, other) if a != b), table[-1])
                failures.append(f'{title}, table {number}: the README differs from {results_path} at: {line}')
    if not shown:
        failures.append('no accuracy tables found in the README')
    for failure in failures:
        print(failure)
    print(f'{sum(len(t) for t in shown.values())} README tables in {len(shown)} sections checked, '
          f'{len(failures)} failures')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], sys.argv[2]))
