"""The file backend's inspection: what stats(), the dashboard's counts, its history
charts and its list pages add up (FileInspection), at C speed: read with one regex pass
over each file (a Tally), or, for stats of the hot file, from the Index the workers keep
of it (of_index). Each figure equals what the plain default of backend.Backend computes
from every job (the oracle the tests compare it with); a line the fast readers cannot
read sends a figure to that plain way.

A file only grows between rewrites (and a rewrite is a new inode), so a Tally is kept and
brought up to date from the bytes appended since: a dashboard that redraws every few
seconds reads a 100,000-job archive once, and the hot file again only when a worker
rewrote it. A line the regex does not read (a quoted tab, older columns, a hand edit)
makes the Tally inexact, and the caller counts the exact way instead.
"""

import operator
import threading
from collections import Counter
from typing import NamedTuple

from . import liveness
from .backend import Backend, ascii_lower, totals_of
from .job import ACTIVE_STATUSES, FINAL_STATUSES, FINAL_WORDS, STATUS_WORDS, Status
from .lineformat import (COLUMNS, COUNT_FINISHED, COUNT_HEAD, COUNT_HEAD_NO_ID, COUNT_ID,
                         COUNT_LINE, COUNT_RUN_AT, COUNT_STATUS_CREATED, COUNT_TYPE,
                         DECODE_ERRORS, ENCODING, PAGE_ERROR, PAGE_PAYLOAD, PAGE_STATUS,
                         PENDING_BYTES, PENDING_CREATED_PREFIX, as_stored, check_header,
                         claimed_jobs, last_lines, line_starts, lines_of_status, page_pattern,
                         parse_line_at, split_header, status_and_created, status_needle,
                         status_of, status_type_times, ids_of_lines)
from .scan import SECONDS_PER_MINUTE, Index
from .storage import TAIL_BYTES, blocks_after

DENSE_TEXT_SHARE = 0.1     # a text on more lines than this: match every line, not each hit
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


def of_index(index, counted_elsewhere, charts):
    """The Tally of the hot file (its counts, oldest, earliest, and the minutes jobs were
    created and finished in) from its scan.Index, as current as the caller made it: a
    segment of pending lines only is added up as the workers counted it; the others
    (holding claims or finished lines) are read and counted line by line, a job found in
    the archive (counted_elsewhere) skipped. None when the file has older columns.

    charts: for the charts and the list pages, which also need the minutes jobs were
    created in, and find a pending line whose job is also in the archive (a retry cut
    short by a crash, a hand edit; check reports it): the ids of every segment of pending
    lines are read (one regex pass over the file), and one that holds such a job is
    counted line by line. Without, as stats counts (a million jobs in 0.1 s), such a job
    is counted in both files."""
    if index.older is not None:
        return None
    counted = Tally(counted_elsewhere=counted_elsewhere)
    for segment in index.segments:
        data = None
        if not (segment.claims or segment.finished) and charts and counted_elsewhere:
            data = index.segment_bytes(segment)
            if counted_elsewhere.isdisjoint(ids_of_lines(data)):
                data = None   # none of its jobs is in the archive: its counts hold
            else:
                data = b'\n' + data
        if segment.claims or segment.finished or data is not None:
            data = data or b'\n' + index.segment_bytes(segment)   # add reads from the newline
            counted.add(data, 1, len(data), finished_rare=True)   # before each line
            continue
        for job_type, (earliest, jobs, _) in segment.pending.items():
            counted.counts[PENDING_BYTES, job_type.encode(ENCODING, DECODE_ERRORS)] += jobs
            counted.rows += jobs
            counted.earliest = _earliest(counted.earliest, earliest)
        counted.oldest = _earliest(counted.oldest, segment.oldest)
        if charts:
            counted.created.update(segment.created)
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
        blocks = blocks_after(table.path, kept.ino, kept.offset, kept.tail, READ_BYTES)
        if blocks is not None:
            return _added(kept, blocks, table.path, finished_rare)
    while True:
        st = table.stat()
        if st is None:
            return Kept(None, 0, b'', fresh())
        blocks = blocks_after(table.path, st.st_ino, 0, b'', READ_BYTES)
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


