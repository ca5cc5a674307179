"""The file backend's speed machinery, kept apart from its rules: an Index of the hot
file, one Segment summary per ~SEGMENT_BYTES of whole lines, so that a worker reads,
parses and rewrites only the segments that can hold what it needs, and keeps no
per-line state between rewrites: its memory does not grow with the backlog.

Nothing here decides what happens to a job. The Index answers "is anything due", "which
segments can hold due jobs, claims of these workers, or finished rows", and reads a
segment's lines with their byte offsets; a rewrite (storage.TableFile.rewrite_ranges)
copies every other segment as bytes, in the kernel.
"""

import logging
import math
import operator
import os
import sys
import time
import zlib
from collections import Counter
from typing import NamedTuple

from . import liveness
from .lineformat import (ANY_CLAIMED_AT, ANY_CREATED, ANY_LINE, ANY_PRIORITY, ANY_RUN_AT,
                         ANY_STATUS, ANY_TYPE, ANY_WORKER, COLUMNS, DECODE_ERRORS, ENCODING,
                         HEADER_BYTES, MIN_LINE_BYTES, PENDING, PENDING_BYTES, PENDING_CREATED,
                         PENDING_LINE, PENDING_RUN_AT, PENDING_TYPE, PROCESSING,
                         PROCESSING_BYTES, PROCESSING_NEEDLE, Line, UnparsableLine,
                         check_header, entry_of_job, entry_of_line, format_line,
                         line_bytes, parse_line, priorities_empty, read_lines,
                         split_header, text_between)
from .storage import (TAIL_BYTES, EditedInPlace, TableSummary, Version, close_in_background,
                      fd_owner, pread_all, storage_errors, version_of, whole_line_blocks)

log = logging.getLogger('dbbasic_queue')

SEGMENT_BYTES = 128 << 10     # a rewrite reads and parses only the segments it changes
SCAN_CHUNK_BYTES = 2 * SEGMENT_BYTES   # the file is counted this much at a time
SUMMARY_MIN_BYTES = 1 << 20   # an idle poll that read this much leaves a summary file
SECONDS_PER_MINUTE = 60
# A hot file up to this size keeps the Lines of the segments a rewrite wrote, made from
# the lines it changed, for the next rewrite: it need not read and parse them again (a
# small queue's drain, a third quicker). A bigger one keeps no per-line state.
KEEP_LINES_BYTES = 4 << 20


class Poll(NamedTuple):
    """What an idle poll found: enough for a worker to decide whether to rewrite."""
    now: float
    next_due: float          # the earliest run_at of a pending job of the types (inf: none)
    due_count: int           # how many are due now, at least
    others_working: bool     # another live worker holds claims
    finished: bool           # a finished row (a cancel, a 1.0.0 file) to archive
    dead_claims: bool        # a dead worker's claims to recover


class Segment:
    """What the whole lines in bytes [start, end) of one version add up to."""
    __slots__ = ('start', 'end', 'crc', 'pending', 'claims', 'finished', 'top_priority',
                 'oldest', 'created')

    def __init__(self, start, end, crc, pending, claims, finished, top_priority, oldest,
                 created):
        self.start, self.end, self.crc = start, end, crc   # crc: zlib.crc32 of the bytes
        self.pending = pending            # type -> [earliest run_at, count, latest run_at]
        self.claims = claims              # worker -> its latest claimed_at here
        self.finished = finished          # lines with a final status (a cancel, 1.0.0)
        self.top_priority = top_priority  # no line here has a higher priority
        self.oldest = oldest              # the earliest created_at of a pending line, or None
        # minute of created_at -> pending lines (the charts' depth: stats need no line)
        self.created = created if isinstance(created, dict) else {
            minute: count for minute, count in created}   # (pairs, from a summary file)

    def moved(self, delta):
        return Segment(self.start + delta, self.end + delta, self.crc, self.pending,
                       self.claims, self.finished, self.top_priority, self.oldest, self.created)

    def as_json(self):
        return [self.start, self.end, self.crc, self.pending, self.claims, self.finished,
                self.top_priority, self.oldest, sorted(self.created.items())]

    def due_bound(self, types, now):
        """The smallest claim order key (-priority, run_at, offset) a due job of these
        types here can have, or None when none can be due."""
        earliest = min((self.pending[t][0] for t in types if t in self.pending), default=now + 1)
        return None if earliest > now else (-self.top_priority, earliest, self.start)


