"""The file backend's inspection figures, at C speed: what stats() and the dashboard's
history charts count, read with one regex pass over each file.

A file only grows between rewrites (and a rewrite is a new inode), so a Tally is kept and
brought up to date from the bytes appended since: a dashboard that redraws every few
seconds reads a 100,000-job archive once, and the hot file again only when a worker
rewrote it. A line the regex does not read (a
quoted tab, older columns, a hand edit) makes the Tally inexact, and the caller counts
the exact way instead.
"""

import operator
import re
from collections import Counter
from typing import NamedTuple

from .job import COLUMNS, Status, check_header
from .storage import split_header

SECONDS_PER_MINUTE = 60
_STATUSES = b'|'.join(status.value.encode() for status in Status)
# id, type, status, created_at, run_at, finished_at's whole seconds: columns 1-6 and 12.
_LINE = re.compile(rb'(?m)^([^\t\n]+)\t([^\t"\n]+)\t[^\t\n]*\t(' + _STATUSES +
                   rb')\t(\d*)\t([\d.]*)\t(?:[^\t\n]*\t){5}(\d*)[\d.]*\t')
_ID, _TYPE, _STATUS, _CREATED, _RUN_AT, _FINISHED = map(operator.itemgetter, range(6))
_PENDING = Status.PENDING.value.encode()


class Tally:
    """What the lines of one file add up to; exact is False once a line was not read."""

    def __init__(self):
        self.counts = Counter()     # (status, type), as bytes -> jobs
        self.ids = set()
        self.rows = 0
        self.oldest = None          # the earliest created_at of a pending job
        self.earliest = None        # the earliest run_at of a pending job
        self.finished = Counter()   # (status, minute of finished_at) -> jobs
        self.created = Counter()    # minute of created_at -> jobs
        self.exact = True

    def add(self, data, path=None):
        """Count whole lines; data starts with the header when path is given."""
        if path is not None:
            header_end = data.find(b'\n') + 1
            if header_end:
                header = split_header(data[:header_end - 1].decode('utf-8', 'surrogateescape'))
                check_header(path, header)
                if tuple(header) != COLUMNS:
                    self.exact = False
            data = data[header_end:]
        if not self.exact or not data:
            return
        matches = _LINE.findall(data)
        blank_lines = ((data.count(b'\n\n') if b'\n\n' in data else 0)
                       + (data.count(b'\n\r\n') if b'\n\r\n' in data else 0)
                       + data.startswith(b'\n'))
        if len(matches) != data.count(b'\n') - blank_lines:
            self.exact = False
            return
        self.rows += len(matches)
        self.ids.update(map(_ID, matches))
        self.counts.update(zip(map(_STATUS, matches), map(_TYPE, matches)))
        # Counted by the second in C, then by the minute per distinct second.
        for created, jobs in Counter(map(_CREATED, matches)).items():
            self.created[int(created or 0) // SECONDS_PER_MINUTE] += jobs
        for (status, finished), jobs in Counter(zip(map(_STATUS, matches),
                                                    map(_FINISHED, matches))).items():
            if finished:
                self.finished[status, int(finished) // SECONDS_PER_MINUTE] += jobs
        pending = [m for m in matches if m[2] == _PENDING]
        if pending:
            oldest = float(min(pending, key=_CREATED)[3] or 0)
            earliest = float(min(pending, key=_RUN_AT)[4] or 0)
            self.oldest = oldest if self.oldest is None else min(self.oldest, oldest)
            self.earliest = earliest if self.earliest is None else min(self.earliest, earliest)


class Kept(NamedTuple):
    """A Tally of the table's version ino up to byte offset, whose last bytes are tail."""
    ino: object
    offset: int
    tail: bytes
    tally: Tally


def brought_up_to_date(table, kept):
    """kept (or None) brought up to date: only the bytes appended since are read, unless
    the table was replaced or changed before kept.offset, when it is read whole."""
    if kept is not None and kept.ino is not None:
        got = table.bytes_after(kept.ino, kept.offset, kept.tail)
        if got is not None:
            _, data, offset, tail = got
            kept.tally.add(data)
            return kept._replace(offset=offset, tail=tail)
    while True:
        st = table.stat()
        if st is None:
            return Kept(None, 0, b'', Tally())
        got = table.bytes_after(st.st_ino, 0, b'')
        if got is not None:     # else it was replaced between the two: again
            _, data, offset, tail = got
            tally = Tally()
            tally.add(data, table.path)
            return Kept(st.st_ino, offset, tail, tally)
