"""The rules of an attempt, the same on every backend: how a handler is run and what its
outcome is, the backoff after a failure, what a crash costs, what a run returns. Both
backends call these. One rule RQ cannot follow: it sees a crashed worker only as a claim
that lapsed, and retries that job as a failure, after the backoff (rq_backend.py); the
file runs it again at once (after_crash)."""

import concurrent.futures
import inspect
import logging
import random
import types

from .errors import JobTimedOut, error_text, safe_repr
from .job import Status
from .signals import time_limit

log = logging.getLogger('dbbasic_queue')

MAX_ATTEMPTS = 3                # process_jobs' default for jobs enqueued without their own
BACKOFF_BASE_SECONDS = 60       # 1.0.0's base: retry n waits base * 2**n
BACKOFF_CAP_SECONDS = 3600
BACKOFF_JITTER_FRACTION = 0.25  # up to +25 %, so failed jobs do not retry in lockstep
WORKER_LOST = 'WorkerLost'      # the error of an attempt its worker did not survive
OUTCOMES = ('completed', 'retried', 'failed', 'recovered')
# What a handler returns when it was called but its work was not done (awaitables too).
NOT_DONE_TYPES = (types.GeneratorType, types.AsyncGeneratorType, concurrent.futures.Future)
PLAIN_RESULT_TYPES = frozenset({type(None), bool, int, float, str, dict, list, tuple})


def attempt(call, timeout, described, interrupted=None):
    """Run call() (a handler given its payload) once, within timeout seconds (None: no
    limit). Returns (its result, '', None) or (None, the error text, the exception).

    Any exception the handler raises, SystemExit and KeyboardInterrupt included, is a
    failed attempt: logged with its traceback, returned as 'Type: message' (error_text:
    even an exception whose str() raises); a timeout is a TimeoutError. A result that
    stands for work not done (a generator, a coroutine, an awaitable, a Future) is a
    failed attempt too, never a completion. Only an interruption of the worker itself
    (interrupted() true: a second Ctrl-C) propagates. described is (job id, type,
    attempt, max_attempts), for the log, formatted only when the attempt fails.
    """
    try:
        if not timeout:   # no timer to set: the common case, kept cheap
            result = call()
        else:
            with time_limit(timeout):
                result = call()
        if type(result) not in PLAIN_RESULT_TYPES and (
                isinstance(result, NOT_DONE_TYPES) or inspect.isawaitable(result)):
            raise TypeError(not_done_error(result))
        return result, '', None
    except JobTimedOut:
        exc = TimeoutError(f'job ran longer than its timeout of {timeout:g} s')
        error = f'TimeoutError: {exc}'
        log.error('job %s (%s) failed on attempt %d of %d: %s', *described, error)
        return None, error, exc
    except BaseException as exc:
        if interrupted is not None and interrupted():
            raise
        log.exception('job %s (%s) failed on attempt %d of %d', *described)
        return None, error_text(exc), exc


def not_done_error(result):
    """The error of an attempt whose handler returned work not done (result), which is
    closed so that no 'never awaited' warning follows."""
    if inspect.iscoroutine(result) or inspect.isgenerator(result):
        result.close()
    kind = ('a generator' if inspect.isgenerator(result)
            else 'an async generator' if inspect.isasyncgen(result)
            else 'a coroutine' if inspect.iscoroutine(result)
            else 'a Future' if isinstance(result, concurrent.futures.Future)
            else 'an awaitable')
    return (f'handler returned {kind}: {safe_repr(result, 200)} (its work never ran; '
            f'a handler must do the work and return its result)')


def report_failure(on_failure, job, exc):
    """Give a failed attempt to the user's on_failure(job dict, exception) hook (where
    Sentry or an alert plugs in). The job is as the attempt left it: 'pending' when it
    will be retried, 'failed' when not. The hook's own errors are logged, never raised:
    they must not break the run."""
    if on_failure is None:
        return
    try:
        on_failure(job.to_dict(), exc)
    except Exception:
        log.exception('the on_failure hook raised for job %s (%s)', job.id, job.type)


def backoff_seconds(base_seconds, attempts):
    """Delay before retry number `attempts`: base * 2**attempts, up to +25 % jitter, capped."""
    delay = base_seconds * 2 ** attempts
    delay += random.uniform(0, delay * BACKOFF_JITTER_FRACTION)
    return min(delay, BACKOFF_CAP_SECONDS)


def after_failure(job, attempts, error, max_attempts, now, backoff_base_seconds,
                  retry_at=None):
    """The job after a failed attempt: pending again after the backoff (or at retry_at),
    or failed once max_attempts are spent."""
    if not retries_left(attempts, max_attempts):
        return job.evolve(status=Status.FAILED, attempts=attempts, error=error, finished_at=now)
    if retry_at is None:
        retry_at = now + backoff_seconds(backoff_base_seconds, attempts)
    return job.evolve(status=Status.PENDING, attempts=attempts, error=error, run_at=retry_at,
                      worker='', claimed_at=0.0)


def retries_left(attempts, max_attempts):
    """How many more attempts a job that failed its attempts-th may have."""
    return max(0, max_attempts - attempts)


def attempt_word(error, attempts, max_attempts):
    """How a run counts an attempt (rules.OUTCOMES): completed, retried, or failed."""
    if not error:
        return 'completed'
    return 'retried' if retries_left(attempts, max_attempts) else 'failed'


def unpaused(handlers, paused):
    """The handlers a run uses: all but those of paused job types, whose jobs stay pending."""
    return {t: h for t, h in handlers.items() if t not in paused} if paused else handlers


def cancelled(job, now):
    """The job as a user's cancel leaves it (one job, or all pending ones at once)."""
    return job.evolve(status=Status.CANCELLED, error='Cancelled by user', finished_at=now)


def crash_error(worker):
    return f'{WORKER_LOST}: worker {worker or "of dbbasic-queue 1.0.0"} died running this job'


def after_crash(job, max_attempts, now):
    """The job its worker died running: the crash is an attempt, but not the handler's
    failure, so no backoff: it stays due and runs again at the next run."""
    error = crash_error(job.worker)
    log.warning('job %s (%s): %s', job.id, job.type, error)
    return after_failure(job, job.attempts + 1, error, max_attempts, now, 0, retry_at=job.run_at)


def killed_a_worker(job):
    """A job whose last attempt killed its worker: run it only once what finished before
    it is recorded, so a second crash costs no one else."""
    return job.error.startswith(WORKER_LOST)


def chosen_for_retry(job, job_id, job_type):
    """retry(job_id) takes that job; retry(failed=True) every failed one (of job_type)."""
    if job_id is not None:
        return job.id == job_id
    return job.status is Status.FAILED and (job_type is None or job.type == job_type)


def revivable(job):
    return job.status in (Status.FAILED, Status.CANCELLED)


def revived(job, now):
    """A failed or cancelled job made pending again, due now, with fresh attempts."""
    return job.evolve(status=Status.PENDING, attempts=0, run_at=now, worker='',
                      claimed_at=0.0, finished_at=0.0)


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


def log_outcome(job_id, job_type, word, seconds, attempts, max_attempts):
    log.info('%s %s %s %.3fs attempt %d/%d', job_id, job_type, word, seconds, attempts,
             max_attempts)


def outcome_counts(counter):
    """What process_jobs returns, on either backend: the four outcomes, zeros included."""
    return {name: counter[name] for name in OUTCOMES}

