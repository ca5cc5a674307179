"""The same API on RQ (Redis), for when one file is no longer enough.

    DBBASIC_QUEUE=redis://127.0.0.1:6379/0      # or Queue('redis://127.0.0.1:6379/0')

Needs `pip install dbbasic-queue[rq]`; importing dbbasic_queue alone never imports rq.

How the API maps onto RQ:
- Each job is an RQ job calling dispatch(job_type, payload), on one RQ queue per job
  type ('dbbasic:send_email'), so a worker only takes the types it has handlers for.
- Job data, meta and results are stored with RQ's JSON serializer: no pickle of user data.
- run_at/delay -> RQ scheduling (rounded up to the second: never early);
  max_attempts and backoff -> rq Retry; timeout -> the same SIGALRM limit as the file
  backend; priority > 0 -> the front of its type's queue (RQ has no finer priorities).
- process_jobs(handlers) runs a SimpleWorker in burst mode: it drains what is due and
  returns, so cron workers keep working. `dbbasic-queue work --loop` runs a
  long-lived worker (run_worker) on as many machines as you like.
- Statuses: queued/scheduled/deferred -> pending, started -> processing,
  finished -> completed, failed -> failed, canceled/stopped -> cancelled.
- A worker that dies mid-job: its claim (RQ's started-job registry) lapses lease_seconds
  (default 60) after the worker's last heartbeat; the next process_jobs for that type
  then counts the crash as an attempt and retries (after the backoff) or fails the job.
  A running job's worker renews the claim every lease_seconds / 3, so a long job keeps it.
- Our workers run only our jobs: a job in a dbbasic: queue that calls anything but
  dispatch (anyone who can write to Redis can push one) is failed, never imported.
"""

import json
import logging
import math
import threading
import time
from collections import Counter
from datetime import datetime, timezone

from redis import Redis
from redis.exceptions import ResponseError, WatchError
from rq import Queue as RQQueue
from rq import Retry, SimpleWorker, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from . import rules, schedule
from .backend import Backend
from .errors import QueueError, StorageError
from .job import ACTIVE_STATUSES, Job, Status, new_job_id
from .lineformat import one_line
from .validate import result_json

log = logging.getLogger('dbbasic_queue')

QUEUE_PREFIX = 'dbbasic:'                  # RQ queue of a job type: dbbasic:<type>
TYPES_KEY = 'dbbasic_queue:types'          # every job type ever enqueued (for stats, list)
UNIQUE_KEY_PREFIX = 'dbbasic_queue:unique:'
PAUSED_KEY = 'dbbasic_queue:paused'        # the job types workers leave alone for now
SCHEDULE_KEY = 'dbbasic_queue:schedule'    # recurring jobs' state: entry name -> its line
UNIQUE_CLAIM_GRACE_SECONDS = 60            # a unique key set, its job not yet saved
KEEP_FOREVER = -1                          # results and failures stay until purge
LEASE_SECONDS = 60                         # a dead worker's job is recovered this long after
HEARTBEATS_PER_LEASE = 3                   # ... its last heartbeat; renewed 3 times a lease
COMMAND_POLL_SECONDS = 1                   # a long-running worker's wait for RQ commands
DISPATCH = 'dbbasic_queue.rq_backend.dispatch'
STATUSES = {
    JobStatus.QUEUED: Status.PENDING, JobStatus.SCHEDULED: Status.PENDING,
    JobStatus.DEFERRED: Status.PENDING, JobStatus.STARTED: Status.PROCESSING,
    JobStatus.FINISHED: Status.COMPLETED, JobStatus.FAILED: Status.FAILED,
    JobStatus.CANCELED: Status.CANCELLED, JobStatus.STOPPED: Status.CANCELLED,
}

# What the worker of this process runs with: set by process_jobs, read by dispatch.
_current = threading.local()


class AttemptFailed(Exception):
    """Raised by dispatch after a failed attempt, so that RQ records it: retried or failed."""


