"""dbbasic_queue: a background job queue whose whole state is one TSV file.

Usage::

    from dbbasic_queue import enqueue, process_jobs, get_job, cancel_job

    job_id = enqueue('send_email', {'to': 'user@example.com'})
    enqueue('report', {'day': 27}, delay=3600, priority=5, unique_key='report:27',
            timeout=600, max_attempts=5)
    process_jobs({'send_email': send}, max_attempts=3)   # from cron, every minute
    get_job(job_id)['status']                           # 'completed'

The module functions act on data/queue.tsv under the current directory, or on the
location in the DBBASIC_QUEUE environment variable: a .tsv path, or a redis:// URL
for the same API on RQ (rq_backend). `Queue(location)` is the same API on a queue of
your own (data/email.tsv ...).

Files: data/queue.tsv holds pending and processing jobs, one per line; finished jobs
(completed, failed, cancelled, migrated) move to data/queue.done.tsv beside it, so
history never slows the hot path. Both are dbbasic-tsv tables, the seed's nine columns
first. Storage (files, locks, atomic rewrites) is storage.py; this module is the queue
logic: claims, outcomes, retries, recovery, ordering.

Guarantees:
- Nothing is lost: enqueue appends under an exclusive flock; every change is a rewrite
  to a fsynced temp file renamed over the old one, merging lines appended meanwhile.
- A job is claimed (status processing, worker host:pid:start) before its handler runs;
  no two workers run the same job at once.
- A job whose worker died runs again at the next process_jobs on that host (for a
  worker on another host: once LEASE_SECONDS have passed since the claim). The crash
  counts as an attempt, so a job that kills its worker every time ends failed.
- Failures retry with exponential backoff; at max_attempts a job is failed and kept.
- Due jobs run by priority, then run_at, then enqueue order; never before run_at.

Limits: at-least-once, not exactly-once: a worker that dies after its handler returned
but before recording it runs the job again, so handlers should be idempotent. One
machine, or one shared volume with a lease; graduate to Redis (RQ) beyond that.
"""

import heapq
import logging
import math
import os
import random
import re
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from . import liveness
from .errors import JobTimedOut, QueueError, StorageError
from .job import (COLUMNS, FINAL_STATUSES, SEED_COLUMNS, Job, Status, UnparsableLine, check_header,
                  format_line, format_millis, format_new_line, format_time, new_job_id,
                  parse_line, quote_field, split_line)
from .maintenance import FileMaintenance, job_or_none, parse_line_at
from .signals import deferred_signals, time_limit
from .storage import FileLock, TableFile, WorkerJournal, split_header
from .validate import (JSON_ASCII, check_file_mode, check_handlers, check_job_type, check_limit,
                       check_timeout, due_now_millis, job_options, payload_json, result_json,
                       run_at_from)

log = logging.getLogger('dbbasic_queue')

ENV_VAR = 'DBBASIC_QUEUE'
MODE_ENV_VAR = 'DBBASIC_QUEUE_MODE'   # e.g. 660: the queue's files are shared with a group
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
SCAN_CHUNK_BYTES = 1 << 20      # a first poll's regex pass stops at the first due chunk
WORKER_LOST = 'WorkerLost'      # the error of an attempt its worker did not survive
ACTIVE_STATUSES = frozenset({Status.PENDING, Status.PROCESSING})
_PENDING, _PROCESSING = Status.PENDING.value, Status.PROCESSING.value
_STATUS_WORDS = {status.value: status.value for status in Status}


@dataclass
class _Plan:
    """What one rewrite does: replace (Job) or drop (None) lines by index."""
    changes: dict = field(default_factory=dict)
    archive: list = field(default_factory=list)   # Jobs to append to the archive first
    result: object = None
    gone_workers: list = field(default_factory=list)  # dead workers: journals to remove


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
    interrupting: bool = False                      # a second SIGINT is stopping the job
    signals: list = field(default_factory=list)     # deferred until the run is tidy
    journal: object = None                          # WorkerJournal: the job being started
    summary: Counter = field(default_factory=Counter)


class _OlderColumns(Exception):
    """The file has older columns (1.0.0's nine): upgrade it before editing a line."""


