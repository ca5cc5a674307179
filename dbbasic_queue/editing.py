"""Hand edits of the hot file (`dbbasic-queue edit`): check an edited text line by line,
and merge it by job id with what workers and producers did while the editor was open."""

import re

from .errors import EditConflict
from .job import COLUMNS, UnparsableLine, parse_line
from .storage import split_header

NOT_UTF8 = re.compile('[\udc80-\udcff]')   # bytes that were not UTF-8, as surrogateescape reads them


def problems(text):
    """Problems in an edited text, one line each with its line number (empty: fine)."""
    lines = text.split('\n')
    if split_header(lines[0]) != list(COLUMNS):
        return [f'line 1: the header must stay as it was: {chr(9).join(COLUMNS)}']
    found, seen = [], {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            job = parse_line(line)
        except UnparsableLine as exc:
            found.append(f'line {number}: not a job ({str(exc).split(":")[0]}): {line[:60]!r}')
            continue
        if job.id in seen:
            found.append(f'line {number}: id {job.id} is also on line {seen[job.id]}')
        seen[job.id] = number
        if job.payload_json:
            try:
                job.payload
            except ValueError as exc:
                found.append(f'line {number}: the payload is not JSON: {exc}')
    return found


def lines_by_id(text):
    return lines_by_id_of(text.split('\n')[1:])


def lines_by_id_of(lines):
    """{id (or the whole line, for a line that is not a job): line}, in file order."""
    return {line.split('\t', 1)[0] if '\t' in line else line: line
            for line in lines if line.strip()}


def changed_count(base, ours):
    return (sum(base.get(key) != line for key, line in ours.items())
            + sum(key not in ours for key in base))


def merge(base, ours, theirs):
    """The merged lines: ours where only we changed a job, theirs where only they did;
    new lines of either side; EditConflict where both changed the same job."""
    merged, conflicts = [], []
    for key, line in ours.items():
        before, now = base.get(key), theirs.get(key)
        if now == before or now == line:
            merged.append(line)
        elif line == before:
            if now is not None:
                merged.append(now)
        else:
            conflicts.append(f'job {key} was {"finished and archived" if now is None else "changed"} '
                             f'by a worker while you edited it')
    for key, before in base.items():
        if key not in ours and theirs.get(key, before) != before:
            conflicts.append(f'job {key}, which you deleted, was changed by a worker meanwhile')
    merged += [line for key, line in theirs.items() if key not in base and key not in ours]
    if conflicts:
        more = f' (and {len(conflicts) - 3} more)' if len(conflicts) > 3 else ''
        raise EditConflict('; '.join(conflicts[:3]) + more + ': nothing was saved')
    return merged
