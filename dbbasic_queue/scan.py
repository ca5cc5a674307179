"""The file backend's speed machinery, kept apart from its rules: what a worker keeps of
each line between polls, the first poll's one-pass regex, and the idle poll's cache.

Nothing here decides what happens to a job; it only answers, fast and exactly, "what is
on line i" and "is anything due". The interface is Scan: view() (a View: the entries of a
snapshot, and the whole Job of any line) and nothing_due().
"""

import logging
import math
import operator
import re
import sys
from typing import NamedTuple

from . import liveness
from .job import (COLUMNS, Status, UnparsableLine, check_header, is_queue_header, parse_line,
                  split_line)
from .storage import TAIL_BYTES, TableSummary, decode_lines, split_header

log = logging.getLogger('dbbasic_queue')

SCAN_CHUNK_BYTES = 1 << 20      # a first poll's regex pass stops at the first due chunk
SUMMARY_MIN_BYTES = 4 << 20     # a poll that read this much beyond a summary leaves a new one
_STATUS_WORDS = {status.value: status.value for status in Status}
PENDING, PROCESSING = Status.PENDING.value, Status.PROCESSING.value


class Claim(NamedTuple):
    job_id: str
    worker: str
    claimed_at: float


class Entry(NamedTuple):
    """The cheap columns of one line: a worker keeps one per queued job."""
    status: str
    type: str
    run_at: float
    claim: object        # a Claim for processing rows, else None
    priority: int


def entry_of_line(line, has_priority=True):
    """The Entry of a line, or None when it is not a job. Cheap on purpose: it splits
    only the first columns (and finds priority, the last one, with one rfind).
    has_priority is False for files written before the priority column existed."""
    fields = line.split('\t', 6)
    if len(fields) < 7 or not fields[0]:
        return None
    status = _STATUS_WORDS.get(fields[3])
    try:
        run_at = float(fields[5] or 0)
        priority = int(line[line.rfind('\t') + 1:] or 0) if has_priority else 0
    except ValueError:
        return None
    if status is None:
        return None
    job_type = fields[1] if not fields[1].startswith('"') else split_line(line)[1]
    claim = None
    if status == PROCESSING:
        every = line.split('\t')
        if len(every) != len(COLUMNS) or every[9].startswith('"'):
            every = split_line(line)   # a tab inside a quoted field, or older columns
        try:
            claimed_at = float(every[10]) if len(every) > 10 and every[10] else 0.0
        except ValueError:
            return None
        claim = Claim(fields[0], every[9] if len(every) > 9 else '', claimed_at)
    return _new_tuple(Entry, (status, sys.intern(job_type), run_at, claim, priority))


def entry_of_job(job):
    claim = Claim(job.id, job.worker, job.claimed_at) if job.status is Status.PROCESSING else None
    return _new_tuple(Entry, (job.status.value, job.type, job.run_at, claim, job.priority))


# Entry(...) goes through a Python-level __new__; this is the same tuple, built in C
# (one per queued line, so it counts).
_new_tuple = tuple.__new__


class View(NamedTuple):
    """One snapshot as a rewrite plans on it: an Entry (or None) per line, and job(i)."""
    snap: object
    entries: list
    scan: object

    def job(self, i):
        """The whole Job on line i, or None (reported once as not a job)."""
        return self.scan.job_at(self.snap, i)