class Queue(FileMaintenance):
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
                 backoff_base_seconds=BACKOFF_BASE_SECONDS, lease_seconds=LEASE_SECONDS,
                 file_mode=None):
        """file_mode: the permission bits of the files this queue creates (lock, tables,
        journals), e.g. 0o660 to share the queue with a group; default $DBBASIC_QUEUE_MODE,
        else 0666 less the umask, as any new file. Existing files keep their mode."""
        self.path = Path(path)
        if self.path.suffix != '.tsv':
            raise ValueError(f'queue path must end in .tsv, got {str(path)!r}')
        self.file_mode = check_file_mode(file_mode if file_mode is not None
                                         else os.environ.get(MODE_ENV_VAR) or None)
        lock = FileLock(self.path.with_suffix('.lock'), self.file_mode)
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
        self._polled = False
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
            check_job_type(job_type)
            self._valid_types.add(job_type)
        now = self._clock()
        payload_text = payload_json(payload)
        job_id = new_job_id()
        if priority == 0 and unique_key is None and timeout is None and max_attempts is None:
            if run_at is None and delay is None:
                run_at_text = format_millis(due_now_millis(now))
            else:
                run_at_text = format_time(run_at_from(now, run_at, delay))
            line = format_new_line(job_id, job_type, payload_text, int(now), run_at_text)
        else:
            line = format_line(Job(job_id, job_type, payload_text, Status.PENDING, int(now),
                                   run_at_from(now, run_at, delay),
                                   **job_options(priority, unique_key, timeout, max_attempts)))
        try:
            data = (line + '\n').encode('utf-8')
        except UnicodeEncodeError:
            # Lone surrogates in a str: escape them so the file stays valid UTF-8.
            escaped = payload_json(payload, JSON_ASCII)
            data = (line.replace(quote_field(payload_text), quote_field(escaped), 1)
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
        needle = ('\t' + quote_field(unique_key) + '\t').encode('utf-8', 'surrogateescape')
        pos = data.find(needle)
        while pos >= 0:
            try:
                job = parse_line_at(data, pos)
            except UnparsableLine:
                job = None
            if job is not None and job.unique_key == unique_key and job.status in ACTIVE_STATUSES:
                return job.id
            pos = data.find(needle, data.find(b'\n', pos) + 1 or len(data))
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
        job = self.find_job(job_id)
        return job.to_dict() if job else None

    def cancel_job(self, job_id):
        """True if the job was pending and is now cancelled (it will never run), else False.

        The job stays in the hot file as cancelled; the next worker run archives it.
        """
        if not isinstance(job_id, str) or not job_id or '\t' in job_id or '\n' in job_id:
            return False

        def cancel(header, line):
            if tuple(header) != COLUMNS:
                raise _OlderColumns
            try:
                job = parse_line(line, header)
            except UnparsableLine:
                self._report_unparsable(line)
                return None
            if job.status is not Status.PENDING:
                return None
            return format_line(job.evolve(status=Status.CANCELLED, error='Cancelled by user',
                                          finished_at=self._clock()))

        with self._state_lock:
            try:
                return self._table.rewrite_line(job_id + '\t', cancel)
            except _OlderColumns:
                self._upgrade_header()   # a 1.0.0 file: give it our columns first
                return self._table.rewrite_line(job_id + '\t', cancel)

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
                lines, changed = [], False
                for line in archive.lines:
                    if line.split('\t', 1)[0] in job_ids:
                        job = job_or_none(line, archive.header)
                        if job is not None and job.status is Status.FAILED:
                            line, changed = format_line(job.evolve(status=Status.MIGRATED)), True
                    lines.append(line)
                if changed:
                    self._archive.commit(archive, lines)

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
        check_handlers(handlers, max_attempts)
        check_timeout(timeout)
        check_limit('max_jobs', max_jobs)
        check_limit('max_seconds', max_seconds)
        run = _Run(dict(handlers), max_attempts, timeout, liveness.current_worker(),
                   jobs_left=max_jobs,
                   deadline=None if max_seconds is None else time.monotonic() + max_seconds)
        with self._state_lock:
            if self._nothing_to_do(run):   # the idle poll: no signal handlers to swap
                return outcome_counts(run.summary)
            with deferred_signals(run):
                self._work(run)
        return outcome_counts(run.summary)

    def _work(self, run):
        """Claim and run batches until none is due or a limit is reached; then give back
        the claims not started and record the outcomes not yet written."""
        run.journal = WorkerJournal(self.path, run.worker, self.file_mode)
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
            run.journal.close()

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
        for worker, indexes in dead.items():
            candidates.extend(self._recover(run, worker, indexes, plan, now))
        plan.gone_workers = list(dead) + self._idle_dead_journals(alive)
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
        claimed_ids = set()
        for i in heapq.nsmallest(run.batch_size, due, key=order):
            job = plan.changes.get(i) or self._full_job(i)
            # A line copied by a hand edit: one copy is claimed at a time.
            if job is not None and job.id not in claimed_ids:
                claimed_ids.add(job.id)
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

    def _recover(self, run, worker, indexes, plan, now):
        """Give back the jobs of one dead worker; returns the indexes now pending.

        Its finished jobs are in the archive already: they are dropped here. Its journal
        names the job whose handler was running when it died: that one is charged an
        attempt (and stays due: it runs again at once). The others had not started, or
        their outcome was lost with the worker: they return to pending as they were.
        A worker of an older version kept no journal: the first claim in run order is
        charged, as it then was.
        """
        claims = [(i, job) for i, job in ((i, self._full_job(i)) for i in indexes) if job]
        archived = self._archived_ids({job.id for _, job in claims})
        unfinished = []
        for i, job in sorted(claims, key=lambda c: (-c[1].priority, c[1].run_at, c[0])):
            if job.id in archived:
                plan.changes[i] = None
            else:
                unfinished.append((i, job))
        running = WorkerJournal.running_job(self.path, worker)
        pending = []
        for i, job in unfinished:
            if job.id == running or (running is None and i == unfinished[0][0]):
                pending += self._charge_crash(run, i, job, plan, now)
            else:
                plan.changes[i] = job.evolve(status=Status.PENDING, worker='', claimed_at=0.0)
                pending.append(i)
                run.summary['recovered'] += 1
        return pending

    def _charge_crash(self, run, i, crashed, plan, now):
        """The attempt a worker's death costs the job it was running; [i] if pending."""
        error = f'{WORKER_LOST}: worker {crashed.worker or "of dbbasic-queue 1.0.0"} died running this job'
        log.warning('job %s (%s): %s', crashed.id, crashed.type, error)
        outcome = self._after_failure(crashed, crashed.attempts + 1, error,
                                      crashed.max_attempts or run.max_attempts, now,
                                      retry_at=crashed.run_at)
        if outcome.status is Status.FAILED:
            plan.changes[i] = None
            plan.archive.append(outcome)
            run.summary['failed'] += 1
            return []
        plan.changes[i] = outcome
        run.summary['recovered'] += 1
        return [i]

    def _idle_dead_journals(self, workers_with_claims):
        """Journals left by dead workers of this host that hold no claim."""
        return [worker for worker in WorkerJournal.workers(self.path)
                if worker not in workers_with_claims
                and worker.startswith(liveness.HOST + ':')
                and not liveness.claim_is_alive(worker, 0.0, 0.0, 0)]

    def _after_failure(self, job, attempts, error, max_attempts, now, retry_at=None):
        """The job after a failed attempt: pending with backoff (or at retry_at), or
        failed at max_attempts."""
        if attempts >= max_attempts:
            return job.evolve(status=Status.FAILED, attempts=attempts, error=error,
                              finished_at=now)
        if retry_at is None:
            retry_at = now + self.backoff_seconds(attempts)
        return job.evolve(status=Status.PENDING, attempts=attempts, error=error,
                          run_at=retry_at, worker='', claimed_at=0.0)

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
            if job.error.startswith(WORKER_LOST) and run.archive_buffer:
                # It killed a worker before: what finished before it must not die with it.
                self._flush_archive(run)
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
        run.journal.starting(job.id)
        try:
            with time_limit(timeout):
                result = run.handlers[job.type](job.payload)
        except JobTimedOut:
            run.journal.finished()
            error = f'TimeoutError: job ran longer than its timeout of {timeout:g} s'
            log.error('job %s (%s) failed on attempt %d of %d: %s', job.id, job.type,
                      attempts, max_attempts, error)
            outcome = self._after_failure(job, attempts, error, max_attempts, self._clock())
        except BaseException as exc:
            run.journal.finished()
            if run.interrupting:
                # Ctrl-C twice: the worker was told to stop, the job is not at fault.
                run.unstarted.appendleft(job.id)
                raise
            # Any exception of the handler's own, SystemExit (argparse, sys.exit) and
            # KeyboardInterrupt included, is a failed attempt.
            log.exception('job %s (%s) failed on attempt %d of %d', job.id, job.type,
                          attempts, max_attempts)
            outcome = self._after_failure(job, attempts, f'{type(exc).__name__}: {exc}',
                                          max_attempts, self._clock())
        else:
            run.journal.finished()
            outcome = job.evolve(status=Status.COMPLETED, attempts=attempts, error='',
                                 result_json=result_json(result, job), finished_at=self._clock())
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
            self._archive.append_lines(run.archive_buffer, fsync=fsync)
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
        for holding in self._table.attempts():
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
                        self._archive.append_lines(map(format_line, plan.archive), fsync=True)
                    if before_rename is not None:
                        before_rename()

                new = self._table.commit(snap, lines, under_lock)
                if new is not None:
                    new.jobs = new_entries
                    for worker in plan.gone_workers:
                        WorkerJournal.remove(self.path, worker)
                    return plan.result

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
        check_header(self.path, snap.header)

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

        The first call of a Queue (a cron run polls once) decides from one regex pass over
        the file when every line is a pending job. Later calls keep parsed entries and
        scan again only when the file changed; otherwise they cost one stat() plus a
        liveness check of each worker holding claims.
        """
        if not self._polled:
            self._polled = True
            now = self._clock()
            next_due = _next_due_if_all_pending(self._table.read_bytes(), now)
            if next_due is not None and now < next_due:
                return True
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


# One line of a pending job, from the newline before it: tab-free first six columns,
# status pending, and a run_at of 10 integer digits (2001-2286), so that the smallest
# run_at as bytes is the earliest. Each match starts at a line's own newline, so as many
# matches as lines means every line matched (a match running into the next line would
# leave that line without one).
_PENDING_LINE = re.compile(rb'\n[^\t]*\t[^\t]*\t[^\t]*\tpending\t\d*\t(\d{10}(?:\.\d{1,3})?)\t')


def _next_due_if_all_pending(data, now=-math.inf, chunk_bytes=SCAN_CHUNK_BYTES):
    """The earliest run_at of the jobs in data (the hot file's bytes) when every line is
    a pending job, else None. Exact, and in C: a regex over the file instead of parsing
    each line in Python (about 5 ms for 10K jobs instead of 15). It reads chunk_bytes at
    a time and stops at the first chunk holding a job due at `now`, returning its run_at.
    """
    header_end = data.find(b'\n')
    if header_end < 0:
        return None
    header = split_header(data[:header_end].decode('utf-8', 'replace'))
    if tuple(header[:len(SEED_COLUMNS)]) != SEED_COLUMNS:
        return None
    last = data.rfind(b'\n')   # ends the last whole line: one still being appended waits
    start, next_due = header_end, math.inf
    while start < last:
        stop = data.rfind(b'\n', start + 1, start + chunk_bytes)
        if stop < 0:   # a line longer than a chunk
            stop = data.find(b'\n', start + 1)
        run_ats = _PENDING_LINE.findall(data, start, stop)
        if len(run_ats) != data.count(b'\n', start, stop):
            return None
        if run_ats:
            next_due = min(next_due, float(min(run_ats)))
        if next_due <= now:
            return next_due
        start = stop
    return next_due


def outcome_counts(counter):
    """What process_jobs returns, on either backend: the four outcomes, zeros included."""
    return {name: counter[name] for name in ('completed', 'retried', 'failed', 'recovered')}


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
