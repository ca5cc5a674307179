"""dbbasic_queue: a background job queue whose whole state is one TSV file.

Usage::

    from dbbasic_queue import enqueue, process_jobs, get_job, cancel_job

    job_id = enqueue('send_email', {'to': 'user@example.com'})
    process_jobs({'send_email': send}, max_attempts=3)   # from cron, every minute
    get_job(job_id)['status']                           # 'completed'

The module functions act on data/queue.tsv under the current directory, or on the
path in the DBBASIC_QUEUE environment variable. `Queue(path)` is the same API on a
queue of your own (data/email.tsv ...).

Files: data/queue.tsv holds pending and processing jobs, one per line; finished jobs
(completed, failed, cancelled) move to data/queue.done.tsv beside it, so history never
slows the hot path. Both are dbbasic-tsv tables with the seed's nine columns first.

Guarantees:
- Nothing is lost: enqueue appends under an exclusive flock; every change is a rewrite
  to a fsynced temp file renamed over the old one, merging lines appended meanwhile.
- A job is claimed (status processing, worker host:pid:start) before its handler runs;
  no two workers run the same job at once.
- A job whose worker died runs again at the next process_jobs on that host (for a
  worker on another host: once LEASE_SECONDS have passed since the claim). The crash
  counts as an attempt, so a job that kills its worker every time ends failed.
- Failures retry with exponential backoff; at max_attempts a job is failed and kept.

Limits: at-least-once, not exactly-once: a worker that dies after its handler returned
but before recording it runs the job again, so handlers should be idempotent. One
machine, or one shared volume with a lease; graduate to Redis (RQ) beyond that.
"""

import heapq
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from . import liveness
from .errors import InvalidJobError, JobTimedOut, QueueError, StorageError
from .job import (COLUMNS, FINAL_STATUSES, SEED_COLUMNS, Job, Status, UnparsableLine,
                  column_order, format_line, format_new_line, number, quote_field as _quote_field, one_line, parse_line,
                  split_line)
from .storage import FileLock, TableFile, split_header

log = logging.getLogger('dbbasic_queue')

ENV_VAR = 'DBBASIC_QUEUE'
DEFAULT_PATH = 'data/queue.tsv'
MAX_ATTEMPTS = 3
LEASE_SECONDS = 3600            # claims from another host are trusted this long
BACKOFF_BASE_SECONDS = 60       # 1.0.0's base: retry n waits base * 2**n
BACKOFF_CAP_SECONDS = 3600
BACKOFF_JITTER_FRACTION = 0.25  # up to +25 %, so failed jobs do not retry in lockstep
MIN_BATCH_SECONDS = 0.05        # a batch holds at least this much measured work ...
REWRITE_SHARE = 0.1             # ... or enough that rewrites are <= 10 % of the time
BATCH_GROWTH = 64
MAX_BATCH_JOBS = 2_000          # bounds a worker's memory: each claim holds a Job
ARCHIVE_FLUSH_SECONDS = 0.05    # finished jobs reach the archive at least this often
CONFLICTS_BEFORE_LOCKING = 3    # after that many lost races, rewrite holding the lock
DEFERRED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
ACTIVE_STATUSES = frozenset({Status.PENDING, Status.PROCESSING})
_PENDING, _PROCESSING = Status.PENDING.value, Status.PROCESSING.value
_STATUS_WORDS = {status.value: status.value for status in Status}


def _json_encoder(ensure_ascii):
    """value -> JSON text, like json.dumps(value, allow_nan=False).

    The C encoder is built once here instead of on every call as JSONEncoder.encode
    does: that halves enqueue's JSON cost. Without cycle markers, a cyclic payload ends
    in RecursionError, which _payload_json reports like any unserializable payload.
    """
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=False)
    if json.encoder.c_make_encoder is None:
        return encoder.encode
    encode_str = (json.encoder.encode_basestring_ascii if ensure_ascii
                  else json.encoder.encode_basestring)
    c_encode = json.encoder.c_make_encoder(None, encoder.default, encode_str, None, ': ', ', ',
                                           False, False, False)
    return lambda value: ''.join(c_encode(value, 0))


_JSON = _json_encoder(ensure_ascii=False)
_JSON_ASCII = _json_encoder(ensure_ascii=True)


@dataclass
class _Plan:
    """What one rewrite does: replace (Job) or drop (None) lines by index."""
    changes: dict = field(default_factory=dict)
    archive: list = field(default_factory=list)   # Jobs to append to the archive first
    result: object = None


@dataclass
class _Run:
    """The state of one process_jobs call."""
    handlers: dict
    max_attempts: int
    timeout: object
    worker: str
    batch_size: int = 1
    claimed: dict = field(default_factory=dict)     # id -> Job as claimed
    unstarted: deque = field(default_factory=deque)  # ids claimed, not started, in run order
    outcomes: dict = field(default_factory=dict)    # id -> Job to write back, None = archived
    archive_buffer: list = field(default_factory=list)  # lines of finished jobs, unwritten
    archive_unsynced: bool = False
    archive_flushed_at: float = 0.0
    rewrite_seconds: float = 0.0
    jobs_left: object = None                        # None = no limit
    deadline: object = None                         # time.monotonic() value, or None
    stop_requested: bool = False
    signals: list = field(default_factory=list)     # deferred until the run is tidy
    summary: Counter = field(default_factory=Counter)