class Scan:
    """Entries of the hot file's lines, parsed once per line and kept with the snapshot."""

    def __init__(self, table, lease_seconds):
        self.table = table
        self.lease_seconds = lease_seconds
        self._idle_cache = None
        self._polled = False
        self._reported_lines = set()
        self._last_parsed = None   # the snapshot whose lines were last parsed
        self.summary_file = TableSummary(table)
        self._file_summary = None   # the summary file's data, brought up to date

    def view(self, snap):
        return View(snap, self.entries(snap), self)

    def entries(self, snap):
        """Entries for every line of snap (None = not a job); parses only new lines.

        A version written by another worker is mostly lines this process has parsed:
        their entries are reused, so W workers do not each parse every rewrite anew.
        """
        check_header(self.table.path, snap.header)
        entries = snap.jobs
        has_priority = snap.header is None or tuple(snap.header) == COLUMNS
        known = {}
        last = self._last_parsed
        if (not entries and last is not None and last is not snap
                and tuple(snap.header or ()) == tuple(last.header or ())):
            known = dict(zip(last.lines, last.jobs))
        for line in snap.lines[len(entries):]:
            entry = known.get(line)
            entries.append(self._entry(line, has_priority) if entry is None else entry)
        self._last_parsed = snap
        return entries

    def _entry(self, line, has_priority=True):
        """entry_of_line, reporting (once) a line that is not a job."""
        entry = entry_of_line(line, has_priority)
        if entry is None:
            self.report_unparsable(line)
        return entry

    def job_at(self, snap, i):
        """The whole Job on line i of snap, or None (reported once as not a job)."""
        line = snap.lines[i]
        try:
            return parse_line(line, snap.header or COLUMNS)
        except UnparsableLine:
            self.report_unparsable(line)
            return None

    def report_unparsable(self, line):
        if line not in self._reported_lines:
            self._reported_lines.add(line)
            log.warning('%s: kept a line that is not a job, as it is: %.200r',
                        self.table.path, line)

    def nothing_due(self, types, worker, now_of, enough=1, patience_seconds=0.0):
        """True when nothing is due for these job types: the idle poll of a worker loop.

        Also True when fewer than `enough` are due, none for patience_seconds yet, and
        another live worker holds claims: it will take them with its next rewrite (see
        claims.ClaimCycle._claim_due).

        A process that holds no snapshot of the file as it is now (a cron run's first
        poll, or a worker after another one rewrote the file) first reads the summary
        file the last reader left and the lines appended after it. Failing that, the
        first call decides from one regex pass over the file when every line is a
        pending job. Later calls keep parsed entries and scan again only when the file
        changed; otherwise they cost one stat() plus a liveness check of each worker
        holding claims. now_of() is the clock.
        """
        st = self.table.stat()
        snap = self.table.kept_snapshot(st)
        if snap is None:
            summary = self._from_summary_file()
            if summary is not None and self._nothing_due_in(
                    _for_types(summary, types), worker, now_of(), enough, patience_seconds):
                return True
            if self._first_poll_finds_nothing_due(now_of):
                return True
            snap = self.table.snapshot(st)
        now = now_of()
        return self._nothing_due_in(self._idle_summary(snap, types, now), worker, now, enough,
                                    patience_seconds)

    def _first_poll_finds_nothing_due(self, now_of):
        """True if this process's first poll finds, in one regex pass, a file of pending
        jobs none of which is due (then it leaves a summary of it)."""
        if self._polled:
            return False
        self._polled = True
        now = now_of()
        with self.table.mapped() as (data, ino):
            # Counting by type costs a third more: only for a file worth a summary.
            by_type = {} if len(data) >= SUMMARY_MIN_BYTES else None
            next_due = next_due_if_all_pending(data, now, by_type=by_type)
            if next_due is None or now >= next_due:
                return False
            if by_type:
                self._save_pending_summary(data, ino, by_type)
        return True

    def _nothing_due_in(self, summary, worker, now, enough, patience_seconds):
        """nothing_due's answer from (next due run_at, how many are due at most, claims,
        any finished row) of the job types asked about."""
        next_due, due_count, claims, finished = summary
        if finished:
            return False
        others = [other for other, claimed_at in claims.items() if other != worker
                  and liveness.claim_is_alive(other, claimed_at, now, self.lease_seconds)]
        if len(others) < len(claims) - (worker in claims):
            return False   # a dead worker's claims to recover
        if now < next_due:
            return True
        return bool(others) and due_count < enough and now - next_due < patience_seconds

    # -- the summary file: a fresh process's first poll reads only what came after it --
    def save_summary(self, snap):
        """Leave the summary of snap (a version just written or read whole) for the next
        reader; see storage.TableSummary."""
        if snap.fd is None or tuple(snap.header or ()) != COLUMNS:
            return
        summary = {'types': {}, 'claims': {}, 'finished': False}
        _add_entries(summary, self.entries(snap))
        self.summary_file.write(summary, snap.ino, snap.offset, snap.tail)

    def _save_pending_summary(self, data, ino, by_type):
        """The summary of a file of pending jobs only (data, mapped; ino: its inode
        number), from the first poll's regex pass over all of it."""
        header_end = data.find(b'\n')
        if (self._file_summary is not None
                or tuple(split_header(data[:header_end].decode('utf-8', 'replace'))) != COLUMNS):
            return
        whole = data.rfind(b'\n') + 1
        summary = {'types': by_type, 'claims': {}, 'finished': False}
        self.summary_file.write(summary, ino, whole, data[max(0, whole - TAIL_BYTES):whole])

    def _from_summary_file(self):
        """The summary (all types) of the file as it is now, from the summary file and
        the lines appended after it, kept between polls; None without a usable one."""
        cache = self._file_summary
        if cache is not None:
            found = self.table.bytes_after(cache['ino'], cache['offset'],
                                           bytes.fromhex(cache['tail']), cache)
        else:
            found = self.summary_file.read()
        if found is None:
            self._file_summary = None
            return None
        summary, appended, end, tail = found
        # Appended lines are pending jobs, counted in C, unless a hand wrote others.
        matches = _pending_matches(b'\n' + appended[:-1]) if appended else []
        if matches is not None:
            _count_by_type(matches, summary['types'])
        else:
            _add_entries(summary, self._entries_of(appended))
        summary.update(offset=end, tail=tail.hex())
        self._file_summary = summary
        if len(appended) >= SUMMARY_MIN_BYTES:
            self.summary_file.write({key: summary[key] for key in ('types', 'claims', 'finished')},
                                    summary['ino'], end, tail)
        return summary

    def _entries_of(self, appended):
        return (self._entry(line) for line in decode_lines(appended[:-1]) if line)

    def _idle_summary(self, snap, types, now):
        """_due_and_claims of snap, kept between polls; when the file only grew, only
        the new lines are read (a count of due jobs may then miss older jobs that came
        due since: it only ever errs low)."""
        cache = self._idle_cache
        parsed = 0
        if cache is not None and cache[0] == (snap.generation, types):
            parsed, summary = cache[1], cache[2]
            if parsed == len(snap.lines):
                return summary
        else:
            summary = (math.inf, 0, {}, False)
            if snap.offset >= SUMMARY_MIN_BYTES and self._file_summary is None:
                self.save_summary(snap)   # read whole: the next reader need not
        summary = self._due_and_claims(self.entries(snap)[parsed:], types, now, *summary)
        self._idle_cache = ((snap.generation, types), len(snap.lines), summary)
        return summary

    @staticmethod
    def _due_and_claims(entries, types, now, next_due, due_count, claims, finished):
        """(earliest run_at of these types, how many are due at now, {worker: latest
        claim}, any finished row), from a summary of the lines before these entries."""
        claims = dict(claims)
        for entry in entries:
            if entry is None:
                continue
            status, job_type, run_at, claim, _ = entry   # unpacked: the fastest read
            if status == PENDING:
                if job_type in types:
                    if run_at < next_due:
                        next_due = run_at
                    if run_at <= now:
                        due_count += 1
            elif status == PROCESSING:
                claims[claim.worker] = max(claims.get(claim.worker, 0.0), claim.claimed_at)
            else:
                finished = True
        return next_due, due_count, claims, finished


