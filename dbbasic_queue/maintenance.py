"""Reading and tidying a file queue: what the CLI's list, show, stats, retry, purge and
check do. The queue logic that moves jobs is in queue.py; this only reads, and rewrites
the archive."""

import logging
import re

from . import liveness
from .errors import EditConflict
from .job import (COLUMNS, FINAL_STATUSES, Status, UnparsableLine, check_header, format_line,
                  number, parse_line, split_line)
from .storage import abandoned_temp_files, split_header
from .validate import check_limit

log = logging.getLogger('dbbasic_queue')
STATUS_WORDS = tuple(status.value for status in Status)
NOT_UTF8 = re.compile('[\udc80-\udcff]')   # bytes that were not UTF-8, as surrogateescape reads them


class Inspection:
    """list_jobs and stats, for any backend that can list its jobs()."""

    def list_jobs(self, status=None, job_type=None, limit=None):
        """Jobs as get_job dicts with the extra columns, filtered, in storage order."""
        if status is not None and status not in STATUS_WORDS:
            raise ValueError(f'status must be one of {", ".join(STATUS_WORDS)}, got {status!r}')
        chosen = [job.to_dict(full=True) for job in self.jobs()
                  if (status is None or job.status.value == status)
                  and (job_type is None or job.type == job_type)]
        return chosen if limit is None else chosen[:limit]

    def stats(self):
        """Counts by status and by type, oldest pending age, next due time, live workers."""
        now = self._clock()
        by_status = dict.fromkeys(STATUS_WORDS, 0)
        by_type, workers = {}, set()
        oldest_created, next_due = None, None
        for job in self.jobs():
            status = job.status.value
            by_status[status] += 1
            counts = by_type.setdefault(job.type, dict.fromkeys(STATUS_WORDS, 0))
            counts[status] += 1
            if job.status is Status.PENDING:
                oldest_created = min(oldest_created or job.created_at, job.created_at)
                next_due = min(next_due or job.run_at, job.run_at)
            elif job.status is Status.PROCESSING and liveness.claim_is_alive(
                    job.worker, job.claimed_at, now, self.lease_seconds):
                workers.add(job.worker)
        return {
            'total': sum(by_status.values()), 'by_status': by_status, 'by_type': by_type,
            'oldest_pending_seconds': None if oldest_created is None else max(0, now - oldest_created),
            'next_due_at': None if next_due is None else number(next_due),
            'workers': sorted(workers),
        }


    def read_rows(self):
        """Every job as a list of str in COLUMNS order (what _read_tsv returns)."""
        return [split_line(format_line(job)) for job in self.jobs()]


class FileEditing:
    """`dbbasic-queue edit`: the hot file edited by hand, safely. Read one version, let the
    person edit a copy without holding the lock, check every line, then merge by job id
    with what workers and producers did meanwhile and commit atomically."""

    def read_for_edit(self):
        """The hot file's text (one consistent version, read under the lock)."""
        self._upgrade_header()   # edit our columns, never 1.0.0's
        with self._table.lock:
            data = self._table.read_bytes()
        return data.decode('utf-8', 'surrogateescape') or self._table.header_line + '\n'

    def check_edit(self, text):
        """Problems in an edited text, one line each with its line number (empty: fine)."""
        lines = text.split('\n')
        if split_header(lines[0]) != list(COLUMNS):
            return [f'line 1: the header must stay as it was: {chr(9).join(COLUMNS)}']
        problems, seen = [], {}
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                job = parse_line(line)
            except UnparsableLine as exc:
                problems.append(f'line {number}: not a job ({str(exc).split(":")[0]}): '
                                f'{line[:60]!r}')
                continue
            if job.id in seen:
                problems.append(f'line {number}: id {job.id} is also on line {seen[job.id]}')
            seen[job.id] = number
            if job.payload_json:
                try:
                    job.payload
                except ValueError as exc:
                    problems.append(f'line {number}: the payload is not JSON: {exc}')
        return problems

    def save_edit(self, original, edited):
        """Commit an edited text, merged by job id with the file as it is now; returns
        how many lines the edit changed. A job changed both in the edit and by a worker
        (or finished meanwhile) raises EditConflict and nothing is saved. Jobs appended
        meanwhile are kept."""
        base, ours = _lines_by_id(original), _lines_by_id(edited)
        with self._state_lock:
            for holding in self._table.attempts():
                with holding:
                    snap = self._table.snapshot()
                    merged = _merge_edit(base, ours, _lines_by_id_of(snap.lines))
                    if self._table.commit(snap, merged) is not None:
                        return sum(base.get(key) != line for key, line in ours.items()) + \
                            sum(key not in ours for key in base)


