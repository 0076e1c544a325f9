#!/usr/bin/env python3
"""The README's accuracy tables are copies of files in examples/eval/results.

Every table under a README heading '#### <model>: <text>' (the main
command's per-text sections, equal-byte sections included) must appear,
line for line, under '### <model>: <text>' in the first results file (the
main command's, main.md). A heading '#### <model>: <text>, <N> chunks' names
the results file whose '### <model>: <text>' section ran over N chunks
instead (a longer run than the main command's). A table copied under the
wrong heading, or left from an older run, fails with the first line that
differs. Usage: check_readme_tables.py README.md main.md [other.md ...]
"""
import re
import sys

TITLE = re.compile(r'(\S+: \S+?)(?:, (equal bytes|\d+ chunks))?$')
CHUNKS = re.compile(r' predicted tokens in (\d+) chunks\.')


def sections(lines, marker):
    """Maps each heading's title to the tables (lists of lines) beneath it,
    and each title to the chunk count its section states."""
    tables, chunks, title, table = {}, {}, None, []
    for line in lines + ['']:
        if line.startswith('#'):
            if table and title:
                tables.setdefault(title, []).append(table)
            table = []
            match = TITLE.match(line[len(marker) + 1:]) if line.startswith(marker + ' ') else None
            title = None
            if match:
                title = match.group(1) + (', ' + match.group(2) if match.group(2) else '')
            continue
        found = CHUNKS.search(line)
        if found and title:
            chunks[title] = int(found.group(1))
        if line.startswith('|'):
            table.append(line)
        elif table:
            if title:
                tables.setdefault(title, []).append(table)
            table = []
    return tables, chunks


def main(readme_path, results_paths):
    readme, _ = sections(open(readme_path, encoding='utf-8').read().split('\n'), '####')
    results = [(path, *sections(open(path, encoding='utf-8').read().split('\n'), '###'))
               for path in results_paths]
    # A results file keeps a text's equal-byte table (the one with a storage
    # column) in the text's own '###' section, after its main and paired
    # tables; the README gives it a heading of its own, ', equal bytes'.
    failures = []
    for title, tables in readme.items():
        equal_bytes = title.endswith(', equal bytes')
        name = title[:-len(', equal bytes')] if equal_bytes else title
        counted = re.match(r'(.*), (\d+) chunks$', name)
        if counted:
            section, count = counted.group(1), int(counted.group(2))
            source = next(((p, t[section]) for p, t, c in results if c.get(section) == count), None)
            where = f'no section "### {section}" over {count} chunks in {", ".join(results_paths)}'
        else:
            section = name
            path, found, _ = results[0]
            source = (path, found[section]) if section in found else None
            where = f'no section "### {section}" in {path}'
        if source is None:
            failures.append(f'{title}: {where}')
            continue
        path, wanted = source
        wanted = [t for t in wanted if t[0].startswith('| policy | storage') == equal_bytes]
        if len(tables) != len(wanted):
            failures.append(f'{title}: {len(tables)} tables in the README, {len(wanted)} in {path}')
        for number, (table, other) in enumerate(zip(tables, wanted), 1):
            if table != other:
                line = next((a for a, b in zip(table, other) if a != b), table[-1])
                failures.append(f'{title}, table {number}: the README differs from {path} at: {line}')
    if not readme:
        failures.append('no accuracy tables found in the README')
    for failure in failures:
        print(failure)
    print(f'{sum(len(t) for t in readme.values())} README tables in {len(readme)} sections checked, '
          f'{len(failures)} failures')
    return 1 if failures else 0


if __name__ == '__main__':
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