def summarize(data, start, report, older=None):
    """Segments for data, the bytes of whole lines at byte offset start of a version.
    report(line) is told of a line that is not a job; older: see lineformat.read_lines."""
    segments, pos = [], 0
    while pos < len(data):
        stop = data.rfind(b'\n', pos, pos + SEGMENT_BYTES) + 1
        if stop <= pos:
            stop = data.find(b'\n', pos) + 1
        segments.append(_segment(data[pos:stop], start + pos, report, older))
        pos = stop
    return segments


_TYPE, _CREATED, _RUN_AT = map(operator.itemgetter, (PENDING_TYPE, PENDING_CREATED, PENDING_RUN_AT))


def _segment(data, start, report, older=None):
    """The Segment of data (whole lines at offset start): counted in C by a regex when
    every line is a plain job, else line by line."""
    crc, lines = zlib.crc32(data), data.count(b'\n')
    if older is not None:
        return _segment_of_lines(data, start, read_lines(data, start, report, older), crc)
    if priorities_empty(data, lines) and PROCESSING_NEEDLE not in data:
        matches = PENDING_LINE.findall(data)
        if len(matches) == lines:
            return Segment(start, start + len(data), crc, _pending_by_type(matches), {}, 0, 0,
                           float(min(map(_CREATED, matches))),
                           _by_minute(Counter(map(_CREATED, matches))))
    matches = ANY_LINE.findall(data)
    if len(matches) == lines:
        # (type, created_at, run_at) of each pending line, as PENDING_LINE has them
        pending = [(m[ANY_TYPE], float(m[ANY_CREATED] or 0), m[ANY_RUN_AT]) for m in matches
                   if m[ANY_STATUS] == PENDING_BYTES]
        claims, processing = {}, 0
        for m in matches:
            if m[ANY_STATUS] == PROCESSING_BYTES:
                worker = m[ANY_WORKER].decode(ENCODING, DECODE_ERRORS)
                claims[worker] = max(claims.get(worker, 0.0), float(m[ANY_CLAIMED_AT] or 0))
                processing += 1
        return Segment(start, start + len(data), crc, _pending_by_type(pending), claims,
                       lines - len(pending) - processing,
                       max(int(m[ANY_PRIORITY] or 0) for m in matches),
                       min(map(_CREATED, pending), default=None),
                       _by_minute(Counter(map(_CREATED, pending))))
    return _segment_of_lines(data, start, read_lines(data, start, report), crc)


def _segments_of_entries(data, start, lines):
    """summarize(data, start) made from the lines' entries (see _segment_of_entries), the
    segments cut where summarize cuts them; None when a line is not a job."""
    segments, pos, first = [], 0, 0
    while first < len(lines):
        last = first
        while last + 1 < len(lines) and lines[last + 1][1] - pos <= SEGMENT_BYTES:
            last += 1
        end = lines[last][1]
        segment = _segment_of_entries(data[pos:end], start + pos, lines[first:last + 1])
        if segment is None:
            return None
        segments.append(segment)
        pos, first = end, last + 1
    return segments


def _segment_of_lines(data, start, lines, crc):
    """The Segment of data's Lines (whole lines at offset start; crc: of data), counted
    one by one from their LineEntries; a line that is not a job is not counted."""
    return _segment_of(data, start, [line.entry for line in lines if line.entry is not None],
                       crc)


def _segment_of_entries(data, start, lines):
    """The Segment of data (whole lines at offset start) whose lines' LineEntries are
    those of lines ((start, end, entry) within data), counted from them: what _segment
    counts from the bytes (tested), with no line read. None when a line is not a job."""
    entries = [entry for _, _, entry in lines]
    if None in entries:
        return None
    return _segment_of(data, start, entries, zlib.crc32(data))