class Queue:
    """A job queue stored in one TSV file (plus its archive of finished jobs).

    Queue('redis://host:port/db') gives the same API on RQ instead (rq_backend).
    """

    def __new__(cls, path=DEFAULT_PATH, **options):
        if cls is Queue and str(path).startswith(('redis://', 'rediss://', 'unix://')):
            try:
                from .rq_backend import RedisQueue
            except ImportError as exc:
                raise QueueError(f'{path} needs the rq extra: pip install '
                                 f'"dbbasic-queue[rq]" ({exc})') from None
            return RedisQueue(str(path), **options)
        return super().__new__(cls)

    def __init__(self, path=DEFAULT_PATH, *, clock=time.time,
                 backoff_base_seconds=BACKOFF_BASE_SECONDS, lease_seconds=LEASE_SECONDS):
        self.path = Path(path)
        if self.path.suffix != '.tsv':
            raise ValueError(f'queue path must end in .tsv, got {str(path)!r}')
        lock = FileLock(self.path.with_suffix('.lock'))
        self._table = TableFile(self.path, COLUMNS, lock)
        self._archive = TableFile(self.path.with_name(self.path.stem + '.done.tsv'), COLUMNS, lock)
        self._clock = clock
        self.backoff_base_seconds = backoff_base_seconds
        self.lease_seconds = lease_seconds
        self._header_current = False
        self._valid_types = set()
        self._state_lock = threading.RLock()
        self._snap = None
        self._idle_cache = None
        self._reported_lines = set()

    @property
    def archive_path(self):
        return self._archive.path

    # -- enqueue ---------------------------------------------------------------
    def enqueue(self, job_type, payload, run_at=None, *, delay=None, priority=0,
                unique_key=None, timeout=None, max_attempts=None):
        """Add a job and return its id; raises InvalidJobError (writing nothing) on bad input.

        run_at: Unix seconds or a datetime; or delay: seconds or a timedelta from now.
        priority: higher runs first (default 0). timeout: seconds a handler may run.
        max_attempts: overrides process_jobs' default for this job. unique_key: while a
        job with this key is pending or processing, return its id instead of adding one.
        Costs one locked append, never reading the file; with a unique_key, one read of
        the hot file under the lock.
        """
        if job_type not in self._valid_types:
            _check_job_type(job_type)
            self._valid_types.add(job_type)
        now = self._clock()
        run_at = _run_at(now, run_at, delay)
        payload_json = _payload_json(payload)
        job_id = os.urandom(8).hex()
        if priority == 0 and unique_key is None and timeout is None and max_attempts is None:
            line = format_new_line(job_id, job_type, payload_json, int(now), run_at)
        else:
            line = format_line(Job(job_id, job_type, payload_json, Status.PENDING, int(now), run_at,
                                   **_job_options(priority, unique_key, timeout, max_attempts)))
        try:
            data = (line + '\n').encode('utf-8')
        except UnicodeEncodeError:
            # Lone surrogates in a str: escape them so the file stays valid UTF-8.
            escaped = _payload_json(payload, _JSON_ASCII)
            data = (line.replace(_quote_field(payload_json), _quote_field(escaped), 1)
                    + '\n').encode('utf-8')
        if not self._header_current:
            self._upgrade_header()
        if unique_key is None:
            self._table.append(data)
            return job_id
        with self._table.lock:
            existing = self._active_job_with_key(unique_key)
            if existing is not None:
                return existing
            self._table.append(data)
        return job_id

    def _active_job_with_key(self, unique_key):
        """The id of the pending or processing job with this unique_key, or None."""
        data = self._table.read_bytes()
        needle = ('\t' + _quote_field(unique_key) + '\t').encode('utf-8', 'surrogateescape')
        header = None
        pos = data.find(needle)
        while pos >= 0:
            start, end = data.rfind(b'\n', 0, pos) + 1, data.find(b'\n', pos)
            header = header or split_header(data[:data.find(b'\n')].decode('utf-8', 'surrogateescape'))
            try:
                job = parse_line(data[start:end].decode('utf-8', 'surrogateescape'), header)
            except UnparsableLine:
                job = None
            if job is not None and job.unique_key == unique_key and job.status in ACTIVE_STATUSES:
                return job.id
            pos = data.find(needle, end)
        return None

    def _upgrade_header(self):
        """Rewrite a file with older columns (1.0.0's nine) to ours, once per Queue."""
        header = self._table.read_header()
        if header is not None and tuple(header) != COLUMNS:
            with self._state_lock:
                self._rewrite(lambda entries, now: _Plan())
        self._header_current = True

    # -- lookups ---------------------------------------------------------------
    def get_job(self, job_id):
        """The job as a dict (payload and result decoded), or None if there is no such id.

        Reads the files each time, so it sees what any other process wrote.
        """
        if not isinstance(job_id, str) or not job_id or '\t' in job_id or '\n' in job_id:
            return None
        job = _find_line(self._table.read_bytes(), job_id)
        if job is None or job.status is not Status.PENDING:
            # A finished job is in the archive; after a crash it may be in both files.
            job = _find_line(self._archive.read_bytes(), job_id) or job
        return job.to_dict() if job else None

    def cancel_job(self, job_id):
        """True if the job was pending and is now cancelled (it will never run), else False."""
        if not isinstance(job_id, str) or not job_id:
            return False
        prefix = job_id + '\t'

        def cancel(lines, now):
            for i, line in enumerate(lines):
                if line.startswith(prefix):
                    job = self._full_job(i)
                    if job is None or job.status is not Status.PENDING:
                        return None
                    # It stays here as cancelled; the next worker rewrite archives it.
                    return _Plan(changes={i: job.evolve(
                        status=Status.CANCELLED, error='Cancelled by user', finished_at=now)},
                        result=True)
            return None

        with self._state_lock:
            return bool(self._rewrite(cancel, parse=False))

    def read_rows(self):
        """Every job line of both files as lists of str in COLUMNS order (hot file first)."""
        rows = []
        for table in (self._table, self._archive):
            header, lines = table.read_lines()
            order = column_order(tuple(header or COLUMNS))
            for line in lines:
                fields = split_line(line)
                if order is not None:
                    fields = [fields[i] if i is not None and i < len(fields) else ''
                              for i in order]
                rows.append(fields + [''] * (len(COLUMNS) - len(fields)))
        return rows

    # -- inspection and maintenance (the CLI's stats, list, show, retry, purge, check) --
    def find_job(self, job_id):
        """The Job (every column) with this id, or None. Like get_job, reads the files."""
        if not isinstance(job_id, str) or not job_id or '\t' in job_id or '\n' in job_id:
            return None
        job = _find_line(self._table.read_bytes(), job_id)
        if job is None or job.status is not Status.PENDING:
            job = _find_line(self._archive.read_bytes(), job_id) or job
        return job

    def _file_lines(self):
        """(file path, line number, line, Job or None) for every line of both files."""
        for table in (self._table, self._archive):
            header, lines = table.read_lines()
            for number, line in enumerate(lines, start=2):
                try:
                    job = parse_line(line, header)
                except UnparsableLine:
                    job = None
                yield table.path, number, line, job

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

    def list_jobs(self, status=None, job_type=None, limit=None):
        """Jobs as get_job dicts with worker/claimed_at/finished_at, filtered, in file order."""
        if status is not None and status not in _STATUS_WORDS:
            raise ValueError(f'status must be one of {", ".join(_STATUS_WORDS)}, got {status!r}')
        chosen = [job.to_dict(full=True) for job in self.jobs()
                  if (status is None or job.status.value == status)
                  and (job_type is None or job.type == job_type)]
        return chosen if limit is None else chosen[:limit]

    def stats(self):
        """Counts by status and by type, oldest pending age, next due time, live workers."""
        now = self._clock()
        by_status = dict.fromkeys(_STATUS_WORDS, 0)
        by_type, workers = {}, set()
        oldest_created, next_due = None, None
        for job in self.jobs():
            status = job.status.value
            by_status[status] += 1
            counts = by_type.setdefault(job.type, dict.fromkeys(_STATUS_WORDS, 0))
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

        with self._state_lock, self._table.lock:
            archive = self._archive.snapshot()
            header = archive.header or COLUMNS
            keep, revived = [], {}
            for line in archive.lines:
                try:
                    job = parse_line(line, header)
                except UnparsableLine:
                    job = None
                if job is not None and chosen(job):
                    if job.status not in (Status.FAILED, Status.CANCELLED):
                        raise ValueError(f'job {job.id} is {job.status.value}: only failed '
                                         f'and cancelled jobs can be retried')
                    revived[job.id] = job.evolve(status=Status.PENDING, attempts=0, run_at=now,
                                                 worker='', claimed_at=0.0, finished_at=0.0)
                else:
                    keep.append(line)
            if job_id is not None and not revived:
                current = self.find_job(job_id)
                if current is None:
                    raise KeyError(job_id)
                raise ValueError(f'job {job_id} is {current.status.value}: only failed and '
                                 f'cancelled jobs can be retried')
            if revived:
                # Pending first, then gone from the archive: a crash between leaves the
                # job in both files, and the pending copy wins; it is never lost.
                self._table.append(''.join(format_line(j) + '\n' for j in revived.values())
                                   .encode('utf-8'), fsync=True)
                self._archive.commit(archive, keep)
        return list(revived)

    def purge(self, statuses, older_than_seconds, dry_run=False):
        """Delete finished jobs of these statuses that finished more than older_than_seconds
        ago from the archive; returns their ids. dry_run only lists them.
        """
        statuses = set(statuses)
        allowed = {status.value for status in FINAL_STATUSES}
        if not statuses or not statuses <= allowed:
            raise ValueError(f'statuses must be some of {", ".join(sorted(allowed))}, '
                             f'got {", ".join(sorted(statuses)) or "none"}')
        _check_limit('older_than_seconds', older_than_seconds)
        cutoff = self._clock() - older_than_seconds
        with self._state_lock, self._table.lock:
            archive = self._archive.snapshot()
            header = archive.header or COLUMNS
            keep, purged = [], []
            for line in archive.lines:
                try:
                    job = parse_line(line, header)
                except UnparsableLine:
                    job = None
                if (job is not None and job.status.value in statuses
                        and (job.finished_at or job.created_at) < cutoff):
                    purged.append(job.id)
                else:
                    keep.append(line)
            if purged and not dry_run:
                self._archive.commit(archive, keep)
        return purged

    def mark_migrated(self, job_ids):
        """Mark these pending (hot file) and failed (archive) jobs 'migrated', moving them
        to the archive; called by migrate once Redis has them. Never deletes a row."""
        job_ids = set(job_ids)

        def migrated(entries, now):
            plan = _Plan()
            rows = [(i, self._full_job(i)) for i, line in enumerate(self._snap.lines)
                    if line.split('\t', 1)[0] in job_ids]
            rows = [(i, job) for i, job in rows if job and job.status is Status.PENDING]
            already = self._archived_ids({job.id for _, job in rows})
            for i, job in rows:
                plan.changes[i] = None
                if job.id not in already:
                    plan.archive.append(job.evolve(status=Status.MIGRATED, finished_at=now))
            return plan if plan.changes else None

        with self._state_lock:
            self._rewrite(migrated, parse=False)
            with self._table.lock:
                archive = self._archive.snapshot()
                header = archive.header or COLUMNS
                lines, changed = [], False
                for line in archive.lines:
                    if line.split('\t', 1)[0] in job_ids:
                        try:
                            job = parse_line(line, header)
                        except UnparsableLine:
                            job = None
                        if job is not None and job.status is Status.FAILED:
                            line, changed = format_line(job.evolve(status=Status.MIGRATED)), True
                    lines.append(line)
                if changed:
                    self._archive.commit(archive, lines)

    def check(self):
        """Problems found in the files, as one-line descriptions (empty: all is well).

        Lines that are not jobs, ids that appear more than once, jobs still claimed by a
        worker that is gone, temp files left by a crashed rewrite.
        """
        problems, seen, now = [], {}, self._clock()
        for path, number, line, job in self._file_lines():
            if job is None:
                problems.append(f'{path.name}:{number}: not a job: {line[:80]!r}')
                continue
            if job.id in seen:
                problems.append(f'{path.name}:{number}: job {job.id} also at {seen[job.id]}')
            seen[job.id] = f'{path.name}:{number}'
            if job.status is Status.PROCESSING and not liveness.claim_is_alive(
                    job.worker, job.claimed_at, now, self.lease_seconds):
                problems.append(f'{path.name}:{number}: job {job.id} is processing by '
                                f'{job.worker or "an unknown worker"}, which is gone')
        for leftover in sorted(self.path.parent.glob(f'.{self.path.stem}.*.tmp')):
            pid = leftover.name.split('.')[-3]
            if not pid.isdigit() or liveness.start_marker(int(pid)) is None:
                problems.append(f'{leftover.name}: temp file left by an interrupted rewrite')
        return problems

    # -- processing --------------------------------------------------------------
    def process_jobs(self, handlers, max_attempts=MAX_ATTEMPTS, *, timeout=None,
                     max_jobs=None, max_seconds=None):
        """Run every due job whose type has a handler, then return counts by outcome.

        Returns {'completed': n, 'retried': n, 'failed': n, 'recovered': n}. A handler
        gets the decoded payload; its return value is stored as the job's result.
        timeout (seconds) is the default for jobs enqueued without one: a handler still
        running then is interrupted and the attempt fails with a TimeoutError (SIGALRM:
        only in the main thread, and not inside C code that blocks signals).
        max_attempts is the default for jobs enqueued without their own.
        max_jobs and max_seconds stop it early (a job already started always finishes).
        On SIGTERM or SIGINT the current job finishes, claimed jobs not yet started go
        back to pending, and the signal is then handled as it would have been (a second
        SIGINT interrupts the running job at once).
        """
        _check_handlers(handlers, max_attempts)
        _check_timeout(timeout)
        _check_limit('max_jobs', max_jobs)
        _check_limit('max_seconds', max_seconds)
        run = _Run(dict(handlers), max_attempts, timeout, liveness.current_worker(),
                   jobs_left=max_jobs,
                   deadline=None if max_seconds is None else time.monotonic() + max_seconds)
        with self._state_lock, _deferred_signals(run):
            try:
                while not run.stop_requested and run.jobs_left != 0:
                    if run.jobs_left is not None:
                        run.batch_size = min(run.batch_size, run.jobs_left)
                    batch = self._claim(run)
                    if not batch:
                        break
                    self._run_batch(run, batch)
            finally:
                if run.outcomes or run.unstarted or run.archive_buffer:
                    self._claim(run, claim=False)
        return {name: run.summary[name] for name in ('completed', 'retried', 'failed', 'recovered')}

    def _claim(self, run, claim=True):
        """One rewrite: record outcomes, release or recover claims, claim the next batch."""
        if claim and not run.outcomes and not run.unstarted and self._nothing_to_do(run):
            return []
        started = time.perf_counter()
        batch = self._rewrite(lambda entries, now: self._plan_claim(run, entries, now, claim),
                              before_rename=lambda: self._flush_archive(run, fsync=True))
        run.outcomes.clear()
        run.claimed = {job.id: job for job in batch or ()}
        run.unstarted = deque(run.claimed)
        run.rewrite_seconds = time.perf_counter() - started
        return batch or []

    def _plan_claim(self, run, entries, now, claim):
        plan = _Plan(result=[])
        mine, candidates, finished, dead = {}, [], [], {}
        alive = {run.worker: True}
        handlers = run.handlers
        for i, entry in enumerate(entries):
            if entry is None:
                continue
            status = entry[0]
            if status == _PENDING:
                if claim and entry[2] <= now and entry[1] in handlers:
                    candidates.append(i)
            elif status == _PROCESSING:
                job_id, worker, claimed_at = entry[3]
                if worker == run.worker:
                    mine[job_id] = i
                    continue
                if worker not in alive:
                    alive[worker] = liveness.claim_is_alive(worker, claimed_at, now,
                                                            self.lease_seconds)
                if not alive[worker]:
                    dead.setdefault(worker, []).append(i)
            else:
                finished.append(i)
        candidates.extend(self._apply_outcomes(run, mine, plan))
        self._archive_finished(finished, plan)
        for indexes in dead.values():
            candidates.extend(self._recover(run, indexes, plan, now))
        if claim:
            self._claim_due(run, entries, candidates, plan, now)
        return plan if plan.changes or plan.archive else None

    def _claim_due(self, run, entries, candidates, plan, now):
        """Claim up to run.batch_size due jobs: highest priority first, then earliest
        run_at, then file (enqueue) order."""
        def run_at(i):
            return plan.changes[i].run_at if i in plan.changes else entries[i][2]

        def order(i):
            return (-entries[i][4], run_at(i), i)
        due = [i for i in candidates if run_at(i) <= now and entries[i][1] in run.handlers]
        for i in heapq.nsmallest(run.batch_size, due, key=order):
            job = plan.changes.get(i) or self._full_job(i)
            if job is not None:
                claimed = job.evolve(status=Status.PROCESSING, worker=run.worker, claimed_at=now)
                plan.changes[i] = claimed
                plan.result.append(claimed)

    def _apply_outcomes(self, run, mine, plan):
        """Write back this run's outcomes and unstarted claims; returns the indexes of
        jobs pending again (a retry may be due at once)."""
        pending = []
        for job_id, outcome in run.outcomes.items():
            if job_id in mine:
                plan.changes[mine[job_id]] = outcome
                if outcome is not None:
                    pending.append(mine[job_id])
            else:
                log.warning('job %s vanished from %s while this worker ran it', job_id, self.path)
        for job_id in run.unstarted:
            if job_id in mine:
                plan.changes[mine[job_id]] = run.claimed[job_id].evolve(
                    status=Status.PENDING, worker='', claimed_at=0.0)
        return pending

    def _archive_finished(self, finished, plan):
        """Move finished rows (a cancel, a 1.0.0 file) to the archive, exactly once."""
        rows = [(i, job) for i, job in ((i, self._full_job(i)) for i in finished) if job]
        if not rows:
            return
        already = self._archived_ids({job.id for _, job in rows})
        for i, job in rows:
            plan.changes[i] = None
            if job.id not in already:
                plan.archive.append(job)

    def _recover(self, run, indexes, plan, now):
        """Give back the jobs of one dead worker; returns the indexes now pending.

        Its finished jobs are in the archive already: they are dropped here. Of the rest,
        the first in run order was running when it died: that counts as an attempt.
        The others had not started and return to pending as they were.
        """
        claims = [(i, job) for i, job in ((i, self._full_job(i)) for i in indexes) if job]
        archived = self._archived_ids({job.id for _, job in claims})
        unfinished = []
        for i, job in sorted(claims, key=lambda c: (-c[1].priority, c[1].run_at, c[0])):
            if job.id in archived:
                plan.changes[i] = None
            else:
                unfinished.append((i, job))
        if not unfinished:
            return []
        (first, crashed), rest = unfinished[0], unfinished[1:]
        error = f'WorkerLost: worker {crashed.worker or "of dbbasic-queue 1.0.0"} died running this job'
        log.warning('job %s (%s): %s', crashed.id, crashed.type, error)
        outcome = self._after_failure(crashed, crashed.attempts + 1, error,
                                      crashed.max_attempts or run.max_attempts, now)
        pending = [i for i, _ in rest]
        if outcome.status is Status.FAILED:
            plan.changes[first] = None
            plan.archive.append(outcome)
            run.summary['failed'] += 1
        else:
            plan.changes[first] = outcome
            pending.insert(0, first)
            run.summary['recovered'] += 1
        for i, job in rest:
            plan.changes[i] = job.evolve(status=Status.PENDING, worker='', claimed_at=0.0)
        run.summary['recovered'] += len(rest)
        return pending

    def _after_failure(self, job, attempts, error, max_attempts, now):
        """The job after a failed attempt: pending with backoff, or failed at max_attempts."""
        if attempts >= max_attempts:
            return job.evolve(status=Status.FAILED, attempts=attempts, error=error,
                              finished_at=now)
        return job.evolve(status=Status.PENDING, attempts=attempts, error=error,
                          run_at=now + self.backoff_seconds(attempts), worker='', claimed_at=0.0)

    def backoff_seconds(self, attempts):
        """Delay before retry number `attempts`: base * 2**attempts, up to +25 % jitter, capped."""
        delay = self.backoff_base_seconds * 2 ** attempts
        delay += random.uniform(0, delay * BACKOFF_JITTER_FRACTION)
        return min(delay, BACKOFF_CAP_SECONDS)

    def _run_batch(self, run, batch):
        started, ran = time.perf_counter(), 0
        run.archive_flushed_at = started
        for job in batch:
            if run.deadline is not None and time.monotonic() >= run.deadline:
                run.stop_requested = True
            if run.stop_requested:
                break
            run.unstarted.popleft()
            self._execute(run, job)
            ran += 1
            if run.jobs_left is not None:
                run.jobs_left -= 1
            if time.perf_counter() - run.archive_flushed_at >= ARCHIVE_FLUSH_SECONDS:
                self._flush_archive(run)
        if ran:
            seconds_per_job = max((time.perf_counter() - started) / ran, 1e-6)
            batch_seconds = max(MIN_BATCH_SECONDS, run.rewrite_seconds / REWRITE_SHARE)
            run.batch_size = max(1, min(int(batch_seconds / seconds_per_job),
                                        run.batch_size * BATCH_GROWTH, MAX_BATCH_JOBS))

    def _execute(self, run, job):
        """Run one claimed job and record its outcome (finished jobs go to the archive)."""
        attempts = job.attempts + 1
        max_attempts = job.max_attempts or run.max_attempts
        timeout = job.timeout or run.timeout
        started = time.perf_counter()
        try:
            with _time_limit(timeout):
                result = run.handlers[job.type](job.payload)
        except Exception as exc:
            log.exception('job %s (%s) failed on attempt %d of %d', job.id, job.type,
                          attempts, max_attempts)
            outcome = self._after_failure(job, attempts, f'{type(exc).__name__}: {exc}',
                                          max_attempts, self._clock())
        except JobTimedOut:
            error = f'TimeoutError: job ran longer than its timeout of {timeout:g} s'
            log.error('job %s (%s) failed on attempt %d of %d: %s', job.id, job.type,
                      attempts, max_attempts, error)
            outcome = self._after_failure(job, attempts, error, max_attempts, self._clock())
        except BaseException:
            # KeyboardInterrupt, SystemExit: not the job's fault; it goes back untouched.
            run.unstarted.appendleft(job.id)
            raise
        else:
            outcome = job.evolve(status=Status.COMPLETED, attempts=attempts, error='',
                                 result_json=_result_json(result, job), finished_at=self._clock())
        if outcome.status in FINAL_STATUSES:
            run.archive_buffer.append(format_line(outcome))
            run.outcomes[job.id] = None
            word = outcome.status.value
        else:
            run.outcomes[job.id] = outcome
            word = 'retried'
        run.summary[word] += 1
        log.info('%s %s %s %.3fs attempt %d/%d', job.id, job.type, word,
                 time.perf_counter() - started, attempts, max_attempts)

    def _flush_archive(self, run, fsync=False):
        """Append the finished jobs of this run to the archive (fsync before a rewrite)."""
        if run.archive_buffer:
            data = ''.join(line + '\n' for line in run.archive_buffer).encode('utf-8')
            self._archive.append(data, fsync=fsync)
            run.archive_buffer.clear()
            run.archive_unsynced = not fsync
        elif fsync and run.archive_unsynced:
            self._archive.append(b'', fsync=True)
            run.archive_unsynced = False
        run.archive_flushed_at = time.perf_counter()

    # -- the file ------------------------------------------------------------------
    def _rewrite(self, edit, before_rename=None, parse=True):
        """Apply edit(entries, now) -> _Plan | None to the file and return plan.result.

        With parse=False, edit gets the raw lines instead of entries (a lookup by id
        needs no parsing of 100K lines). Reads and formats outside the lock; the commit
        checks under the lock that no one replaced the file meanwhile, else this runs
        again (holding the lock after a few lost races, so it always finishes).
        """
        attempt = 0
        while True:
            holding = self._table.lock if attempt >= CONFLICTS_BEFORE_LOCKING else nullcontext()
            with holding:
                snap = self._table.snapshot()
                self._check_header(snap)
                plan = edit(self._entries(snap) if parse else snap.lines, self._clock())
                outdated = snap.header is not None and tuple(snap.header) != COLUMNS
                if plan is None and not outdated:
                    return None
                plan = plan or _Plan()
                lines, new_entries = self._new_lines(snap, plan, outdated)

                def under_lock():
                    if plan.archive:
                        data = ''.join(format_line(job) + '\n' for job in plan.archive)
                        self._archive.append(data.encode('utf-8'), fsync=True)
                    if before_rename is not None:
                        before_rename()

                new = self._table.commit(snap, lines, under_lock)
                if new is not None:
                    new.jobs = new_entries
                    return plan.result
            attempt += 1

    def _new_lines(self, snap, plan, outdated):
        """The new file's lines, and their entries as far as snap had parsed them."""
        if outdated:
            self._entries(snap)
        parsed = len(snap.jobs)
        lines, entries = [], []
        changes = plan.changes
        for i, line in enumerate(snap.lines):
            entry = snap.jobs[i] if i < parsed else None
            if i in changes:
                job = changes[i]
                if job is None:
                    continue
                line, entry = format_line(job), _entry_of(job)
            elif outdated and entry is not None:
                line = format_line(parse_line(line, snap.header))
            lines.append(line)
            if i < parsed:
                entries.append(entry)
        return lines, entries

    def _check_header(self, snap):
        self._snap = snap
        if snap.header is not None and tuple(snap.header[:len(SEED_COLUMNS)]) != SEED_COLUMNS:
            raise StorageError(f'{self.path} is not a dbbasic-queue file: its header is '
                               f'{snap.header[:9]}')

    def _entries(self, snap):
        """Light entries for every line of snap (None = not a job); parses only new lines."""
        self._check_header(snap)
        entries = snap.jobs
        has_priority = snap.header is None or tuple(snap.header) == COLUMNS
        for line in snap.lines[len(entries):]:
            entry = _entry(line, has_priority)
            if entry is None:
                self._report_unparsable(line)
            entries.append(entry)
        return entries

    def _full_job(self, i):
        """The whole Job on line i of the snapshot being planned, or None (reported)."""
        try:
            return parse_line(self._snap.lines[i], self._snap.header or COLUMNS)
        except UnparsableLine:
            self._report_unparsable(self._snap.lines[i])
            return None

    def _report_unparsable(self, line):
        if line not in self._reported_lines:
            self._reported_lines.add(line)
            log.warning('%s: kept a line that is not a job, as it is: %.200r', self.path, line)

    def _nothing_to_do(self, run):
        """True when nothing is due for these handlers: the idle poll of a worker loop.

        Scans again only when the file changed; otherwise costs one stat() plus a
        liveness check of each worker holding claims.
        """
        snap = self._table.snapshot()
        types = frozenset(run.handlers)
        cache = self._idle_cache
        if cache is None or cache[0] != (snap.generation, len(snap.lines), types):
            next_due, claims, finished = math.inf, {}, False
            for entry in self._entries(snap):
                if entry is None:
                    continue
                if entry[0] == _PENDING:
                    if entry[1] in types and entry[2] < next_due:
                        next_due = entry[2]
                elif entry[0] == _PROCESSING:
                    _, worker, claimed_at = entry[3]
                    claims[worker] = max(claims.get(worker, 0.0), claimed_at)
                else:
                    finished = True
            cache = (snap.generation, len(snap.lines), types), next_due, claims, finished
            self._idle_cache = cache
        _, next_due, claims, finished = cache
        now = self._clock()
        if finished or now >= next_due:
            return False
        return all(worker == run.worker or liveness.claim_is_alive(
            worker, claimed_at, now, self.lease_seconds) for worker, claimed_at in claims.items())

    def _archived_ids(self, ids):
        """The subset of ids that have a row in the archive."""
        if not ids:
            return set()
        data = self._archive.read_bytes()
        if len(ids) <= 16:
            return {i for i in ids if b'\n' + i.encode('utf-8', 'surrogateescape') + b'\t' in data}
        present = {line.split(b'\t', 1)[0] for line in data.split(b'\n')}
        return {i for i in ids if i.encode('utf-8', 'surrogateescape') in present}