def dispatch(job_type, payload):
    """The function every RQ job of ours runs: the handler process_jobs gave for job_type,
    by the rules of rules.py (the same as the file's)."""
    run = _current.run
    job = get_current_job()
    attempts = job.meta.get('attempts', 0) + 1
    max_attempts = job.meta.get('max_attempts') or run['max_attempts']
    job.meta['attempts'] = attempts
    job.save_meta()
    # process_jobs' max_attempts holds for jobs enqueued without their own.
    job.retries_left = rules.retries_left(attempts, max_attempts)
    job.retry_intervals = [math.ceil(rules.backoff_seconds(run['backoff_base'], attempts))] * max(
        job.retries_left, 1)
    handler = run['handlers'][job_type]
    started = time.perf_counter()
    result, error, exc = rules.attempt(lambda: handler(payload),
                                  job.meta.get('timeout') or run['timeout'],
                                  (job.id, job_type, attempts, max_attempts))
    if error or job.meta.get('error'):
        # Our one-line error, as the file has it; RQ keeps the whole traceback beside it.
        job.meta['error'] = one_line(error)
        job.save_meta()
    word = rules.attempt_word(error, attempts, max_attempts)
    run['summary'][word] += 1
    rules.log_outcome(job.id, job_type, word, time.perf_counter() - started, attempts,
                      max_attempts)
    if error:
        rules.report_failure(run['on_failure'], Job(
            job.id, job_type, json.dumps(payload, ensure_ascii=False),
            Status.PENDING if job.retries_left else Status.FAILED, job.meta.get('created_at', 0),
            job.meta.get('run_at') or 0.0, attempts, one_line(error)), exc)
        raise AttemptFailed(error)
    return json.loads(result_json(result, job.id, job_type))


