"""The file backend's inspection figures, at C speed: what stats(), the dashboard's
counts and its history charts add up, read with one regex pass over each file, or (for
stats of the hot file) from the Index the workers keep of it (of_index).

A file only grows between rewrites (and a rewrite is a new inode), so a Tally is kept and
brought up to date from the bytes appended since: a dashboard that redraws every few
seconds reads a 100,000-job archive once, and the hot file again only when a worker
rewrote it. A line the regex does not read (a quoted tab, older columns, a hand edit)
makes the Tally inexact, and the caller counts the exact way instead.
"""

import operator
from collections import Counter
from typing import NamedTuple

from .job import FINAL_WORDS
from .lineformat import (COLUMNS, COUNT_HEAD, COUNT_HEAD_NO_ID, COUNT_ID, COUNT_LINE,
                         COUNT_FINISHED, COUNT_RUN_AT, COUNT_STATUS_CREATED, COUNT_TYPE,
                         DECODE_ERRORS, ENCODING, PENDING_BYTES, PENDING_CREATED_PREFIX,
                         check_header, split_header, status_and_created, status_needle, status_of)
from .storage import TAIL_BYTES

SECONDS_PER_MINUTE = 60
# Lines are read and matched this much at a time: a million matches kept at once would
# cost ~270 MB, and the garbage collector's passes over them.
READ_BYTES = 1 << 20
_ID_OF = operator.itemgetter(COUNT_ID)
_STATUS_CREATED_TYPE = operator.itemgetter(COUNT_STATUS_CREATED, COUNT_TYPE)
_FINAL_WORDS = {word.encode() for word in FINAL_WORDS}