class FileInspection:
    """The figures of one file backend's two tables, its Tallies kept between calls: a
    dashboard that redraws every few seconds reads each file's new bytes only. The
    backend is passed to the calls that may fall back to its plain way (a kept one would
    make a reference cycle: a dropped backend's files would then wait for the GC)."""

    def __init__(self, table, archive):
        self.table, self.archive = table, archive
        self._kept_archive = None   # Kept of the archive
        self._index = None          # an Index of the hot file, apart from a worker's
        self._checked = None        # (the versions it counted, of_index for the charts)
        self._lock = threading.Lock()

    def job_totals(self):
        """The hot file as its Index has it, the archive from its kept Tally (tallies). A
        line they could not read sends it to the exact way: every line split."""
        hot, archive = self.tallies(charts=False)
        if hot is None:
            return totals_of(self._job_fields())
        counts = hot.counts + archive.counts
        pending = [t for t in (hot, archive) if t.oldest is not None]
        return (Counter({(status.decode(), job_type.decode(ENCODING, DECODE_ERRORS)): n
                         for (status, job_type), n in counts.items()}),
                min((t.oldest for t in pending), default=None),
                min((t.earliest for t in pending), default=None))

    def minute_counts(self, backend):
        hot, archive = self.tallies()
        if hot is None:
            return Backend.minute_counts(backend)
        finished = Counter({(status.decode(), minute): n for (status, minute), n
                            in (hot.finished + archive.finished).items()})
        return finished, hot.created + archive.created

    def page_jobs(self, backend, status, job_type, text, offset, limit):
        """Counts come from the Tallies; the page's lines are found from the end of each
        file (newest first), each line matched by a pattern in C, and only they are
        parsed. A text filter first finds the lines that hold it anywhere, with a byte
        search. No writer puts a tab inside a field (JSON escapes it, errors are one
        line), so the pattern reads every job line. The order: the hot file's pending
        and processing jobs, last enqueued first; then finished jobs, last finished first:
        those still in the hot file (cancelled since the last run), then the archive's."""
        hot, archive = self.tallies()
        if hot is None or hot.skipped:   # a job in both files: the lines would list it twice
            return Backend.page_jobs(backend, status, job_type, text, offset, limit)
        statuses = STATUS_WORDS if status is None else (status,)
        active = tuple(w for w in statuses if Status(w) in ACTIVE_STATUSES)
        final = tuple(w for w in statuses if Status(w) in FINAL_STATUSES)
        needle = text and ascii_lower(as_stored(text)).encode(ENCODING, DECODE_ERRORS)
        total, page = 0, []
        # (table, its tally, its groups in order: (statuses, counted by the tally))
        for table, file_tally, groups in ((self.table, hot, ((active, True), (final, False))),
                                          (self.archive, archive, ((final, True),))):
            if not any(words for words, _ in groups):
                continue
            with table.mapped() as (data, _):
                header_end = data.find(b'\n') + 1
                found = needle and _Holding(
                    data, header_end, page_pattern(
                        tuple(w for words, _ in groups for w in words), job_type), needle,
                    job_type is None or ascii_lower(job_type) == job_type)
                for words, counted in groups:
                    if not words:
                        continue
                    pattern = page_pattern(words, job_type)
                    if needle:
                        matches = found.count(words)
                        newest = found.newest(words, offset + limit - total)
                    elif not counted:     # the few finished jobs still in the hot file
                        newest = sorted((start for word in words
                                         for start in lines_of_status(data, word)
                                         if pattern.match(data, start)), reverse=True)
                        matches = len(newest)
                    else:
                        matches = sum(n for (s, t), n in file_tally.counts.items()
                                      if s.decode() in words
                                      and (job_type is None or t == job_type.encode()))
                        wanted_lines = offset + limit - total
                        newest = (last_lines(data, header_end, pattern, wanted_lines)
                                  if wanted_lines > 0 and offset - total < matches else [])
                    chosen = newest[max(0, offset - total):max(0, offset + limit - total)]
                    page += [parse_line_at(data, start) for start in chosen]
                    total += matches
        return total, page

    def tallies(self, charts=True):
        """(the hot file's Tally, the archive's), or (None, None) when they are not
        exact. The one engine of every figure: the hot file is added up from its Index
        (of_index: the segments the workers keep, and only those holding claims or
        finished lines read), the archive from its Tally, kept and brought up to date.
        charts: see of_index; its answer is kept until either file changes."""
        with self._lock:
            archive = self._archive_tally()
            if self._index is None:
                self._index = Index(self.table)
            index = self._index.current_and_saved()
            versions = (index.generation, self._kept_archive.ino, self._kept_archive.offset)
            if charts and self._checked is not None and self._checked[0] == versions:
                hot = self._checked[1]
            else:
                hot = of_index(index, archive.ids, charts)
                if charts:
                    self._checked = (versions, hot)
        if hot is None or not (hot.exact and archive.exact):
            return None, None
        return hot, archive

    def _archive_tally(self):
        """The archive's Tally, its ids kept, brought up to date (under _lock)."""
        self._kept_archive = brought_up_to_date(self.archive, self._kept_archive,
                                                lambda: Tally(keep_ids=True))
        return self._kept_archive.tally

    def _job_fields(self):
        """(status, type, created_at, run_at) of each job, each once, the archive's copy
        first (the one jobs() gives), streamed; each line split only as far as run_at."""
        seen = set()
        for table in (self.archive, self.table):
            header = None
            for line in table.iter_lines():
                if header is None:
                    header = split_header(line)
                    check_header(table.path, header)
                    continue
                fields = status_type_times(line, header)
                if fields is None or fields[0] in seen:
                    continue   # not a job (check reports it), or counted
                seen.add(fields[0])
                yield fields[1:]

    def workers(self, now, lease_seconds):
        """The workers with a live claim."""
        return sorted({job.worker for job in self.claimed_jobs()
                       if liveness.claim_is_alive(job.worker, job.claimed_at, now, lease_seconds)})

    def claimed_jobs(self):
        """Claims live only in the hot file: the archive is not read."""
        with self.table.mapped() as (data, _):
            return claimed_jobs(data)