def _segment_of(data, start, entries, crc):
    """The Segment of data, whose jobs' LineEntries are entries."""
    pending, claims, finished, created = {}, {}, 0, Counter()
    top = None
    for entry in entries:
        if top is None or entry.priority > top:
            top = entry.priority
        status = entry.status
        if status == PENDING:
            run_at = entry.run_at
            found = pending.get(entry.type)
            if found is None:
                pending[entry.type] = [run_at, 1, run_at]
            else:
                if run_at < found[0]:
                    found[0] = run_at
                elif run_at > found[2]:
                    found[2] = run_at
                found[1] += 1
            created[entry.created_at] += 1
        elif status == PROCESSING:
            worker, claimed_at = entry.claim.worker, entry.claim.claimed_at
            if claims.get(worker, -1.0) < claimed_at:
                claims[worker] = claimed_at
        else:
            finished += 1
    return Segment(start, start + len(data), crc, pending, claims, finished, top or 0,
                   min(created) if created else None, _by_minute(created))


def _by_minute(created):
    """{minute: lines} of a Counter of created_at times (as text or bytes, or numbers)."""
    by_minute = {}
    for seconds, count in created.items():
        minute = int(float(seconds or 0)) // SECONDS_PER_MINUTE
        by_minute[minute] = by_minute.get(minute, 0) + count
    return by_minute


def _pending_by_type(matches):
    """{type: [earliest, count, latest]} of (type, created_at, run_at) matches, in C per
    type."""
    by_type = {}
    types = set(map(_TYPE, matches))
    for job_type in types:
        mine = matches if len(types) == 1 else [m for m in matches if m[0] == job_type]
        run_ats = list(map(_RUN_AT, mine))
        by_type[sys.intern(job_type.decode(ENCODING, DECODE_ERRORS))] = [
            float(min(run_ats)), len(mine), float(max(run_ats))]
    return by_type


def segments_problem(segments, header_end, offset, starts_a_line):
    """Why segments, loaded from a summary, cannot be those of the file whose header ends
    at header_end and whose whole lines read end at offset; None when they can: they
    cover it exactly, each from a line start (starts_a_line(offset)), and each counts
    at least one line and no more than its bytes can hold."""
    pos = header_end
    for segment in segments:
        if segment.start != pos or segment.end <= segment.start or segment.end > offset:
            return f'a segment covers {segment.start}-{segment.end}, not from {pos} on'
        if not starts_a_line(segment.start):
            return f'the segment at {segment.start} starts inside a line'
        lines = _lines_counted(segment)
        if not 1 <= lines <= (segment.end - segment.start) // MIN_LINE_BYTES:
            return f'the segment at {segment.start} counts {lines} lines'
        pos = segment.end
    if pos != offset:
        return f'the segments end at {pos}, not at {offset}'
    return None


def _lines_counted(segment):
    """The fewest lines segment's counts stand for (each worker with a claim: one)."""
    numbers = [*segment.claims.values(), segment.top_priority,
               0 if segment.oldest is None else segment.oldest]
    if (type(segment.finished) is not int or segment.finished < 0 or type(segment.crc) is not int
            or not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers)):
        return 0
    counted, pending = segment.finished + len(segment.claims), 0
    for earliest, count, latest in segment.pending.values():
        if type(count) is not int or count < 1 or not earliest <= latest:
            return 0
        pending += count
    if (sum(segment.created.values()) != pending
            or not all(type(minute) is int and type(n) is int and n > 0
                       for minute, n in segment.created.items())):
        return 0
    return counted + pending


def _merged(first, second, data):
    """first and the segment right after it (whose bytes are data), as one."""
    pending = {t: list(v) for t, v in first.pending.items()}
    for job_type, (earliest, count, latest) in second.pending.items():
        mine = pending.setdefault(job_type, [earliest, 0, latest])
        mine[0], mine[1], mine[2] = min(mine[0], earliest), mine[1] + count, max(mine[2], latest)
    claims = dict(first.claims)
    for worker, claimed_at in second.claims.items():
        claims[worker] = max(claims.get(worker, 0.0), claimed_at)
    oldest = min((s.oldest for s in (first, second) if s.oldest is not None), default=None)
    created = dict(first.created)
    for minute, count in second.created.items():
        created[minute] = created.get(minute, 0) + count
    return Segment(first.start, second.end, zlib.crc32(data, first.crc), pending, claims,
                   first.finished + second.finished, max(first.top_priority, second.top_priority),
                   oldest, created)