def _lines_by_id(text):
    return _lines_by_id_of(text.split('\n')[1:])


def _lines_by_id_of(lines):
    """{id (or the whole line, for a line that is not a job): line}, in file order."""
    return {line.split('\t', 1)[0] if '\t' in line else line: line
            for line in lines if line.strip()}


def _merge_edit(base, ours, theirs):
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
        raise EditConflict('; '.join(conflicts[:3]) + (f' (and {len(conflicts) - 3} more)'
                                                       if len(conflicts) > 3 else '')
                           + ': nothing was saved')
    return merged


class FileMaintenance(Inspection, FileEditing):
    """The file queue's side of the CLI: find, list, retry, purge, check."""

    def find_job(self, job_id):
        """The Job (every column) with this id, or None. Like get_job, reads the files."""
        if not isinstance(job_id, str) or not job_id or '\t' in job_id or '\n' in job_id:
            return None
        job = find_line(self._table.read_bytes(), job_id)
        if job is None or job.status is not Status.PENDING:
            job = find_line(self._archive.read_bytes(), job_id) or job
        return job

    def _file_lines(self):
        """(file path, line number, line, Job or None) for every line of both files."""
        for table in (self._table, self._archive):
            header, lines = table.read_lines()
            check_header(table.path, header)
            for line_number, line in enumerate(lines, start=2):
                yield table.path, line_number, line, job_or_none(line, header)

    def jobs(self):
        """Every job of both files (hot file first, then the archive), as Jobs.

        A job found in both (after a crash) is given once, as the archive has it.
        """
        found = {}
        for _, _, _, job in self._file_lines():
            if job is not None and (job.id not in found or found[job.id].status is Status.PENDING
                                    or job.status in FINAL_STATUSES):
                found[job.id] = job
        return list(found.values())

    def retry(self, job_id=None, *, failed=False, job_type=None):
        """Make failed or cancelled jobs pending again, with fresh attempts; returns their ids.

        Either one job_id, or failed=True for every failed job (of job_type, if given).
        A job_id that is not failed or cancelled raises ValueError; an unknown one, KeyError.
        """
        if (job_id is None) == (not failed):
            raise ValueError('give either a job_id or failed=True')
        now = self._clock()

        def chosen(job):
            if job_id is not None:
                return job.id == job_id
            return job.status is Status.FAILED and (job_type is None or job.type == job_type)

        with self._state_lock:
            for holding in self._archive.attempts():
                with holding:
                    archive = self._archive.snapshot()
                    keep, revived = [], {}
                    for line in archive.lines:
                        job = job_or_none(line, archive.header)
                        if job is not None and chosen(job):
                            if job.status not in (Status.FAILED, Status.CANCELLED):
                                raise ValueError(f'job {job.id} is {job.status.value}: only '
                                                 f'failed and cancelled jobs can be retried')
                            revived[job.id] = job.evolve(
                                status=Status.PENDING, attempts=0, run_at=now, worker='',
                                claimed_at=0.0, finished_at=0.0)
                        else:
                            keep.append(line)
                    if not revived:
                        return self._nothing_to_retry(job_id)

                    def append_revived():
                        # Pending first, then gone from the archive: a crash between
                        # leaves the job in both files, and the pending copy runs.
                        self._table.append_lines(map(format_line, revived.values()),
                                                 fsync=True)

                    if self._archive.commit(archive, keep, append_revived) is not None:
                        return list(revived)

    def _nothing_to_retry(self, job_id):
        if job_id is None:
            return []
        current = self.find_job(job_id)
        if current is None:
            raise KeyError(job_id)
        raise ValueError(f'job {job_id} is {current.status.value}: only failed and '
                         f'cancelled jobs can be retried')

    def purge(self, statuses, older_than_seconds=None, dry_run=False, *, keep=None):
        """Delete finished jobs of these statuses from the archive; returns their ids.

        A job goes if it finished more than older_than_seconds ago, or if it is not among
        the newest `keep` jobs of these statuses (give either, or both). Only the named
        statuses are touched: failed jobs stay unless you name them. dry_run only lists.
        The archive is read and filtered outside the lock (jobs finishing meanwhile are
        kept), so enqueues never wait for a purge.
        """
        cutoff = purge_cutoff(statuses, older_than_seconds, keep, self._clock())
        with self._state_lock:
            for holding in self._archive.attempts():
                with holding:
                    archive = self._archive.snapshot()
                    jobs = [job_or_none(line, archive.header) for line in archive.lines]
                    purged = chosen_for_purge([j for j in jobs if j], set(statuses), cutoff, keep)
                    if not purged or dry_run:
                        return purged
                    gone = set(purged)
                    kept = [line for line, job in zip(archive.lines, jobs)
                            if job is None or job.id not in gone]
                    if self._archive.commit(archive, kept) is not None:
                        return purged

    def check(self):
        """Problems found in the files, as one-line descriptions (empty: all is well).

        Lines that are not jobs, ids that appear more than once, jobs still claimed by a
        worker that is gone, temp files left by a crashed rewrite.
        """
        problems, seen, now = [], {}, self._clock()
        for path, line_number, line, job in self._file_lines():
            if NOT_UTF8.search(line):
                problems.append(f'{path.name}:{line_number}: not valid UTF-8 (a hand edit in '
                                f'another encoding?): {line[:80]!r}')
            if job is None:
                problems.append(f'{path.name}:{line_number}: not a job: {line[:80]!r}')
                continue
            if job.id in seen:
                problems.append(f'{path.name}:{line_number}: job {job.id} also at {seen[job.id]}')
            seen[job.id] = f'{path.name}:{line_number}'
            if job.status is Status.PROCESSING and not liveness.claim_is_alive(
                    job.worker, job.claimed_at, now, self.lease_seconds):
                problems.append(f'{path.name}:{line_number}: job {job.id} is processing by '
                                f'{job.worker or "an unknown worker"}, which is gone')
        for leftover in sorted(abandoned_temp_files(self._table.lock.path)):
            problems.append(f'{leftover.name}: temp file left by an interrupted rewrite')
        return problems