class RedisBackend(Backend):
    """The Backend contract on RQ; Queue('redis://...') owns one of these."""

    kind = 'rq'
    long_running_worker = True

    def __init__(self, url, *, clock, backoff_base_seconds, lease_seconds=None, durable=False):
        """lease_seconds: how long after a worker's last heartbeat its job is recovered
        (default LEASE_SECONDS). durable: each add waits until the server's append-only
        file holds it (WAITAOF)."""
        self.url = self.path = url
        self.redis = Redis.from_url(url)
        self.clock = clock
        self.backoff_base_seconds = backoff_base_seconds
        self.lease_seconds = LEASE_SECONDS if lease_seconds is None else lease_seconds
        self.durable = durable
        self._valid_types = set()
        self._reported_problems = set()

    def _rq(self, job_type):
        return RQQueue(QUEUE_PREFIX + job_type, connection=self.redis, serializer=JSONSerializer)

    def _types(self):
        return sorted(t.decode() for t in self.redis.smembers(TYPES_KEY))

    # -- add, find, cancel ---------------------------------------------------------------
    def add(self, job_type, payload, payload_text, now, run_at, options, *, job_id=None,
            attempts=0, error=''):
        """job_id, attempts and error are for migrate: a job keeps its id and history."""
        job_id, stage = self._staged(job_type, payload, now, run_at, options, job_id, attempts,
                                     error)

        def save():
            # One MULTI/EXEC: the job exists in Redis only together with its place in line.
            with self.redis.pipeline() as pipe:
                stage(pipe)
                pipe.execute()
            self._wait_for_disk()

        if not (options and options['unique_key']):
            save()
            return job_id
        return self._enqueue_unique(options['unique_key'], job_id, save)

    def add_many(self, chunks):
        """One MULTI/EXEC per chunk; a job with a unique_key is added alone, by add."""
        ids = []
        for chunk in list(chunks):   # every chunk checked before the first is written
            chunk_ids, alone = [], []
            with self.redis.pipeline() as pipe:
                for new_job in chunk:
                    job_type, payload, _, now, run_at, options = new_job
                    if options and options['unique_key']:
                        chunk_ids.append(None)   # after the chunk, in order
                        alone.append(new_job)
                        continue
                    job_id, stage = self._staged(job_type, payload, now, run_at, options)
                    stage(pipe)
                    chunk_ids.append(job_id)
                pipe.execute()
            added_alone = (self.add(*new_job) for new_job in alone)
            ids += [job_id or next(added_alone) for job_id in chunk_ids]
        self._wait_for_disk()
        return ids

    def _wait_for_disk(self):
        """In durable mode, return once the server's append-only file has fsynced every
        write of this connection (Redis >= 7.2, Valkey)."""
        if not self.durable:
            return
        try:
            self.redis.execute_command('WAITAOF', 1, 0, 0)
        except ResponseError as exc:
            raise StorageError(f'durable enqueue needs a server with appendonly yes and '
                               f'WAITAOF (Redis >= 7.2, Valkey): the server at {self.url} '
                               f'said: {exc}') from exc

    def _staged(self, job_type, payload, now, run_at, options, job_id=None, attempts=0,
                error=''):
        """(the new job's id, stage(pipeline): queue the commands that store it)."""
        options = options or {'priority': 0, 'unique_key': '', 'timeout': 0.0, 'max_attempts': 0}
        run_at = now if run_at is None else run_at
        job_id = job_id or new_job_id()
        limit = options['max_attempts'] or rules.MAX_ATTEMPTS
        retries = max(0, limit - attempts - 1)
        rq_queue = self._rq(job_type)
        interval = math.ceil(rules.backoff_seconds(self.backoff_base_seconds, attempts + 1))
        job = rq_queue.create_job(
            DISPATCH, args=(job_type, payload), job_id=job_id, timeout=KEEP_FOREVER,
            result_ttl=KEEP_FOREVER, failure_ttl=KEEP_FOREVER,
            retry=Retry(max=retries, interval=interval) if retries else None,
            meta={'attempts': attempts, 'created_at': int(now), 'run_at': run_at,
                  'error': error, **options})

        def stage(pipe):
            if run_at > now:
                when = datetime.fromtimestamp(math.ceil(run_at), timezone.utc)
                rq_queue.schedule_job(job, when, pipeline=pipe)
            else:
                rq_queue.enqueue_job(job, pipeline=pipe, at_front=options['priority'] > 0)
            pipe.sadd(TYPES_KEY, job_type)
        return job_id, stage

    def _enqueue_unique(self, unique_key, job_id, save):
        key = UNIQUE_KEY_PREFIX + unique_key
        while True:
            if self.redis.set(key, f'{job_id} {time.time()}', nx=True):
                save()
                return job_id
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    value = pipe.get(key)
                    if value is None:
                        continue
                    holder, since = value.decode().split()
                    job = self.find(holder)
                    if job is None and time.time() - float(since) < UNIQUE_CLAIM_GRACE_SECONDS:
                        return holder  # its enqueue is saving it right now
                    if job is not None and job.status in ACTIVE_STATUSES:
                        return holder
                    pipe.multi()
                    pipe.delete(key)  # the holder finished: the key is free
                    pipe.execute()
                except WatchError:
                    continue

    def cancel(self, job_id):
        rq_job = self._fetch(job_id)
        if rq_job is None:
            return False
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(rq_job.key)
                if STATUSES.get(rq_job.get_status(refresh=True)) is not Status.PENDING:
                    return False
                pipe.multi()  # rq's cancel buffers into our transaction: all or nothing
                rq_job.cancel(pipeline=pipe)
                pipe.execute()
            except WatchError:
                return False  # a worker took it meanwhile
        return True

    def cancel_pending(self, job_type):
        """Each pending job (of job_type) by cancel: atomically, one at a time."""
        return [job.id for job in self.jobs() if job.status is Status.PENDING
                and (job_type is None or job.type == job_type) and self.cancel(job.id)]

    def paused_types(self):
        return frozenset(t.decode() for t in self.redis.smembers(PAUSED_KEY))

    def set_paused(self, job_type, paused):
        (self.redis.sadd if paused else self.redis.srem)(PAUSED_KEY, job_type)

    # -- recurring jobs ---------------------------------------------------------------
    def schedule_records(self):
        return self._records(self.redis.hgetall(SCHEDULE_KEY))

    def commit_schedule(self, decide):
        """WATCH the state hash, decide, then the jobs and the records in one MULTI/EXEC:
        another commit in between makes EXEC fail, and this one starts again."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(SCHEDULE_KEY)
                    changed, jobs = decide(self._records(pipe.hgetall(SCHEDULE_KEY)))
                    if not changed:
                        pipe.reset()
                        return []
                    pipe.multi()
                    now = self.clock()
                    for job_id, job_type, payload, _ in jobs:
                        self._staged(job_type, payload, now, None, None, job_id)[1](pipe)
                    pipe.hset(SCHEDULE_KEY, mapping={
                        name: schedule.format_record(record) for name, record in changed.items()})
                    pipe.execute()
                    break
                except WatchError:
                    continue
        self._wait_for_disk()
        return [job[0] for job in jobs]

    def _records(self, stored):
        records, bad = _parsed_records(stored)
        for problem in bad:
            if problem not in self._reported_problems:
                self._reported_problems.add(problem)
                log.warning('%s: ignored', problem)
        return records

    def work(self, handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure=None):
        """An RQ worker in burst mode: it drains what is due and returns (cron keeps working)."""
        return self._work(handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure,
                          burst=True)

    def work_forever(self, handlers, max_attempts, timeout, max_jobs, max_seconds,
                     on_failure=None):
        """A long-lived RQ worker (with its scheduler) for these types, until stopped."""
        return self._work(handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure,
                          burst=False)

    def _work(self, handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure, burst):
        summary = Counter()
        handlers = rules.unpaused(handlers, self.paused_types())
        if not handlers or max_jobs == 0:
            return summary   # an RQ worker with no queues would listen to the default one
        _current.run = {'handlers': dict(handlers), 'max_attempts': max_attempts,
                        'timeout': timeout, 'backoff_base': self.backoff_base_seconds,
                        'summary': summary, 'on_failure': on_failure}
        worker = _Worker([self._rq(t) for t in handlers], connection=self.redis,
                         serializer=JSONSerializer)
        worker.lease_seconds = max(1, math.ceil(self.lease_seconds))
        worker.takes_commands = not burst
        if max_seconds is not None:
            worker.deadline = time.monotonic() + max_seconds
        try:
            worker.work(burst=burst, with_scheduler=True, max_jobs=max_jobs,
                        logging_level='WARNING')
        finally:
            del _current.run
        return summary

    # -- inspection --------------------------------------------------------------------
    def _fetch(self, job_id):
        if not isinstance(job_id, str) or not job_id:
            return None
        try:
            job = RQJob.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        return job if job.func_name == DISPATCH else None

    def find(self, job_id):
        """The Job (every field the file has) with this id, or None."""
        rq_job = self._fetch(job_id)
        return None if rq_job is None else self._as_job(rq_job)

    def _as_job(self, rq_job):
        job_type, payload = rq_job.args
        meta = rq_job.meta
        status = STATUSES.get(rq_job.get_status(refresh=False), Status.PENDING)
        latest = rq_job.latest_result()
        error, result_json = meta.get('error', ''), ''
        if latest is not None and latest.type == Result.Type.FAILED:
            error = error or one_line(_last_line(latest.exc_string or ''))
        elif latest is not None and latest.type == Result.Type.SUCCESSFUL:
            error, result_json = '', json.dumps(latest.return_value, ensure_ascii=False)
        run_at = meta.get('run_at') or 0.0
        if rq_job.get_status(refresh=False) == JobStatus.SCHEDULED:
            registry = self._rq(job_type).scheduled_job_registry
            run_at = registry.get_scheduled_time(rq_job).timestamp()
        return Job(rq_job.id, job_type, json.dumps(payload, ensure_ascii=False), status,
                   meta.get('created_at', 0), run_at, meta.get('attempts', 0), error,
                   result_json, rq_job.worker_name or '',
                   rq_job.started_at.replace(tzinfo=timezone.utc).timestamp() if rq_job.started_at else 0.0,
                   rq_job.ended_at.replace(tzinfo=timezone.utc).timestamp() if rq_job.ended_at else 0.0,
                   meta.get('unique_key', ''), meta.get('timeout') or 0.0,
                   meta.get('max_attempts') or 0, meta.get('priority', 0))

    def _job_ids(self, job_type):
        rq_queue = self._rq(job_type)
        ids = list(rq_queue.job_ids)
        for registry in (rq_queue.scheduled_job_registry, rq_queue.deferred_job_registry,
                         rq_queue.started_job_registry, rq_queue.finished_job_registry,
                         rq_queue.failed_job_registry, rq_queue.canceled_job_registry):
            ids.extend(registry.get_job_ids())
        return list(dict.fromkeys(ids))

    def jobs(self):
        """Every job of every type, as Jobs."""
        found = []
        for job_type in self._types():
            for rq_job in RQJob.fetch_many(self._job_ids(job_type), connection=self.redis,
                                           serializer=JSONSerializer):
                if rq_job is not None and rq_job.func_name == DISPATCH:
                    found.append(self._as_job(rq_job))
        return found

    def workers(self):
        return sorted(w.name for w in SimpleWorker.all(connection=self.redis))

    def revive(self, job_id, job_type, now):
        if job_id is not None:
            job = self.find(job_id)
            if job is None or not rules.revivable(job):
                return [], job
            chosen = [job]
        else:
            chosen = [j for j in self.jobs() if rules.chosen_for_retry(j, None, job_type)]
        for job in chosen:
            rq_job = self._fetch(job.id)
            rq_job.meta.update(attempts=0, error='')
            rq_job.save_meta()
            rq_job.retries_left = None
            rq_job.delete(remove_from_queue=True)
            options = {'priority': job.priority, 'unique_key': '', 'timeout': job.timeout,
                       'max_attempts': job.max_attempts}
            self.add(job.type, job.payload, None, now, None, options, job_id=job.id)
        return [job.id for job in chosen], None

    def purge(self, choose, dry_run):
        purged = choose(self.jobs())
        if not dry_run:
            for job_id in purged:
                self._fetch(job_id).delete(remove_from_queue=True)
        return purged

    def check(self, now):
        """Jobs still 'started' by a worker whose heartbeat expired."""
        problems = []
        for job_type in self._types():
            registry = self._rq(job_type).started_job_registry
            for job_id in registry.get_expired_job_ids():
                problems.append(f'job {job_id} ({job_type}) is started by a worker that stopped '
                                f'answering; RQ fails or retries it at its next maintenance')
        return problems + _parsed_records(self.redis.hgetall(SCHEDULE_KEY))[1]


def _parsed_records(stored):
    """(records by name, problems) of the schedule state hash's fields."""
    records, bad = {}, []
    for name, line in stored.items():
        try:
            record = schedule.parse_record(line.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            bad.append(f'{SCHEDULE_KEY} {name.decode(errors="replace")!r}: not an entry\'s '
                       f'state: {exc}')
            continue
        records[record.name] = record
    return records, bad


class _Worker(SimpleWorker):
    """RQ's in-process worker, with four rules of ours: it runs only dispatch() jobs;
    its claim on a running job lasts lease_seconds past its last heartbeat, renewed from a
    thread while the handler runs (RQ's SimpleWorker would hold it 7 minutes, or forever);
    it takes no job after its deadline (max_seconds), nor waits for one past it; and its
    exit never waits on RQ's command channel: a burst run (process_jobs) listens to none,
    a long-running one polls it every COMMAND_POLL_SECONDS."""

    lease_seconds = LEASE_SECONDS
    deadline = None         # time.monotonic() after which it stops; None: no limit
    takes_commands = False  # whether it listens to RQ's commands (send_shutdown_command)

    def subscribe(self):
        # RQ's listener blocks 60 s in a read that holds the channel, and its teardown
        # joins it with no bound: a burst run's exit hung up to 60 s (rq issue 1613).
        if not self.takes_commands:
            return
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=COMMAND_POLL_SECONDS, daemon=True,
            exception_handler=self._pubsub_exception_handler)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        # Not RQ's request_stop from a timer: it sets signal handlers, which only the main
        # thread may. A dequeue past the deadline returns None, which ends work().
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return None
            max_idle_time = min(max_idle_time or math.inf, max(1, math.ceil(left)))
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def get_heartbeat_ttl(self, job, working_time=0.0):
        return self.lease_seconds

    def perform_job(self, job, queue, execution):
        if job.func_name != DISPATCH:
            error = (f'refused: this job calls {job.func_name!r}, and dbbasic-queue workers '
                     f'only run {DISPATCH} (anyone who can write to Redis could push it)')
            log.error('job %s in %s: %s', job.id, queue.name, error)
            job.retries_left = 0
            self.handle_job_failure(job, queue, exc_string=error, execution=execution)
            return False
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), daemon=True)
        beat.start()
        try:
            return super().perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()

    def _beat(self, job, execution, stop):
        while not stop.wait(self.lease_seconds / HEARTBEATS_PER_LEASE):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception:
                log.exception('heartbeat of job %s failed; its claim may lapse', job.id)