class Tally:
    """What the lines of one file add up to; exact is False once a line was not read.

    A job found in both files is counted as the archive has it: the hot file's Tally
    skips the lines whose id is in counted_elsewhere (the archive's ids)."""

    def __init__(self, keep_ids=False, counted_elsewhere=frozenset()):
        self.counts = Counter()     # (status, type), as bytes -> jobs
        self.ids = set() if keep_ids else None   # the archive's: see counted_elsewhere
        self.counted_elsewhere = counted_elsewhere
        self.skipped = 0            # lines of jobs counted_elsewhere
        self.rows = 0
        self.oldest = None          # the earliest created_at of a pending job
        self.earliest = None        # the earliest run_at of a pending job
        self.finished = Counter()   # (status, minute of finished_at) -> jobs
        self.created = Counter()    # minute of created_at -> jobs
        self.exact = True

    def add(self, data, start, end, path=None, finished_rare=False):
        """Count the whole lines data[start:end]; data[start - 1] is the newline before
        them, unless path is given: then they start with the header of that file.
        finished_rare: few lines are finished (the hot file), so only those are read as
        far as finished_at."""
        if path is not None:
            start = data.find(b'\n', start, end) + 1
            header = split_header(data[:start - 1].decode(ENCODING, DECODE_ERRORS))
            check_header(path, header)
            if tuple(header) != COLUMNS:
                self.exact = False
        if not self.exact or start >= end:
            return
        ids_wanted = self.ids is not None or self.counted_elsewhere
        pattern = COUNT_LINE if not finished_rare else COUNT_HEAD if ids_wanted else COUNT_HEAD_NO_ID
        matches = pattern.findall(data, start - 1, end)
        lines = data.count(b'\n', start, end)
        if len(matches) != lines and len(matches) != lines - _blank_lines(data, start, end):
            self.exact = False
            return
        counted = self._not_elsewhere(matches)
        self.skipped += len(matches) - len(counted)
        self._count(counted)
        if not finished_rare:
            self._count_finished(counted)
            return
        words = {status for status, _ in self.counts} & _FINAL_WORDS
        if words:
            self._count_finished(
                self._not_elsewhere(_finished_lines(data, start, end, words)))

    def _not_elsewhere(self, matches):
        """matches but those of jobs counted_elsewhere (checked in C: usually none is)."""
        if not self.counted_elsewhere or self.counted_elsewhere.isdisjoint(map(_ID_OF, matches)):
            return matches
        return [m for m in matches if m[COUNT_ID] not in self.counted_elsewhere]

    def _count(self, matches):
        self.rows += len(matches)
        if self.ids is not None:
            self.ids.update(map(_ID_OF, matches))
        # Counted by (status and second created, type) in C, then per distinct key.
        statuses = set()
        for (status_created, job_type), jobs in Counter(
                map(_STATUS_CREATED_TYPE, matches)).items():
            status, created = status_and_created(status_created)
            statuses.add(status)
            self.counts[status, job_type] += jobs
            created = int(created)
            self.created[created // SECONDS_PER_MINUTE] += jobs
            if status == PENDING_BYTES:
                self.oldest = _earliest(self.oldest, created)
        if PENDING_BYTES in statuses:   # the archive has none: its lines are not looked at again
            pending = (matches if len(statuses) == 1 else
                       [m for m in matches
                        if m[COUNT_STATUS_CREATED].startswith(PENDING_CREATED_PREFIX)])
            self.earliest = _earliest(self.earliest,
                                      float(min(map(operator.itemgetter(COUNT_RUN_AT), pending))))

    def _count_finished(self, matches):
        """Count matches of COUNT_LINE (finished_at read) by status and minute finished."""
        by_finished = Counter(map(operator.itemgetter(COUNT_STATUS_CREATED, COUNT_FINISHED),
                                  matches))
        for (status_created, seconds), jobs in by_finished.items():
            if seconds:
                self.finished[status_of(status_created),
                              int(seconds) // SECONDS_PER_MINUTE] += jobs


def _blank_lines(data, start, end):
    return data.count(b'\n\n', start - 1, end) + data.count(b'\n\r\n', start - 1, end)


def _finished_lines(data, start, end, words):
    """COUNT_LINE's matches of the lines in data[start:end] whose status is one of words
    (final status words, bytes), found by a byte search for each (each line once)."""
    newlines_before = set()
    for word in words:
        needle = status_needle(word.decode())
        pos = data.find(needle, start, end)
        while pos >= 0:
            newlines_before.add(data.rfind(b'\n', 0, pos))
            pos = data.find(needle, data.find(b'\n', pos, end) + 1 or end, end)
    found = (COUNT_LINE.match(data, newline, end) for newline in sorted(newlines_before))
    matches = [m.groups() for m in found if m]
    return [m for m in matches if status_of(m[COUNT_STATUS_CREATED]) in _FINAL_WORDS]


def of_index(index, counted_elsewhere):
    """The Tally of the hot file (its counts, oldest and earliest) from its scan.Index,
    as current as the caller made it: a segment of pending lines only is added up as the workers
    counted it; the others (holding claims or finished lines) are read and counted line
    by line, a job found in the archive (counted_elsewhere) skipped. None when the file
    has older columns. A pending line whose job is also in the archive (a retry cut short
    by a crash, a hand edit, which check reports) is counted in both: finding it would
    take every id of the file."""
    if index.older is not None:
        return None
    counted = Tally(counted_elsewhere=counted_elsewhere)
    for segment in index.segments:
        if segment.claims or segment.finished:
            data = b'\n' + index.segment_bytes(segment)   # add reads from the newline before
            counted.add(data, 1, len(data), finished_rare=True)
            continue
        for job_type, (earliest, jobs, _) in segment.pending.items():
            counted.counts[PENDING_BYTES, job_type.encode(ENCODING, DECODE_ERRORS)] += jobs
            counted.rows += jobs
            counted.earliest = _earliest(counted.earliest, earliest)
        counted.oldest = _earliest(counted.oldest, segment.oldest)
    return counted


def _earliest(time, other):
    return other if time is None else time if other is None else min(time, other)


class Kept(NamedTuple):
    """A Tally of the table's version ino up to byte offset, whose last bytes are tail."""
    ino: object
    offset: int
    tail: bytes
    tally: Tally


def brought_up_to_date(table, kept, fresh, finished_rare=False):
    """kept (or None) brought up to date: only the bytes appended since are read, unless
    the table was replaced or changed before kept.offset, when it is read whole into
    fresh(), a new Tally. finished_rare: see Tally.add. The bytes are read READ_BYTES at
    a time."""
    if kept is not None and kept.ino is not None:
        blocks = table.blocks_after(kept.ino, kept.offset, kept.tail, READ_BYTES)
        if blocks is not None:
            return _added(kept, blocks, table.path, finished_rare)
    while True:
        st = table.stat()
        if st is None:
            return Kept(None, 0, b'', fresh())
        blocks = table.blocks_after(st.st_ino, 0, b'', READ_BYTES)
        if blocks is not None:     # else it was replaced between the two: again
            return _added(Kept(st.st_ino, 0, b'', fresh()), blocks, table.path,
                          finished_rare)


def _added(kept, blocks, path, finished_rare):
    """kept with blocks (line_blocks of the whole lines after kept.offset) added to its
    Tally; path: the table's, whose header is the first line at offset 0."""
    offset, tail = kept.offset, kept.tail
    try:
        for data, start, end in blocks:
            kept.tally.add(data, start, end, path if offset == 0 else None, finished_rare)
            offset += end - start
            tail = (tail + data[max(start, end - TAIL_BYTES):end])[-TAIL_BYTES:]
    except BaseException:
        kept.tally.exact = False   # counted in part: the caller counts the exact way
        raise
    return kept._replace(offset=offset, tail=tail)