def _entry(line, has_priority=True):
    """(status, type, run_at, claim, priority) from a line's cheap columns, or None.

    claim is (id, worker, claimed_at) for processing rows, else None. Cheap on purpose:
    a worker keeps one entry per queued job. has_priority is False for files written
    before the priority column existed.
    """
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
    if status == _PROCESSING:
        every = split_line(line)
        try:
            claimed_at = float(every[10]) if len(every) > 10 and every[10] else 0.0
        except ValueError:
            return None
        claim = (fields[0], every[9] if len(every) > 9 else '', claimed_at)
    return (status, sys.intern(job_type), run_at, claim, priority)


def _entry_of(job):
    claim = (job.id, job.worker, job.claimed_at) if job.status is Status.PROCESSING else None
    return (job.status.value, job.type, job.run_at, claim, job.priority)


def _find_line(data, job_id):
    """The last job in data (a whole file) whose id is job_id, or None."""
    pos = data.rfind(b'\n' + job_id.encode('utf-8', 'surrogateescape') + b'\t')
    if pos < 0:
        return None
    end = data.find(b'\n', pos + 1)
    line = data[pos + 1:end if end >= 0 else len(data)].decode('utf-8', 'surrogateescape')
    header = split_header(data[:data.find(b'\n')].decode('utf-8', 'surrogateescape'))
    try:
        return parse_line(line, header)
    except UnparsableLine as exc:
        log.warning('job %s has a line that does not parse: %s', job_id, exc)
        return None