class Index(Version):
    """The Segments of one version of the hot file (a storage.Version: held open, so its
    inode number cannot be reused while compared), up to the end of its last whole line
    read.

    It is brought up to date by reading only what was appended since. It trusts a version
    that only grew (same inode, the bytes before its end unchanged); a rewrite proves the
    rest with the CRC of every segment before it commits (Version.proven_unchanged).
    """

    def __init__(self, table):
        self.table = table
        self.summary_file = TableSummary(table)
        self._reported = set()
        self.generation = 0
        self._totals = None         # (generation, types) and what due_summary adds up
        self.bytes_read = 0
        self._saved_generation = None
        self._whole_next = False    # forget(): no summary file at the next read
        # frozenset of job types -> jobs a claim takes, as learned by the workers (see
        # claims.ClaimCycle): kept in the summary file for the next process
        self.batch_sizes = {}
        self.fd, self._owner = None, None
        self._reset(None)

    def _hold(self, fd, close=lambda owner: owner.close()):
        """Read the version open as fd (None: no file) from now on; the one read before
        is closed with close(its fd_owner). An Index let go closes its own, in C (see
        storage.fd_owner): an app that makes a Queue per request leaks no descriptor."""
        if fd == self.fd:
            return
        if self._owner is not None:
            close(self._owner)
        self._held(fd)
        self._owner = None if fd is None else fd_owner(fd)

    def _reset(self, fd):
        """Start over on the version open as fd (None: no file)."""
        self._hold(fd)
        self.header = None          # the header line's bytes, newline included
        self.normal = True          # header COLUMNS, no CRLF: what a range rewrite keeps
        self.older = None           # the header of a file with older columns
        self.segments = []
        self.offset = 0             # the end of the last whole line read
        self.tail = b''             # the TAIL_BYTES before offset
        self.seen = None            # a version_of() of the file known to match it all
        self.counted_at = None      # when a summary loaded made its counts (None: all ours)
        self.kept_lines = {}        # segment start -> (that Segment, its Lines): see Rebuild
        self.generation += 1

    # -- bringing it up to date ------------------------------------------------------
    def current(self):
        """This Index, brought up to date with the file as it is now: the lines appended
        since are read; a new version of the file is read from the summary its writer
        left, else whole; a version changed in place is read whole."""
        if self.counted_at is not None and not self.summary_file.trusted(self.counted_at):
            self.forget()   # counts loaded from a summary are trusted only so long
        st = self.table.stat()
        if st is None:
            if self.fd is not None:
                self._reset(None)
        elif self.fd is None or self.seen != version_of(st):
            mine = None if self.fd is None else os.fstat(self.fd)
            if mine is None or (mine.st_ino, mine.st_dev) != (st.st_ino, st.st_dev):
                self._open(use_summary_file=True)
            elif self.only_grew(st):
                self._read_appended(mine)
            else:
                self._open(use_summary_file=False)
        return self

    def current_and_saved(self):
        """current(), leaving a summary file when that read much: the next process (a
        cron run's worker, a stats call) reads it instead of the file."""
        read_before = self.bytes_read
        self.current()
        if self.bytes_read - read_before >= SUMMARY_MIN_BYTES:
            self.save_summary()
        return self

    def forget(self):
        """Read the file whole (not from a summary) at the next current(): a rewrite
        found it other than this Index says."""
        self._reset(None)
        self._whole_next = True

    def _open(self, use_summary_file):
        fd = self.table.open_version()
        self._reset(fd)
        if fd is None:
            return
        whole, self._whole_next = self._whole_next, False
        if use_summary_file and not whole and self._load_summary():
            return
        self._read_appended(os.fstat(fd))

    def _read_appended(self, st):
        """Read the whole lines after offset (the header first, in a new file), a chunk at
        a time: memory stays near SCAN_CHUNK_BYTES whatever the file's size."""
        size = st.st_size
        with storage_errors(self.table.path, 'read'):
            for data in whole_line_blocks(self.fd, self.offset, size, SCAN_CHUNK_BYTES):
                self.bytes_read += len(data)
                self._take(data)   # moves self.offset past data
        after = os.fstat(self.fd)
        self.seen = (version_of(after) if version_of(after) == version_of(st)
                     and size == self.offset else None)
        self.generation += 1

    def _take(self, data):
        """Count data, the whole lines at offset."""
        self.tail = (self.tail + data[-TAIL_BYTES:])[-TAIL_BYTES:]
        if self.header is None:
            header_end = data.find(b'\n') + 1
            self._set_header(data[:header_end])
            self.offset, data = header_end, data[header_end:]
        self.normal = self.normal and b'\r\n' not in data
        self._add(summarize(data, self.offset, self.report_unparsable, self.older), data)
        self.offset += len(data)

    def _set_header(self, header_bytes):
        header = split_header(header_bytes[:-1].decode(ENCODING, DECODE_ERRORS))
        check_header(self.table.path, header)
        self.header = header_bytes
        self.normal = header_bytes == HEADER_BYTES   # a CRLF one is normalized
        self.older = None if tuple(header) == COLUMNS else tuple(header)

    def _add(self, segments, data):
        """Append segments; a small last segment takes in the first new one (its bytes
        are the start of data)."""
        if segments and self.segments:
            last, first = self.segments[-1], segments[0]
            if last.end == first.start and first.end - last.start <= SEGMENT_BYTES:
                self.segments[-1] = _merged(last, first, data[:first.end - first.start])
                segments = segments[1:]
        self.segments.extend(segments)

    def report_unparsable(self, line):
        if line not in self._reported:
            self._reported.add(line)
            log.warning('%s: kept a line that is not a job, as it is: %.200r',
                        self.table.path, line)

    # -- the summary file: the next process starts from it -------------------------------
    def save_summary(self):
        """Leave this Index beside the file (a cache) for the next reader."""
        if self.fd is None or self.header is None or self._saved_generation == self.generation:
            return
        self._saved_generation = self.generation
        summary = {'header': self.header.hex(), 'normal': self.normal, 'seen': self.seen,
                   'segments': [segment.as_json() for segment in self.segments],
                   'batch_sizes': [[sorted(types), size]
                                   for types, size in self.batch_sizes.items()]}
        self.summary_file.write(summary, os.fstat(self.fd).st_ino, self.offset, self.tail,
                                time.time() if self.counted_at is None else self.counted_at)

    def _load_summary(self):
        """Start from the summary file, if it is of the version open; then read what was
        appended after it. The batch sizes it names are learned whatever its version."""
        saved, found = self.summary_file.read()
        self._learn_batch_sizes(saved)
        if found is None:
            return False
        summary, appended, end, tail = found
        try:
            if summary['ino'] != os.fstat(self.fd).st_ino:
                return False
            self._set_header(bytes.fromhex(summary['header']))
            self.normal = self.normal and summary['normal'] is True
            self.segments = [Segment(*fields) for fields in summary['segments']]
            self.offset, self.tail = summary['offset'], bytes.fromhex(summary['tail'])
            seen = summary['seen']
            problem = segments_problem(self.segments, len(self.header), self.offset,
                                       self._starts_a_line)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:   # not of our shape
            problem = repr(exc)
        if problem is not None:
            log.debug('ignoring %s: %s', self.summary_file.path, problem)
            self._reset(self.fd)
            return False
        self.counted_at = summary['counted_at']
        # Proven only while the file is the version its writer had proven: else a rewrite
        # checks every segment's CRC first.
        self.seen = tuple(seen) if seen and tuple(seen) == version_of(os.fstat(self.fd)) else None
        if appended:
            self.normal = self.normal and b'\r\n' not in appended
            self._add(summarize(appended, self.offset, self.report_unparsable, self.older),
                      appended)
            self.offset, self.tail = end, tail
        self._saved_generation = self.generation = self.generation + 1
        return True

    def summary_mismatch(self):
        """The first byte offset from which the summary file's counts differ from the
        file's bytes, or None when it matches (or is not one a reader would trust): for
        check. Reads every segment the summary counts."""
        self.current()
        if self.counted_at is None:
            return None
        for segment in self.segments:
            recounted = _segment(self.segment_bytes(segment), segment.start, lambda line: None,
                                 self.older)
            if recounted.as_json() != segment.as_json():
                return segment.start
        return None

    def _starts_a_line(self, offset):
        return os.pread(self.fd, 1, offset - 1) == b'\n'

    def _learn_batch_sizes(self, summary):
        """The batch sizes summary (a dict, or None) names, for job types this process
        has not learned a size of itself; a size of the wrong shape is ignored."""
        try:
            learned = {frozenset(types): size for types, size in summary['batch_sizes']
                       if isinstance(types, list) and type(size) is int and size > 0}
        except (KeyError, TypeError, ValueError):
            return   # none, or not of this shape (an older version's summary)
        self.batch_sizes = {**learned, **self.batch_sizes}

    # -- what the segments add up to ------------------------------------------------------
    def claims(self):
        """{worker: latest claimed_at} of every claim in the file."""
        claims = {}
        for segment in self.segments:
            for worker, claimed_at in segment.claims.items():
                claims[worker] = max(claims.get(worker, 0.0), claimed_at)
        return claims

    def due_summary(self, types, now):
        """(earliest run_at of these types, how many are due at least, claims, any
        finished row). What the segments add up to is kept until the Index changes: an
        idle poll of an unchanged file adds nothing up."""
        key = (self.generation, types)
        if self._totals is None or self._totals[0] != key:
            by_segment, finished = [], False
            for segment in self.segments:
                finished = finished or segment.finished > 0
                by_segment += [found for found in map(segment.pending.get, types) if found]
            next_due = min((found[0] for found in by_segment), default=math.inf)
            self._totals = (key, by_segment, next_due, self.claims(), finished)
        _, by_segment, next_due, claims, finished = self._totals
        if next_due > now:
            return next_due, 0, claims, finished
        due_count = sum(found[1] if found[2] <= now else found[0] <= now for found in by_segment)
        return next_due, due_count, claims, finished

    def segment_bytes(self, segment):
        """The bytes of segment in the version open."""
        return pread_all(self.fd, segment.end - segment.start, segment.start)

    def lines_of(self, segment):
        """The Lines of segment: those the last rewrite kept of it, else read."""
        kept = self.kept_lines.get(segment.start)
        if kept is not None and kept[0] is segment:
            return kept[1]
        return self.segment_lines(segment)

    def segment_lines(self, segment):
        """The Lines of segment, read."""
        return read_lines(self.segment_bytes(segment), segment.start, self.report_unparsable,
                          self.older)

    # -- the idle poll ----------------------------------------------------------------------
    def poll(self, types, worker, now_of, lease_seconds):
        """A Poll of these job types, as a worker's idle poll sees the file now. Costs one
        stat() when the file did not change, else a read of the lines appended since (or
        of the summary file a fresh process finds)."""
        self.current_and_saved()
        now = now_of()
        next_due, due_count, claims, finished = self.due_summary(types, now)
        others = [other for other, claimed_at in claims.items() if other != worker
                  and liveness.claim_is_alive(other, claimed_at, now, lease_seconds)]
        return Poll(now, next_due, due_count, bool(others), finished,
                    len(others) < len(claims) - (worker in claims))

    # -- a rewrite ---------------------------------------------------------------------------
    def rebuild(self, changes):
        """A Rebuild of changes (see Rebuild) for after_rewrite."""
        return Rebuild(changes, self.report_unparsable)

    def keeps_lines(self):
        return self.offset <= KEEP_LINES_BYTES

    def after_rewrite(self, rebuild, fd, carried, renamed, tail):
        """Make this the Index of the version a rewrite just wrote: rebuild, the Rebuild
        it wrote; fd, the new version; carried, the lines appended meanwhile; renamed and
        tail, its version_of() and last TAIL_BYTES. Segments not rewritten move by the
        bytes changed before them; rewritten ones are replaced by what rebuild counted."""
        segments, delta, kept = [], 0, dict(rebuild.kept_lines)
        for segment in self.segments:
            change = rebuild.changed.get(segment.start)
            if change is None:
                segments.append(segment.moved(delta) if delta else segment)
                if not delta and segment.start in self.kept_lines:
                    kept[segment.start] = self.kept_lines[segment.start]   # not moved
            else:
                delta += change[0]
                segments += change[1]
        self._hold(fd, lambda old: close_in_background(old, self.offset))
        self.segments, self.kept_lines = segments, kept
        self.offset += delta
        if carried:
            self.normal = self.normal and b'\r\n' not in carried
            self._add(summarize(carried, self.offset, self.report_unparsable), carried)
            self.offset += len(carried)
        self.tail, self.seen = tail, renamed
        self.generation += 1

    # -- what a rewrite proves before it commits (storage.Version) ------------------------
    def bytes_match(self):
        """The header, and every segment by its CRC."""
        if pread_all(self.fd, len(self.header), 0) != self.header:
            return False
        return all(zlib.crc32(self.segment_bytes(s)) == s.crc for s in self.segments)


