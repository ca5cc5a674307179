"""Hand edits of the hot file (`dbbasic-queue edit`): check an edited text line by line,
and merge it by job id with what workers and producers did while the editor was open."""

import re

from .errors import EditConflict
from .lineformat import COLUMNS, header_line, id_of_line, job_or_none, split_header

NOT_UTF8 = re.compile('[\udc80-\udcff]')   # bytes that were not UTF-8, as surrogateescape reads them


def problems(text):
    """Problems in an edited text, one line each with its line number (empty: fine)."""
    lines = text.split('\n')
    if split_header(lines[0]) != list(COLUMNS):
        return [f'line 1: the header must stay as it was: {header_line(COLUMNS)}']
    rows = [(f'line {number}', line, job_or_none(line, COLUMNS))
            for number, line in enumerate(lines[1:], start=2) if line.strip()]
    found = line_problems(rows)
    for where, _, job in rows:
        if job is not None and job.payload_json:
            try:
                job.payload
            except ValueError as exc:
                found.append(f'{where}: the payload is not JSON: {exc}')
    return found


def line_problems(rows):
    """Problems of (where, line, Job or None) rows, in order: bytes that are not UTF-8,
    lines that are not jobs, ids seen before. What check and edit both look for."""
    found, seen = [], {}
    for where, line, job in rows:
        if NOT_UTF8.search(line):
            found.append(f'{where}: not valid UTF-8 (a hand edit in another encoding?): '
                         f'{line[:80]!r}')
        if job is None:
            found.append(f'{where}: not a job: {line[:80]!r}')
        elif job.id in seen:
            found.append(f'{where}: job {job.id} also at {seen[job.id]}')
        else:
            seen[job.id] = where
    return found


def lines_by_id(text):
    return lines_by_id_of(text.split('\n')[1:])


def lines_by_id_of(lines):
    """{id (or the whole line, for a line that is not a job): line}, in file order."""
    return {id_of_line(line): line
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
