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
for the same API on RQ. `Queue(location)` is the same API on a queue of your own.

This module is where a reader starts: a Queue checks every argument (with the checks of
validate.py, which hold their error texts, and schedule.py's for recurring entries), owns
the maintenance verbs, and hands valid values to its backend (backend.py is the
contract): file_backend.py by default (data/queue.tsv for pending and processing jobs,
data/queue.done.tsv for finished ones), rq_backend.py for a redis:// location. What an
attempt does, on both, is rules.py. The README's "What is guaranteed" says what holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, Union

from . import rules, schedule as schedules
from .errors import InvalidArgumentError, InvalidJobError, JobNotFound, QueueError
from .backend import NewJobs, history_buckets
from .file_backend import FileBackend
from .job import FINAL_WORDS, STATUS_WORDS, Job, JobDetails, JobDict, number
from .lineformat import can_be_id, format_line, split_line
from .validate import (JSON_EACH, check_durable, check_file_mode, check_handlers, check_job_type,
                       check_limit, check_timeout, job_options, payload_json, run_at_from)

log = logging.getLogger('dbbasic_queue')

ENV_VAR = 'DBBASIC_QUEUE'
MODE_ENV_VAR = 'DBBASIC_QUEUE_MODE'   # e.g. 660: the queue's files are shared with a group
DURABLE_ENV_VAR = 'DBBASIC_QUEUE_DURABLE'   # 1: every enqueue waits for the disk
DEFAULT_PATH = 'data/queue.tsv'
MAX_ATTEMPTS = rules.MAX_ATTEMPTS
LEASE_SECONDS = 3600            # a file claim from another host is trusted this long
ENQUEUE_MANY_CHUNK_JOBS = 10_000   # enqueue_many writes this many jobs per locked append
PAGE_JOBS = 50                  # find_jobs gives this many jobs a page
SCHEDULE_POLL_SECONDS = 1.0     # run_worker (RQ) enqueues due scheduled slots this often

Handlers = Mapping[str, Callable[[Any], Any]]             # job type -> fn(payload) -> result
OnFailure = Callable[[JobDict, BaseException], object]    # fn(job, exception), after a failure
Location = Union[str, 'os.PathLike[str]']                 # a .tsv path or a redis:// URL
Schedule = Iterable[schedules.Entry]                      # cron() and every() entries


ENQUEUE_OPTIONS = ('run_at', 'delay', 'priority', 'unique_key', 'timeout', 'max_attempts')


def _enqueue_arguments(item):
    """enqueue's positional arguments, in order, for one item of enqueue_many."""
    if isinstance(item, Mapping):
        unknown = set(item) - {'type', 'payload', *ENQUEUE_OPTIONS}
        if unknown or 'type' not in item or 'payload' not in item:
            raise InvalidJobError(f'a dict needs "type" and "payload" and may have '
                                  f'{", ".join(ENQUEUE_OPTIONS)}; got {sorted(map(str, item))}')
        return (item['type'], item['payload'],
                *(item.get(name, 0 if name == 'priority' else None) for name in ENQUEUE_OPTIONS))
    if isinstance(item, tuple) and len(item) == 2:
        return item
    raise InvalidJobError(f'each job must be a (type, payload) tuple or a dict, got {item!r:.80}')


def is_redis_url(location: Location) -> bool:
    return str(location).startswith(('redis://', 'rediss://', 'unix://'))


class Queue:
    """A job queue: in one TSV file (plus its archive), or on RQ for a redis:// URL."""

    def __init__(self, location: Location = DEFAULT_PATH, *,
                 clock: Callable[[], float] = time.time,
                 backoff_base_seconds: float = rules.BACKOFF_BASE_SECONDS,
                 lease_seconds: float | None = None, file_mode: int | str | None = None,
                 durable: bool | None = None):
        """lease_seconds: file: how long a claim from another host is trusted (default
        3600: above your longest job); RQ: how long after a worker's last heartbeat its
        job is recovered (default 60). file_mode: the permission bits of the files this
        queue creates, e.g. 0o660 to share it with a group (default $DBBASIC_QUEUE_MODE,
        else 0666 less the umask). Existing files keep their mode. durable: enqueue
        returns only once the job is on disk (an fsync per enqueue, one per enqueue_many;
        on RQ, WAITAOF: the server needs appendonly yes), so a power cut cannot lose a
        job whose id was returned (default $DBBASIC_QUEUE_DURABLE, else off)."""
        self._clock = clock
        self._valid_types: set[str] = set()
        self._next_slots: dict[tuple[str, str, float], float] = {}   # schedules.needs_commit's
        self._reported_removed: set[str] = set()
        durable = check_durable(durable if durable is not None
                                else os.environ.get(DURABLE_ENV_VAR) or False)
        if is_redis_url(location):
            self.backend = _redis_backend(str(location), clock, backoff_base_seconds,
                                          lease_seconds, durable)
        else:
            if Path(location).suffix != '.tsv':
                raise InvalidArgumentError(f'queue path must end in .tsv, got {str(location)!r}')
            self.backend = FileBackend(
                location, clock=clock, backoff_base_seconds=backoff_base_seconds,
                lease_seconds=LEASE_SECONDS if lease_seconds is None else lease_seconds,
                file_mode=check_file_mode(file_mode if file_mode is not None
                                          else os.environ.get(MODE_ENV_VAR) or None),
                durable=durable)
        self.path = self.backend.path
        self.lease_seconds = self.backend.lease_seconds

    def backoff_seconds(self, attempts: int) -> float:
        """The delay before retry number `attempts` (rules.backoff_seconds)."""
        return rules.backoff_seconds(self.backend.backoff_base_seconds, attempts)

    @property
    def archive_path(self) -> Path:
        return self._file_backend('the archive').archive.path

    # -- the four calls --------------------------------------------------------------
    def enqueue(self, job_type: str, payload: Any, run_at: float | datetime | None = None, *,
                delay: float | timedelta | None = None, priority: int = 0,
                unique_key: str | None = None, timeout: float | None = None,
                max_attempts: int | None = None) -> str:
        """Add a job and return its id; raises InvalidJobError (writing nothing) on bad input.

        run_at: Unix seconds or a datetime; or delay: seconds or a timedelta from now.
        priority: higher runs first (default 0). timeout: seconds a handler may run.
        max_attempts: overrides process_jobs' default for this job. unique_key: while a
        job with this key is pending or processing, return its id instead of adding one.
        On the file: one locked append (with a unique_key, one read of the hot file under
        the lock; a backend's first add reads the file's header, to upgrade a 1.0.0 file).
        """
        now = self._clock()
        return self.backend.add(*self._new_job(now, job_type, payload, run_at, delay, priority,
                                               unique_key, timeout, max_attempts))

    def enqueue_many(self, jobs: Iterable[tuple[str, Any] | Mapping[str, Any]]) -> list[str]:
        """Add many jobs and return their ids, in order; each item is (job_type, payload)
        or a dict with 'type', 'payload' and any of enqueue's options.

        All or nothing: every item is checked before anything is written, and a bad one
        raises InvalidJobError naming its index. On the file, then one locked append per
        ENQUEUE_MANY_CHUNK_JOBS jobs (a process killed between two leaves the first
        chunks, each job whole); on RQ, one MULTI/EXEC per chunk. Items with a
        unique_key are checked against the active jobs and against each other. jobs is
        read ENQUEUE_MANY_CHUNK_JOBS items at a time, each chunk encoded before the next
        is read: a generator of a million jobs costs the file about its lines' size.
        """
        now = self._clock()
        return self.backend.add_many(self._checked_chunks(now, iter(jobs)))

    def _checked_chunks(self, now, items):
        """NewJobs of items, ENQUEUE_MANY_CHUNK_JOBS at a time (InvalidJobError naming
        a bad item's index)."""
        start = 0
        while True:
            chunk = list(islice(items, ENQUEUE_MANY_CHUNK_JOBS))
            if not chunk:
                return
            new_jobs = self._plain_new_jobs(now, chunk)
            if new_jobs is None:
                new_jobs = NewJobs(now)
                for index, item in enumerate(chunk, start):
                    try:
                        job_type, payload, text, _, run_at, options = self._new_job(
                            now, *_enqueue_arguments(item))
                    except InvalidArgumentError as exc:
                        raise InvalidJobError(f'item {index}: {exc}') from None
                    new_jobs.append(job_type, payload, text, run_at, options)
            start += len(chunk)
            del chunk
            yield new_jobs

    def _plain_new_jobs(self, now, items):
        """items as NewJobs when each is a (job_type, payload) tuple (the common case),
        checked and encoded by loops in C, with no Python call per item; None when one is
        not, or is bad: the item-by-item way then names it."""
        if set(map(type, items)) != {tuple} or set(map(len, items)) != {2}:
            return None
        types = list(map(itemgetter(0), items))
        try:
            for job_type in set(types).difference(self._valid_types):
                check_job_type(job_type)
                self._valid_types.add(job_type)
            payloads = list(map(itemgetter(1), items))
            return NewJobs(now, types, payloads, JSON_EACH(payloads))
        except (TypeError, ValueError, RecursionError):   # InvalidArgumentError is both
            return None

    def _new_job(self, now, job_type, payload, run_at=None, delay=None, priority=0,
                 unique_key=None, timeout=None, max_attempts=None):
        """backend.add's arguments for one checked job (InvalidJobError otherwise)."""
        if not (isinstance(job_type, str) and job_type in self._valid_types):
            check_job_type(job_type)   # isinstance first: a list cannot be looked up in a set
            self._valid_types.add(job_type)
        payload_text = payload_json(payload)
        due = None if run_at is None and delay is None else run_at_from(now, run_at, delay)
        options = None
        if priority != 0 or unique_key is not None or timeout is not None or max_attempts is not None:
            options = job_options(priority, unique_key, timeout, max_attempts)
        return job_type, payload, payload_text, now, due, options

    def process_jobs(self, handlers: Handlers, max_attempts: int = MAX_ATTEMPTS, *,
                     timeout: float | None = None, max_jobs: int | None = None,
                     max_seconds: float | None = None,
                     on_failure: OnFailure | None = None,
                     schedule: Schedule | None = None) -> dict[str, int]:
        """Run every due job whose type has a handler, then return counts by outcome.

        Returns {'completed': n, 'retried': n, 'failed': n, 'recovered': n}. A handler
        gets the decoded payload; its return value is stored as the job's result. Any
        exception it raises (SystemExit included) is a failed attempt.
        timeout (seconds) is the default for jobs enqueued without one: a handler still
        running then is interrupted and the attempt fails with a TimeoutError (SIGALRM:
        only in the main thread, and not inside C code that blocks signals).
        max_attempts is the default for jobs enqueued without their own.
        max_jobs and max_seconds stop it early (a job already started always finishes).
        on_failure(job dict, exception) is called after every failed attempt (the job as
        that attempt left it: 'pending' for a retry, else 'failed'): the place for Sentry
        or an alert. Its own exceptions are logged and never stop the run.
        Jobs of a paused type (pause()) are left pending.
        schedule: a list of cron() and every() entries; their due slots are enqueued first
        (enqueue_due), and an entry whose type has no handler here is an error at once.
        On SIGTERM or SIGINT the current job finishes, claimed jobs not yet started go
        back to pending, and the signal is then handled as it would have been (a second
        SIGINT interrupts the running job at once).
        """
        self._check_work(handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure)
        if schedule is not None:
            self.enqueue_due(schedules.check_schedule(schedule, handlers))
        return rules.outcome_counts(self.backend.work(handlers, max_attempts, timeout,
                                                      max_jobs, max_seconds, on_failure))

    def enqueue_due(self, schedule: Schedule) -> list[str]:
        """Enqueue one job for each slot of schedule (cron() and every() entries) that
        came due since the slot last enqueued for it; returns the new jobs' ids.

        Exactly one job per (entry, slot), whatever runs at once: the record of a slot and
        its job are stored together (Backend.commit_schedule). When nothing is due this
        reads no more than the stored state (on the file: one stat). See schedule.py for
        new and changed entries, catch_up after downtime, and time zones.
        """
        entries = schedules.check_schedule(schedule)
        records = self.backend.schedule_records()
        for record in schedules.removed(entries, records):
            if record.name not in self._reported_removed:
                self._reported_removed.add(record.name)
                log.warning('schedule state of %r (%s) has no entry in this schedule: '
                            'ignored', record.name, record.schedule)
        if not schedules.needs_commit(entries, records, self._clock(), self._next_slots):
            return []
        planned: list[tuple[str, str, Any, str]] = []

        def decide(records):
            changed, planned[:] = schedules.plan(entries, records, self._clock())
            return changed, planned

        ids = self.backend.commit_schedule(decide)
        for job_id, job_type, payload, _ in planned:   # once committed: RQ may decide twice
            log.info('%s %s enqueued for its slot %s', job_id, job_type,
                     payload[schedules.SLOT_FIELD])
        return ids

    def schedule_records(self) -> dict[str, schedules.Record]:
        """The stored state of recurring jobs, by entry name (for `dbbasic-queue schedule`)."""
        return dict(self.backend.schedule_records())

    def run_worker(self, handlers: Handlers, max_attempts: int = MAX_ATTEMPTS, *,
                   timeout: float | None = None, max_jobs: int | None = None,
                   max_seconds: float | None = None,
                   on_failure: OnFailure | None = None,
                   schedule: Schedule | None = None) -> dict[str, int]:
        """A long-running worker that blocks on new jobs itself (RQ only; the file's is
        `dbbasic-queue work --loop`); counts by outcome. Types paused when it starts are
        left alone until it is restarted. With a schedule, a thread enqueues its due
        slots every SCHEDULE_POLL_SECONDS while the worker runs."""
        self._check_work(handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure)
        if not self.backend.long_running_worker:
            raise QueueError('run_worker needs RQ; a file queue polls process_jobs')
        if schedule is None:
            return rules.outcome_counts(self.backend.work_forever(
                handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure))
        entries = schedules.check_schedule(schedule, handlers)
        self.enqueue_due(entries)
        stop = threading.Event()
        poller = threading.Thread(target=self._enqueue_due_until, args=(entries, stop),
                                  name='dbbasic-queue schedule', daemon=True)
        poller.start()
        try:
            return rules.outcome_counts(self.backend.work_forever(
                handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure))
        finally:
            stop.set()
            poller.join()

    def _enqueue_due_until(self, entries, stop):
        while not stop.wait(SCHEDULE_POLL_SECONDS):
            try:
                self.enqueue_due(entries)
            except Exception:
                log.exception('schedule: enqueueing due slots failed; trying again in %g s',
                              SCHEDULE_POLL_SECONDS)

    @staticmethod
    def _check_work(handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure):
        check_handlers(handlers, max_attempts)
        check_timeout(timeout)
        check_limit('max_jobs', max_jobs)
        check_limit('max_seconds', max_seconds)
        if on_failure is not None and not callable(on_failure):
            raise InvalidArgumentError(f'on_failure must be callable or None, got {on_failure!r}')

    # -- pause, resume, cancel all -------------------------------------------------------
    def pause(self, job_type: str) -> None:
        """Workers leave this type's jobs pending (from their next process_jobs) until
        resume(job_type). Kept beside the queue (data/queue.paused: one type a line; on
        RQ a Redis set), so it survives restarts."""
        check_job_type(job_type)
        self.backend.set_paused(job_type, True)

    def resume(self, job_type: str) -> None:
        """Undo pause(job_type); resuming a type that is not paused does nothing."""
        check_job_type(job_type)
        self.backend.set_paused(job_type, False)

    def paused_types(self) -> list[str]:
        """The paused job types, sorted."""
        return sorted(self.backend.paused_types())

    def cancel_jobs(self, job_type: str | None = None) -> list[str]:
        """Cancel every pending job (of job_type, if given) at once; returns their ids."""
        if job_type is not None:
            check_job_type(job_type)
        return self.backend.cancel_pending(job_type)

    def get_job(self, job_id: str) -> JobDict | None:
        """The job as a dict (payload and result decoded), or None if there is no such id.

        Reads the storage each time, so it sees what any other process wrote.
        """
        job = self.find_job(job_id)
        return job.to_dict() if job else None

    def find_job(self, job_id: str) -> Job | None:
        """The Job (every column) with this id, or None."""
        if not _plausible_id(job_id):
            return None
        return self.backend.find(job_id)

    def cancel_job(self, job_id: str) -> bool:
        """True if the job was pending and is now cancelled (it will never run), else False."""
        return _plausible_id(job_id) and self.backend.cancel(job_id)

    # -- inspection --------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """Every job (pending to finished) as Jobs, each once."""
        return self.backend.jobs()

    def list_jobs(self, status: str | None = None, job_type: str | None = None,
                  limit: int | None = None) -> list[JobDetails]:
        """Jobs as get_job dicts with the extra columns, filtered, in storage order."""
        if status is not None and status not in STATUS_WORDS:
            raise InvalidArgumentError(f'status must be one of {", ".join(STATUS_WORDS)}, '
                                       f'got {status!r}')
        chosen: list[Any] = [job.to_dict(full=True) for job in self.jobs()
                  if (status is None or job.status.value == status)
                  and (job_type is None or job.type == job_type)]
        return chosen if limit is None else chosen[:limit]

    def stats(self) -> dict[str, Any]:
        """Counts by status and by type, oldest pending age, next due time, live workers,
        paused types, and where `migrate` moved a file queue (None: it was not)."""
        now = self._clock()
        by_status = dict.fromkeys(STATUS_WORDS, 0)
        by_type: dict[str, dict[str, int]] = {}
        counts, oldest_created, next_due = self.backend.job_totals()
        for (status, job_type), count in sorted(counts.items()):
            by_status[status] += count
            by_type.setdefault(job_type, dict.fromkeys(STATUS_WORDS, 0))[status] += count
        return {
            'total': sum(by_status.values()), 'by_status': by_status, 'by_type': by_type,
            'oldest_pending_seconds': None if oldest_created is None else max(0, now - oldest_created),
            'next_due_at': None if next_due is None else number(next_due),
            'workers': self.backend.workers(),
            'paused': self.paused_types(),
            'migrated_to': self.backend.migrated_to(),
        }

    def find_jobs(self, status: str | None = None, job_type: str | None = None,
                  text: str | None = None, *, offset: int = 0,
                  limit: int = PAGE_JOBS) -> tuple[int, list[JobDetails]]:
        """(how many jobs match, limit of them from offset on, as list_jobs dicts): jobs
        of this status and type whose payload or error holds text (ASCII case ignored).
        Pending and processing jobs come first, newest first, then finished ones, the
        last finished first. On the file, only the page's lines are parsed."""
        if status is not None and status not in STATUS_WORDS:
            raise InvalidArgumentError(f'status must be one of {", ".join(STATUS_WORDS)}, '
                                       f'got {status!r}')
        if job_type is not None:
            check_job_type(job_type)
        if text is not None and not isinstance(text, str):
            raise InvalidArgumentError(f'text must be a str or None, got {text!r}')
        for name, value in (('offset', offset), ('limit', limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f'{name} must be an int >= 0, got {value!r}')
        total, page = self.backend.page_jobs(status, job_type, text or None, offset, limit)
        return total, [job.to_dict(full=True) for job in page]

    def claims(self) -> list[dict[str, Any]]:
        """The jobs being processed now, longest-running first: {'worker', 'id', 'type',
        'claimed_at', 'running_seconds', 'alive'} (alive: its worker still runs, as far
        as this host can tell)."""
        now = self._clock()
        live = set(self.backend.workers())
        claimed = [{'worker': job.worker, 'id': job.id, 'type': job.type,
                    'claimed_at': number(job.claimed_at),
                    'running_seconds': max(0.0, now - job.claimed_at) if job.claimed_at else None,
                    'alive': job.worker in live}
                   for job in self.backend.claimed_jobs()]
        return sorted(claimed, key=lambda claim: claim['claimed_at'] or 0)

    def history(self) -> dict[str, list[dict[str, int]]]:
        """Jobs finished per minute over the last hour and per hour over the last day
        ('completed', 'failed'), and the queue's depth (jobs neither finished nor
        purged) at the end of each: {'minutes': [60 buckets], 'hours': [24 buckets]},
        oldest first, each {'start': Unix seconds, 'completed', 'failed', 'depth'}."""
        finished, created = self.backend.minute_counts()
        this_minute = int(self._clock()) // 60
        return {'minutes': history_buckets(finished, created, this_minute, 1, 60),
                'hours': history_buckets(finished, created, this_minute, 60, 24)}

    def read_rows(self) -> list[list[str]]:
        """Every job as a list of str in COLUMNS order (what _read_tsv returns)."""
        return [split_line(format_line(job)) for job in self.jobs()]

    # -- maintenance -------------------------------------------------------------------
    def retry(self, job_id: str | None = None, *, failed: bool = False,
              job_type: str | None = None) -> list[str]:
        """Make failed or cancelled jobs pending again, with fresh attempts; returns their ids.

        Either one job_id, or failed=True for every failed job (of job_type, if given).
        A job_id that is not failed or cancelled raises InvalidArgumentError; an unknown
        one, JobNotFound.
        """
        if (job_id is None) == (not failed):
            raise InvalidArgumentError('give either a job_id or failed=True')
        if job_id is not None and not _plausible_id(job_id):
            raise JobNotFound(job_id)
        revived, refused = self.backend.revive(job_id, None if job_id else job_type, self._clock())
        if revived or job_id is None:
            return revived
        if refused is None:
            raise JobNotFound(job_id)
        raise InvalidArgumentError(f'job {job_id} is {refused.status.value}: only failed and '
                                   f'cancelled jobs can be retried')

    def purge(self, statuses: Iterable[str], older_than_seconds: float | None = None,
              dry_run: bool = False, *, keep: int | None = None) -> list[str]:
        """Delete finished jobs of these statuses; returns their ids.

        A job goes if it finished more than older_than_seconds ago, or if it is not among
        the newest `keep` jobs of these statuses (give either, or both). Only the named
        statuses are touched: failed jobs stay unless you name them. dry_run only lists.
        """
        statuses = set(statuses)
        if not statuses or not statuses <= set(FINAL_WORDS):
            raise InvalidArgumentError(f'statuses must be some of {", ".join(FINAL_WORDS)}, '
                                       f'got {", ".join(sorted(statuses)) or "none"}')
        check_limit('older_than_seconds', older_than_seconds)
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise InvalidArgumentError(f'keep must be an int >= 0 or None, got {keep!r}')
        if older_than_seconds is None and keep is None:
            raise InvalidArgumentError('give older_than_seconds, keep, or both')
        cutoff = None if older_than_seconds is None else self._clock() - older_than_seconds
        return self.backend.purge(
            lambda jobs: rules.chosen_for_purge(jobs, statuses, cutoff, keep), dry_run)

    def check(self) -> list[str]:
        """Problems found in the storage, as one-line descriptions (empty: all is well)."""
        return self.backend.check(self._clock())

    def mark_migrated(self, job_ids: Iterable[str]) -> None:
        """Mark these pending and failed jobs 'migrated' (migrate calls it once RQ has them)."""
        self._file_backend('migrate').mark_migrated(job_ids)

    # -- hand edits (the file only): dbbasic-queue edit ------------------------------------
    def read_for_edit(self) -> str:
        """The hot file's text, one consistent version, read under the lock."""
        return self._file_backend('edit').read_for_edit()

    def check_edit(self, text: str) -> list[str]:
        """Problems in an edited text, one per line with its line number (empty: fine)."""
        return self._file_backend('edit').check_edit(text)

    def save_edit(self, original: str, edited: str) -> int:
        """Commit an edited text, merged by job id with the file as it is now; returns how
        many lines the edit changed. A job changed both in the edit and by a worker (or
        finished meanwhile) raises EditConflict and nothing is saved."""
        return self._file_backend('edit').save_edit(original, edited)

    def _file_backend(self, what):
        if self.backend.kind != 'file':
            raise QueueError(f'{what} works on a file queue, not on {self.path}')
        return self.backend


def _plausible_id(job_id):
    return can_be_id(job_id)


def _redis_backend(url, clock, backoff_base_seconds, lease_seconds, durable):
    try:
        from .rq_backend import RedisBackend
    except ImportError as exc:
        raise QueueError(f'{url} needs the rq extra: pip install "dbbasic-queue[rq]" '
                         f'({exc})') from None
    return RedisBackend(url, clock=clock, backoff_base_seconds=backoff_base_seconds,
                        lease_seconds=lease_seconds, durable=durable)


# -- the default queue and the module functions ------------------------------------------
_default = None


def default_queue() -> Queue:
    """The Queue at $DBBASIC_QUEUE, else data/queue.tsv under the current directory."""
    global _default
    location = os.environ.get(ENV_VAR) or DEFAULT_PATH
    key = (location, os.getcwd())
    if _default is None or _default[0] != key:
        _default = (key, Queue(location))
    return _default[1]


def enqueue(job_type: str, payload: Any, run_at: float | datetime | None = None,
            **options: Any) -> str:
    """Add a job to the default queue; returns its id (16 hex chars). See Queue.enqueue."""
    return default_queue().enqueue(job_type, payload, run_at, **options)


def enqueue_many(jobs: Iterable[tuple[str, Any] | Mapping[str, Any]]) -> list[str]:
    """Add many jobs to the default queue at once; returns their ids. See
    Queue.enqueue_many."""
    return default_queue().enqueue_many(jobs)


def process_jobs(handlers: Handlers, max_attempts: int = MAX_ATTEMPTS,
                 **options: Any) -> dict[str, int]:
    """Run the due jobs of the default queue; returns counts by outcome. See
    Queue.process_jobs for the options (timeout, max_jobs, max_seconds, on_failure,
    schedule)."""
    return default_queue().process_jobs(handlers, max_attempts, **options)


def get_job(job_id: str) -> JobDict | None:
    """The job from the default queue as a dict, or None."""
    return default_queue().get_job(job_id)


def cancel_job(job_id: str) -> bool:
    """Cancel a pending job of the default queue; True if it was pending."""
    return default_queue().cancel_job(job_id)