def _last_line(traceback_text):
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ''


def migrate(source, target, dry_run=False, batch_size=500):
    """Move every pending and failed job of the file queue `source` into RQ `target`.

    Each job keeps its id, type, payload, run_at, attempts and error. Safe to run twice
    and to interrupt: a job RQ already has is not created again, and a file row is marked
    'migrated' (never deleted) only after RQ has its job. Returns the moved Jobs.
    """
    jobs = [job for job in source.jobs() if job.status in (Status.PENDING, Status.FAILED)]
    if dry_run:
        return jobs
    source.backend.record_migration(str(target.path))
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        for job in batch:
            if target.find_job(job.id) is None:
                _copy(job, target.backend)
        source.mark_migrated({job.id for job in batch})
    return jobs


def migrate_schedule(source, target, dry_run=False):
    """Copy the file queue's recurring-job state into RQ `target`, where each entry goes
    on from its last slot; returns the copied Records. A record a killed worker left in
    flight is settled first (not in a dry run, which writes nothing)."""
    if not dry_run:
        source.backend.commit_schedule(lambda records: ({}, []))
    records = source.schedule_records()
    if records and not dry_run:
        target.backend.commit_schedule(lambda current: (records, []))
    return list(records.values())


def _copy(job, target):
    if job.status is Status.PENDING:
        options = {'priority': job.priority, 'unique_key': '',   # the key stays in meta only
                   'timeout': job.timeout, 'max_attempts': job.max_attempts}
        target.add(job.type, job.payload, None, target.clock(), job.run_at, options,
                   job_id=job.id, attempts=job.attempts, error=job.error)
        return
    # A failed job goes straight into RQ's failed registry, atomically.
    rq_queue = target._rq(job.type)
    rq_job = rq_queue.create_job(
        DISPATCH, args=(job.type, job.payload), job_id=job.id, timeout=KEEP_FOREVER,
        result_ttl=KEEP_FOREVER, failure_ttl=KEEP_FOREVER, status=JobStatus.FAILED,
        meta={'attempts': job.attempts, 'created_at': job.created_at, 'run_at': job.run_at,
              'error': job.error, 'max_attempts': job.max_attempts, 'timeout': job.timeout,
              'priority': job.priority, 'unique_key': job.unique_key})
    rq_job.origin = rq_queue.name
    with target.redis.pipeline() as pipe:
        pipe.sadd(TYPES_KEY, job.type)
        rq_job.save(pipeline=pipe)
        rq_queue.failed_job_registry.add(rq_job, ttl=KEEP_FOREVER, exc_string=job.error,
                                         pipeline=pipe)
        pipe.execute()


def raise_if_unavailable(url):
    """Fail fast with one clear QueueError when Redis at url does not answer."""
    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        raise QueueError(f'cannot reach Redis at {url}: {exc}') from None