def job_of_text(text, header, reporter):
    try:
        return parse_line(text, header)
    except UnparsableLine:
        reporter.report_unparsable(text)
        return None


class Rebuild:
    """The changed segments of a rewrite, (start, end, new bytes) in file order, passed on
    to the writer one at a time and counted as they pass: a rewrite never holds the new
    bytes of more than a segment or two, however many lines it changes. Rewritten
    segments are counted again from their new bytes, two small neighbours as one.

    changes also gives the new bytes' lines ((start, end, LineEntry) within them, made
    from the lines changed, no line parsed: see SegmentView.changes) in a small file:
    they are kept as the new segments' Lines (kept_lines), for the next rewrite."""

    def __init__(self, changes, report):
        self.changes, self.report = changes, report
        self.changed = {}      # old segment start -> (bytes added, its new Segments)
        self.kept_lines = {}   # new segment start -> (the Segment, its Lines)

    def __iter__(self):
        delta, last_end = 0, None
        small = None   # (old start, new start, bytes, lines) of the last rebuilt, one segment
        for start, end, new, lines in self.changes:
            yield start, end, new
            new_start, delta = start + delta, delta + len(new) - (end - start)
            if last_end != start:
                small = None   # an unchanged segment lies between
            last_end = end
            self.changed[start] = (len(new) - (end - start), [])
            if not new:
                continue
            if small is not None and len(small[2]) + len(new) <= SEGMENT_BYTES:
                self.kept_lines.pop(small[1], None)
                lines = None if lines is None or small[3] is None else small[3] + [
                    (line_start + len(small[2]), line_end + len(small[2]), entry)
                    for line_start, line_end, entry in lines]
                start, new_start, new = small[0], small[1], small[2] + new
            made = (None if lines is None else _segments_of_entries(new, new_start, lines)
                    ) or summarize(new, new_start, self.report)
            self.changed[start] = (self.changed[start][0], made)
            if lines is not None:
                self._keep(made, new_start, lines)
            small = (start, new_start, new, lines) if len(made) == 1 else None

    def _keep(self, made, new_start, lines):
        """Keep lines (within the bytes at new_start) as the Lines of the segments made."""
        by_segment, i = {segment.start: [] for segment in made}, 0
        for line_start, line_end, entry in lines:
            while new_start + line_start >= made[i].end:
                i += 1
            by_segment[made[i].start].append(
                Line(new_start + line_start, new_start + line_end, made[i].start, entry))
        for segment in made:
            self.kept_lines[segment.start] = (segment, by_segment[segment.start])


