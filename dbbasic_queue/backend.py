"""The contract between a Queue and where its jobs live.

Queue (queue.py) checks every argument; a backend is given only valid values and stores,
finds and works jobs. Two backends keep this contract: the file (file_backend.py, the
default) and RQ on Redis (rq_backend.py). Both pass the same behavioural tests
(tests/test_backends.py), and both follow rules.py for what an attempt does. Jobs cross
the contract as job.Job.

The default implementations below (job_totals, claimed_jobs, minute_counts, page_jobs)
compute from jobs(), every job read whole: they are the plain way, and the oracle that
every fast path of a backend is tested against (tests/test_scale.py, tests/test_web.py).
"""

from collections import Counter
from collections.abc import Callable
from typing import Any
from itertools import repeat

from .job import FINAL_STATUSES, Status
from .lineformat import as_stored, quote_field


class NewJobs:
    """Checked new jobs for add_many, as columns: job i is add's arguments
    (types[i], payloads[i], texts[i], created_at, run_ats[i], options[i]).

    Columns rather than a tuple per job: a hundred thousand tuples kept alive wake the
    garbage collector often enough to cost a sixth of enqueue_many's time.
    """

    def __init__(self, created_at, types=(), payloads=(), texts=(), run_ats=None,
                 options=None):
        self.created_at = created_at
        self.types, self.payloads, self.texts = list(types), list(payloads), list(texts)
        self.run_ats = [None] * len(self.types) if run_ats is None else list(run_ats)
        self.options = [None] * len(self.types) if options is None else list(options)

    def append(self, job_type, payload, text, run_at, options):
        for column, value in zip((self.types, self.payloads, self.texts, self.run_ats,
                                  self.options), (job_type, payload, text, run_at, options)):
            column.append(value)

    def __len__(self):
        return len(self.types)

    def __iter__(self):
        """add's arguments for each job, in order."""
        return zip(self.types, self.payloads, self.texts, repeat(self.created_at),
                   self.run_ats, self.options)