class _Holding:
    """The lines after header_end of a file that a _page_pattern matches and whose
    payload or error holds needle (lowercase bytes; the lines are compared lowered):
    how many have each status, and the newest of them.

    A text on few lines is found by a byte search, each hit's line matched. When many
    lines hold it, the pattern runs over the lowered copy instead (matches_lowered: it
    finds the same lines there, its type having no capitals), counted in C; only the
    page's lines are then looked for, from the end."""

    def __init__(self, data, header_end, pattern, needle, matches_lowered):
        self.header_end, self.pattern, self.needle = header_end, pattern, needle
        self.lowered = data[header_end:].lower()
        occurrences = self.lowered.count(needle)
        self.dense = (matches_lowered
                      and occurrences > DENSE_TEXT_SHARE * self.lowered.count(b'\n'))
        if self.dense:
            self.counts = Counter(status for payload, status, error
                                  in pattern.findall(self.lowered)
                                  if needle in payload or needle in error)
        else:
            self.found = self._hits(data)   # (start, status) in file order

    def _hits(self, data):
        found, needle = [], self.needle
        for line_start in line_starts(self.lowered, needle):
            match = self.pattern.match(data, self.header_end + line_start)
            if match and (needle in match[PAGE_PAYLOAD].lower() or needle in match[PAGE_ERROR].lower()):
                found.append((self.header_end + line_start, match[PAGE_STATUS]))
        return found

    def count(self, words):
        """How many of the lines have one of these status words."""
        words = {word.encode() for word in words}
        if self.dense:
            return sum(self.counts[word] for word in words)
        return sum(status in words for _, status in self.found)

    def newest(self, words, count):
        """The starts of the last count lines with one of these status words, last first."""
        words = {word.encode() for word in words}
        if not self.dense:
            return [start for start, status in reversed(self.found)
                    if status in words][:max(0, count)]
        starts, end, lowered, needle = [], len(self.lowered), self.lowered, self.needle
        while len(starts) < count and end > 0:
            start = lowered.rfind(b'\n', 0, end - 1) + 1
            match = self.pattern.match(lowered, start)
            if match and match[PAGE_STATUS] in words and (needle in match[PAGE_PAYLOAD]
                                                          or needle in match[PAGE_ERROR]):
                starts.append(self.header_end + start)
            end = start
        return starts