# -- validation -----------------------------------------------------------------------
def _check_job_type(job_type):
    if not isinstance(job_type, str):
        raise InvalidJobError(f'job_type must be a str, got {type(job_type).__name__}')
    if not job_type:
        raise InvalidJobError('job_type must not be empty')
    if one_line(job_type) != job_type:
        raise InvalidJobError(f'job_type must be one line without tabs, got {job_type!r}')


def _payload_json(payload, encode=_JSON):
    try:
        return encode(payload)
    except RecursionError:
        raise InvalidJobError('payload must be JSON-serializable: it contains itself, '
                              'or is nested too deeply') from None
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f'payload must be JSON-serializable (dict, list, str, int, '
                              f'finite float, bool, None): {exc}') from None


def _result_json(result, job):
    try:
        text = _JSON(result)
        text.encode('utf-8')
        return text
    except UnicodeEncodeError:
        return _JSON_ASCII(result)
    except (TypeError, ValueError, RecursionError) as exc:
        log.warning('job %s (%s) returned a result that is not JSON (%r); stored its repr',
                    job.id, job.type, exc)
        return _JSON_ASCII(repr(result))


def _run_at(now, run_at, delay):
    if run_at is not None and delay is not None:
        raise InvalidJobError('give run_at or delay, not both')
    if delay is not None:
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        if (isinstance(delay, bool) or not isinstance(delay, (int, float))
                or not math.isfinite(delay) or delay < 0):
            raise InvalidJobError(f'delay must be seconds >= 0 or a timedelta, got {delay!r}')
        return now + delay
    return _due_now(now) if run_at is None else _timestamp(run_at)