class Backend:
    """What a Queue needs from storage. Every method is called with checked arguments.
    What a backend's callers read of it is declared here, set by each backend."""

    #: 'file' or 'rq': the CLI's file-only commands (edit, migrate) check it.
    kind: str
    #: Where the jobs live: the queue file (a pathlib.Path), or the redis:// URL.
    path: Any
    #: () -> Unix seconds: the Queue's clock, for every time a backend stores.
    clock: Callable[[], float]
    #: Seconds a claim whose worker cannot be checked from here is trusted (liveness).
    lease_seconds: float
    #: The base of the backoff after a failure (rules.backoff_seconds).
    backoff_base_seconds: float
    #: True if work_forever() blocks on new jobs itself (RQ); False: poll process_jobs.
    long_running_worker = False

    def add(self, job_type, payload, payload_text, now, run_at, options):
        """Store a new pending job and return its id.

        payload_text is payload as the JSON to store. run_at None means due now. options
        is None (no options: the hot path) or the dict of validate.job_options. With a
        unique_key, an active job with that key is returned instead of adding one; the
        check and the add are atomic.
        """
        raise NotImplementedError

    def add_many(self, chunks):
        """Store the jobs of chunks (an iterator of NewJobs, each checked as it is made:
        a bad item raises from it) and return their ids in order, each chunk atomically.
        All or nothing: chunks is consumed whole before anything is written. A
        unique_key already active, or given earlier in chunks, gives that job's id."""
        raise NotImplementedError

    def find(self, job_id):
        """The Job with this id, wherever it is (pending to finished), or None."""
        raise NotImplementedError

    def cancel(self, job_id):
        """Mark a pending job cancelled, atomically; True if it was pending."""
        raise NotImplementedError

    def cancel_pending(self, job_type):
        """Cancel every pending job (of job_type, if not None); returns their ids."""
        raise NotImplementedError

    def paused_types(self):
        """The job types paused (workers leave their jobs pending), as a frozenset."""
        raise NotImplementedError

    def set_paused(self, job_type, paused):
        """Pause or resume one job type; kept in the storage, so it outlives processes."""
        raise NotImplementedError

    def schedule_records(self):
        """The recurring jobs' stored state: {entry name: schedule.Record}, read now."""
        raise NotImplementedError

    def commit_schedule(self, decide):
        """Atomically: read the records, call decide(records) -> (changed records by
        name, new jobs as (job_id, type, payload, payload_text), each due now), and store
        the jobs and the changed records together, so that a process killed at any instant
        leaves each recorded slot with exactly one job, and no job without its record (the
        next commit settles what a killed one left in flight). Returns the new jobs' ids."""
        raise NotImplementedError

    def work(self, handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure=None):
        """Run due jobs of these types until none is due or a limit is reached, by the
        rules of rules.py; return a Counter of outcomes (rules.OUTCOMES). Each job is
        claimed before its handler runs, so no two workers run one job at once. Types
        paused now are left alone (rules.unpaused). on_failure goes to
        rules.report_failure after each failed attempt."""
        raise NotImplementedError

    def jobs(self):
        """Every job, as Jobs, each once (a job found twice after a crash: its later state)."""
        raise NotImplementedError

    def job_totals(self):
        """What stats() counts, each job once as jobs() has it: ({(status word, type):
        jobs}, the oldest pending job's created_at, the earliest pending run_at), the
        last two None without pending jobs. (The file's fast way has one exception: a
        pending job also in the archive, as a retry cut short by a crash leaves it, which
        check reports, is counted in both files.)"""
        return totals_of((job.status.value, job.type, job.created_at, job.run_at)
                         for job in self.jobs())

    def workers(self):
        """The live workers, as their names: on the file those holding a claim; on RQ
        every worker registered now (RQ registers one while it runs, busy or idle)."""
        raise NotImplementedError

    def migrated_to(self):
        """Where `migrate` moved this queue (a redis:// URL), or None."""
        return None

    def claimed_jobs(self):
        """The jobs being processed now (claimed by a worker), as Jobs."""
        return [job for job in self.jobs() if job.status is Status.PROCESSING]

    def minute_counts(self):
        """What the history charts are drawn from, each job once as jobs() has it:
        (Counter of finished jobs by (status word, minute of finished_at), Counter of
        every job by minute of created_at); a minute is Unix seconds // 60."""
        finished, created = Counter(), Counter()
        for job in self.jobs():
            created[int(job.created_at) // 60] += 1
            if job.status in FINAL_STATUSES and job.finished_at:
                finished[job.status.value, int(job.finished_at) // 60] += 1
        return finished, created

    def page_jobs(self, status, job_type, text, offset, limit):
        """(how many jobs match, the Jobs limit of them from offset on): jobs of this
        status and type (None: any) whose payload or error holds text (None: any; ASCII
        letters in either case), pending and processing ones first, newest first, then
        finished ones, the last finished first. (The file's fast way lists the few
        finished rows still in its hot file, cancelled since the last run, before the
        archive's, each part newest first.)"""
        chosen = [job for job in self.jobs() if job_matches(job, status, job_type, text)]
        chosen.sort(key=lambda job: (job.status in FINAL_STATUSES, -(job.finished_at or 0),
                                     -job.created_at, -job.run_at))
        return len(chosen), chosen[offset:offset + limit]

    def revive(self, job_id, job_type, now):
        """Make failed (and cancelled, when asked by job_id) jobs pending with fresh
        attempts: one job_id, or every failed job (of job_type if given). Returns
        (revived ids, the Job of job_id as it was when it was not revivable, or None)."""
        raise NotImplementedError

    def purge(self, choose, dry_run):
        """Delete the finished jobs choose(finished Jobs) -> ids names; returns those ids.
        Jobs finishing meanwhile are kept."""
        raise NotImplementedError

    def check(self, now):
        """Problems found, one line each (empty: all is well)."""
        raise NotImplementedError

    def work_forever(self, handlers, max_attempts, timeout, max_jobs, max_seconds,
                     on_failure=None):
        """A long-running worker, for backends with long_running_worker."""
        raise NotImplementedError

    def mark_migrated(self, job_ids):
        """Mark these pending and failed jobs migrated (moved to another backend)."""
        raise NotImplementedError

    def read_for_edit(self):
        """The stored jobs as text a person may edit (file backend only)."""
        raise NotImplementedError

    def check_edit(self, text):
        """Problems in an edited text, with line numbers (file backend only)."""
        raise NotImplementedError

    def save_edit(self, original, edited):
        """Save an edit, merged with what changed meanwhile (file backend only)."""
        raise NotImplementedError


def totals_of(job_fields):
    """job_totals from (status word, type, created_at, run_at) of each job."""
    counts, oldest, earliest = Counter(), None, None
    for status, job_type, created_at, run_at in job_fields:
        counts[status, job_type] += 1
        if status == 'pending':
            oldest = created_at if oldest is None else min(oldest, created_at)
            earliest = run_at if earliest is None else min(earliest, run_at)
    return counts, oldest, earliest


def history_buckets(finished, created, this_minute, bucket_minutes, buckets):
    """Queue.history's series from Backend.minute_counts: `buckets` buckets of
    bucket_minutes each, the last one holding this_minute, oldest first."""
    first = this_minute - bucket_minutes * buckets + 1
    finished_in_minute, per_bucket = Counter(), Counter()
    for (status, minute), jobs in finished.items():
        finished_in_minute[minute] += jobs
        if status in ('completed', 'failed') and minute >= first:
            per_bucket[status, (minute - first) // bucket_minutes] += jobs
    depth = (sum(n for minute, n in created.items() if minute < first)
             - sum(n for minute, n in finished_in_minute.items() if minute < first))
    series = []
    for index in range(buckets):
        start = first + index * bucket_minutes
        for minute in range(start, start + bucket_minutes):
            depth += created.get(minute, 0) - finished_in_minute.get(minute, 0)
        series.append({'start': start * 60, 'completed': per_bucket['completed', index],
                       'failed': per_bucket['failed', index], 'depth': depth})
    return series


def job_matches(job, status, job_type, text):
    """page_jobs' filter: status and type equal (None: any), text (None: any) in the
    payload or the error, as stored (a '"' in JSON is stored as '""'), ASCII case ignored."""
    if (status is not None and job.status.value != status) or (
            job_type is not None and job.type != job_type):
        return False
    if not text:
        return True
    needle = ascii_lower(as_stored(text))
    return (needle in ascii_lower(quote_field(job.payload_json))
            or needle in ascii_lower(quote_field(job.error)))


def ascii_lower(text):
    """text with A-Z lowered and nothing else changed: bytes.lower(), for str."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord('A'), ord('Z') + 1)}