class SegmentView:
    """The segments of the hot file one rewrite read, and their lines by byte offset. It
    keeps the Entries of their lines, not their bytes: the bytes of the few segments a
    rewrite changes are read again, and checked to be those read first."""

    def __init__(self, index):
        self.index = index
        self.lines = {}    # start offset -> Line, in file order within each segment
        self.loaded = {}   # segment start -> the Segment read
        self.segment_lines = {}   # segment start -> its Lines, in file order
        self.known = {}    # start -> the LineEntry a planner knows a changed line will have

    def load_where(self, wanted):
        """Read the lines of every segment for which wanted(segment) is true."""
        for segment in self.index.segments:
            if wanted(segment):
                self.load(segment)

    def load(self, segment):
        """Read segment's lines (once); returns those newly read."""
        if segment.start in self.loaded:
            return []
        lines = self.index.lines_of(segment)
        self.loaded[segment.start] = segment
        self.segment_lines[segment.start] = lines
        self.lines.update((line.start, line) for line in lines)
        return lines

    def _read_again(self, segment_start):
        """(the Segment loaded at segment_start, its bytes), or EditedInPlace when they
        are not the bytes the Index counted."""
        segment = self.loaded[segment_start]
        data = self.index.segment_bytes(segment)
        if zlib.crc32(data) != segment.crc:
            raise EditedInPlace(f'{self.index.table.path} changed in place')
        return segment, data

    def texts(self, starts):
        """(start, the line's text without its newline) of the lines at starts, in file
        order, each segment read once."""
        by_segment = {}
        for start in sorted(starts):
            by_segment.setdefault(self.lines[start].segment, []).append(start)
        for segment_start, in_segment in by_segment.items():
            segment, data = self._read_again(segment_start)
            for start in in_segment:
                yield start, text_between(data, start - segment.start,
                                          self.lines[start].end - segment.start)

    def job_of(self, text):
        """The whole Job on a line of text, or None (reported once as not a job)."""
        return job_of_text(text, COLUMNS, self.index)

    def jobs(self, starts):
        """(start, the whole Job there or None) of the lines at starts, in file order."""
        return [(start, self.job_of(text)) for start, text in self.texts(starts)]

    def changes(self, plan_changes):
        """(start, end, new bytes, their lines) of each segment with a changed line (to a
        Job, to a line of text, or None: dropped), in file order, made one at a time:
        what a Rebuild passes on to storage.TableFile.rewrite_ranges. Their lines (see
        Rebuild) are made only where the index keeps them (a small file), else None; a
        changed line's LineEntry is the one the planner knew (known), else made from its
        Job or read. The Lines are let go first: this view is spent."""
        by_segment = {}
        for start, job in sorted(plan_changes.items()):
            line = self.lines[start]
            by_segment.setdefault(line.segment, []).append((line.start, line.end, job))
        self.lines.clear()
        keep = self.index.keeps_lines()
        kept_by_segment = self.segment_lines if keep else {}
        self.segment_lines = {}
        for segment_start, lines in by_segment.items():
            segment, data = self._read_again(segment_start)
            pieces, pos, written = [], segment.start, {}   # start -> (bytes, LineEntry) or None
            for start, end, job in lines:
                pieces.append(data[pos - segment.start:start - segment.start])
                if job is not None:
                    text = job if isinstance(job, str) else format_line(job)
                    pieces.append(line_bytes(text))
                    if keep:
                        written[start] = (len(pieces[-1]), self.known.get(start) or (
                            entry_of_line(text) if isinstance(job, str) else entry_of_job(job)))
                elif keep:
                    written[start] = None
                pos = end
            pieces.append(data[pos - segment.start:])
            new_lines = (_lines_after(kept_by_segment[segment_start], written)
                         if keep else None)
            yield segment.start, segment.end, b''.join(pieces), new_lines


def _lines_after(lines, written):
    """(start, end, LineEntry) of a segment's lines once written: written[start] is
    (bytes, LineEntry) where a line was changed, None where it was dropped; offsets
    within the new bytes. No line is read: the others keep their entries."""
    new, pos = [], 0
    for line in lines:
        if line.start in written:
            change = written[line.start]
            if change is None:
                continue
            length, entry = change
        else:
            length, entry = line.end - line.start, line.entry
        new.append((pos, pos + length, entry))
        pos += length
    return new