def _add_entries(summary, entries):
    """Add entries to a summary: {'types': {type: [earliest run_at, pending]}, 'claims':
    {worker: latest claimed_at}, 'finished': any finished row}."""
    by_type, claims = summary['types'], summary['claims']
    for entry in entries:
        if entry is None:
            continue
        status, job_type, run_at, claim, _ = entry
        if status == PENDING:
            earliest_and_count = by_type.get(job_type)
            if earliest_and_count is None:
                by_type[job_type] = [run_at, 1]
            else:
                earliest_and_count[0] = min(earliest_and_count[0], run_at)
                earliest_and_count[1] += 1
        elif status == PROCESSING:
            claims[claim.worker] = max(claims.get(claim.worker, 0.0), claim.claimed_at)
        else:
            summary['finished'] = True


def _for_types(summary, types):
    """(next due run_at, how many are pending, claims, finished) of these types."""
    found = [summary['types'][t] for t in types if t in summary['types']]
    return (min((earliest for earliest, _ in found), default=math.inf),
            sum(count for _, count in found), summary['claims'], summary['finished'])


# One line of a pending job, from the newline before it: tab-free first six columns,
# status pending, and a run_at of 10 integer digits (2001-2286), so that the smallest
# run_at as bytes is the earliest. Each match starts at a line's own newline, so as many
# matches as lines means every line matched (a match running into the next line would
# leave that line without one).
_PENDING_LINE = re.compile(rb'\n[^\t]*\t([^\t"]*)\t[^\t]*\tpending\t\d*\t(\d{10}(?:\.\d{1,3})?)\t')
_PENDING_RUN_AT = re.compile(rb'\n[^\t]*\t[^\t"]*\t[^\t]*\tpending\t\d*\t(\d{10}(?:\.\d{1,3})?)\t')