def purge_cutoff(statuses, older_than_seconds, keep, now):
    """Check purge's arguments (ValueError); the finish time before which jobs go, or None."""
    allowed = {status.value for status in FINAL_STATUSES}
    statuses = set(statuses)
    if not statuses or not statuses <= allowed:
        raise ValueError(f'statuses must be some of {", ".join(sorted(allowed))}, '
                         f'got {", ".join(sorted(statuses)) or "none"}')
    check_limit('older_than_seconds', older_than_seconds)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise ValueError(f'keep must be an int >= 0 or None, got {keep!r}')
    if older_than_seconds is None and keep is None:
        raise ValueError('give older_than_seconds, keep, or both')
    return None if older_than_seconds is None else now - older_than_seconds


def chosen_for_purge(jobs, statuses, cutoff, keep):
    """The ids, in the order of jobs, of those with these statuses that finished before
    cutoff (None: any age) or are not among the newest `keep` of them (None: any number)."""
    def finished(job):
        return job.finished_at or job.created_at

    candidates = [job for job in jobs if job.status.value in statuses]
    newest_first = sorted(candidates, key=finished, reverse=True)
    kept = {job.id for job in newest_first[:keep]} if keep is not None else None
    return [job.id for job in candidates
            if (cutoff is not None and finished(job) < cutoff)
            or (kept is not None and job.id not in kept)]


def job_or_none(line, header):
    try:
        return parse_line(line, header or COLUMNS)
    except UnparsableLine:
        return None


def find_line(data, job_id):
    """The last job in data (a whole file) whose id is job_id, or None."""
    pos = data.rfind(b'\n' + job_id.encode('utf-8', 'surrogateescape') + b'\t')
    if pos < 0:
        return None
    try:
        return parse_line_at(data, pos + 1)
    except UnparsableLine as exc:
        log.warning('job %s has a line that does not parse: %s', job_id, exc)
        return None


def parse_line_at(data, pos):
    """The Job on the line of data (a whole file, header first) that holds byte pos.

    Raises UnparsableLine when that line is not a job.
    """
    start, end = data.rfind(b'\n', 0, pos) + 1, data.find(b'\n', pos)
    line = data[start:end if end >= 0 else len(data)].decode('utf-8', 'surrogateescape')
    header = split_header(data[:data.find(b'\n')].decode('utf-8', 'surrogateescape'))
    return parse_line(line, header)