def _job_options(priority, unique_key, timeout, max_attempts):
    """The Job fields of enqueue's options, validated (InvalidJobError otherwise)."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidJobError(f'priority must be an int, got {priority!r}')
    if unique_key is not None and (not isinstance(unique_key, str) or not unique_key
                                   or one_line(unique_key) != unique_key):
        raise InvalidJobError(f'unique_key must be a non-empty one-line str, got {unique_key!r}')
    try:
        _check_timeout(timeout)
    except ValueError as exc:
        raise InvalidJobError(str(exc)) from None
    if max_attempts is not None and (isinstance(max_attempts, bool)
                                     or not isinstance(max_attempts, int) or max_attempts < 1):
        raise InvalidJobError(f'max_attempts must be an int >= 1, got {max_attempts!r}')
    return {'priority': priority, 'unique_key': unique_key or '', 'timeout': timeout or 0.0,
            'max_attempts': max_attempts or 0}


def _check_timeout(timeout):
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise ValueError(f'timeout must be seconds > 0, got {timeout!r}')


@contextmanager
def _time_limit(seconds):
    """Raise JobTimedOut in the main thread once seconds have passed (0/None: no limit)."""
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        log.warning('timeout of %g s not enforced: process_jobs is not in the main thread',
                    seconds)
        yield
        return

    def expire(signum, frame):
        raise JobTimedOut()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _due_now(now):
    # Stored times round up to the millisecond (never early); "now" rounds down so a job
    # enqueued for now is due at once.
    return math.floor(now * 1000) / 1000


def _timestamp(run_at):
    if isinstance(run_at, datetime):
        return run_at.timestamp()
    if isinstance(run_at, bool) or not isinstance(run_at, (int, float)):
        raise InvalidJobError(f'run_at must be Unix seconds (int or float) or a datetime, '
                              f'got {type(run_at).__name__}')
    if not math.isfinite(run_at):
        raise InvalidJobError(f'run_at must be finite, got {run_at!r}')
    return float(run_at)


def _check_limit(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or value < 0):
        raise ValueError(f'{name} must be a number >= 0 or None, got {value!r}')


def _check_handlers(handlers, max_attempts):
    if not hasattr(handlers, 'items') or not all(callable(h) for h in handlers.values()):
        raise TypeError('handlers must be a dict of job_type -> callable(payload)')
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f'max_attempts must be an int >= 1, got {max_attempts!r}')


@contextmanager
def _deferred_signals(run):
    """While jobs run, SIGTERM and SIGINT ask the loop to stop after the current job.

    Afterwards each signal is handled as before (by default SIGTERM terminates the
    process and SIGINT raises KeyboardInterrupt), once the claims of jobs not yet
    started have been given back. A second SIGINT interrupts the running job at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        if signum in run.signals and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning('%s: stopping after the current job', signal.Signals(signum).name)
        run.signals.append(signum)
        run.stop_requested = True

    previous = {}
    for signum in DEFERRED_SIGNALS:
        handler = signal.getsignal(signum)
        if handler not in (signal.SIG_IGN, None):
            previous[signum] = handler
            signal.signal(signum, request_stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(run.signals):
            if previous[signum] == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
            elif callable(previous[signum]):
                previous[signum](signum, None)


# -- the default queue and the module functions ------------------------------------------
_default = None


def default_queue():
    """The Queue at $DBBASIC_QUEUE, else data/queue.tsv under the current directory."""
    global _default
    location = os.environ.get(ENV_VAR) or DEFAULT_PATH
    key = (location, os.getcwd())
    if _default is None or _default[0] != key:
        _default = (key, Queue(location))
    return _default[1]


def enqueue(job_type, payload, run_at=None, **options):
    """Add a job to the default queue; returns its id (16 hex chars). See Queue.enqueue."""
    return default_queue().enqueue(job_type, payload, run_at, **options)


def process_jobs(handlers, max_attempts=MAX_ATTEMPTS, **limits):
    """Run the due jobs of the default queue; returns counts by outcome."""
    return default_queue().process_jobs(handlers, max_attempts, **limits)


def get_job(job_id):
    """The job from the default queue as a dict, or None."""
    return default_queue().get_job(job_id)


def cancel_job(job_id):
    """Cancel a pending job of the default queue; True if it was pending."""
    return default_queue().cancel_job(job_id)