def next_due_if_all_pending(data, now=-math.inf, chunk_bytes=SCAN_CHUNK_BYTES, by_type=None):
    """The earliest run_at of the jobs in data (the hot file's bytes, or its mmap) when
    every line is a pending job, else None. Exact, and in C: a regex over the file instead
    of parsing each line in Python (about 5 ms for 10K jobs instead of 15). It reads
    chunk_bytes at a time and stops at the first chunk holding a job due at `now`,
    returning its run_at. by_type, a dict, also gets the count and earliest run_at of
    each type (_count_by_type), for a summary.
    """
    header_end = data.find(b'\n')
    if header_end < 0:
        return None
    header = split_header(data[:header_end].decode('utf-8', 'replace'))
    if not is_queue_header(header):
        return None
    last = data.rfind(b'\n')   # ends the last whole line: one still being appended waits
    start, next_due = header_end, math.inf
    while start < last:
        stop = data.rfind(b'\n', start + 1, start + chunk_bytes)
        if stop < 0:   # a line longer than a chunk
            stop = data.find(b'\n', start + 1)
        chunk = data[start:stop]   # bytes, from a mapped file too
        if by_type is None:
            run_ats = _PENDING_RUN_AT.findall(chunk)
            if len(run_ats) != chunk.count(b'\n'):
                return None
            if run_ats:
                next_due = min(next_due, float(min(run_ats)))
        else:
            matches = _pending_matches(chunk)
            if matches is None:
                return None
            if matches:
                next_due = min(next_due, float(min(matches, key=_RUN_AT)[1]))
                _count_by_type(matches, by_type)
        if next_due <= now:
            return next_due
        start = stop
    return next_due


_RUN_AT = operator.itemgetter(1)


def _pending_matches(chunk):
    """The (type, run_at) of every line of chunk (each line after a newline, none after
    the last), or None unless every line is a pending job _PENDING_LINE reads."""
    matches = _PENDING_LINE.findall(chunk)
    return matches if len(matches) == chunk.count(b'\n') else None


def _count_by_type(matches, by_type):
    """Add (type, run_at) matches to {type: [earliest run_at, pending]}."""
    types = set(map(operator.itemgetter(0), matches))
    for job_type in types:
        mine = matches if len(types) == 1 else [m for m in matches if m[0] == job_type]
        earliest = float(min(mine, key=_RUN_AT)[1])
        name = job_type.decode('utf-8', 'surrogateescape')
        if name in by_type:
            by_type[name] = [min(by_type[name][0], earliest), by_type[name][1] + len(mine)]
        else:
            by_type[name] = [earliest, len(mine)]
