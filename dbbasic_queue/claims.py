"""The file backend's claim cycle: how a worker takes due jobs, runs them and writes their
outcomes back, and how it recovers the jobs of workers that died.

One rewrite of the hot file does all the bookkeeping at once: it writes back the last
batch's outcomes, gives back claims not started, recovers dead workers' jobs, archives
finished rows, and claims the next batch (a batch too big to share a rewrite's memory
with the next is recorded by a rewrite of its own first). Between rewrites, finished
jobs are appended to the archive; the worker's journal names the job whose handler is
running. Batches are sized by the time measured per job; a batch that runs past twice
its planned time gives back what it has not started (BatchSizer). Finished jobs wait in
an ArchiveBuffer until appended.
"""

import heapq
import operator
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from . import liveness, rules
from .job import FINAL_STATUSES, Status
from .lineformat import (PENDING, PROCESSING, Claim, LineEntry, claim_of_line, completed_line,
                         format_line, format_time, parse_line, quote_field)
from .signals import deferred_signals
from .journal import WorkerJournal
from .validate import result_json

MIN_BATCH_SECONDS = 0.05        # a batch holds at least this much measured work ...
REWRITE_SHARE = 0.1             # ... or enough that rewrites are <= 10 % of the time
BATCH_GROWTH = 64
BATCH_OVERRUN = 2               # a batch running past twice its planned time gives back
                                # the jobs it has not started: slower jobs than learned
MAX_BATCH_JOBS = 1_200          # bounds a worker's memory, ~0.8 KB a line a rewrite
                                # changes (two batches: it records one, claims one) ...
FILE_BYTES_PER_BATCH_JOB = 8_000    # ... in a big file, a job per 8 KB of it ...
MAX_BIG_BATCH_JOBS = 20_000     # ... up to this, which is also the most lines a rewrite
                                # changes: a batch this big is recorded on its own
CLAIM_WAIT_SECONDS = 0.05       # a due job waits at most this long for a busy worker
ARCHIVE_FLUSH_SECONDS = 0.05    # finished jobs reach the archive at least this often


@dataclass
class Plan:
    """What one rewrite of the hot file does to lines, by their start (a byte offset in
    the version read): replace them by a Job or a line of text, or drop them (None)."""
    changes: dict = field(default_factory=dict)
    archive: list = field(default_factory=list)       # Jobs to append to the archive first
    claimed: dict = field(default_factory=dict)       # id -> line, this rewrite's claims
    gone_workers: list = field(default_factory=list)  # dead workers: journals to remove


@dataclass
class Run:
    """The rules' side of one process_jobs call: what it may run and what it did."""
    handlers: dict
    max_attempts: int
    timeout: object
    worker: str
    on_failure: object = None                       # the user's hook, or None
    jobs_left: object = None                        # None = no limit
    deadline: object = None                         # time.monotonic() value, or None
    stop_requested: bool = False
    interrupting: bool = False                      # a second SIGINT is stopping the job
    signals: list = field(default_factory=list)     # deferred until the run is tidy
    summary: Counter = field(default_factory=Counter)

    def is_interrupting(self):
        return self.interrupting


def joiner_waits(others_working, due_count, wanted, earliest_due, now):
    """The joining rule. A worker that has not worked yet, while another live worker
    works, leaves the due jobs to that worker's next rewrite (which it makes anyway, to
    record its batch) when there are fewer than it would claim (wanted), until the
    earliest of them has waited CLAIM_WAIT_SECONDS: a rewrite made only to claim a few is
    one the other's would have made unneeded."""
    return others_working and due_count < wanted and now - earliest_due < CLAIM_WAIT_SECONDS


class BatchSizer:
    """How many jobs one claim takes. Learned per set of job types from the time measured
    per job, so that rewrites stay <= REWRITE_SHARE of the time; bounded for memory, more
    in a big file (each of whose rewrites copies all of it). The size learned is kept in
    the index's summary file, so the next process (a cron run) starts from it, not 1."""

    def __init__(self, index):
        self.index = index

    def first(self, types, jobs_left):
        """The size learned for these job types (1 if none), within the bounds of now."""
        size = min(self.index.batch_sizes.get(types, 1), self.max_jobs())
        return size if jobs_left is None else min(size, jobs_left)

    def learned(self, types, size):
        self.index.batch_sizes[types] = size

    def max_jobs(self):
        """The most jobs a batch may hold: more in a big file, whose every rewrite copies
        all of it, so that a bigger batch shares that cost out."""
        return min(MAX_BIG_BATCH_JOBS, self._file_batch_jobs())

    def max_lines_changed(self):
        """The most lines a rewrite may change: two batches (it records one and claims
        the next), but no more than MAX_BIG_BATCH_JOBS, for memory."""
        return min(MAX_BIG_BATCH_JOBS, 2 * self._file_batch_jobs())

    def _file_batch_jobs(self):
        return max(MAX_BATCH_JOBS, self.index.offset // FILE_BYTES_PER_BATCH_JOB)

    @staticmethod
    def planned_seconds(rewrite_seconds):
        """How long a batch claimed by a rewrite that took rewrite_seconds is meant to run."""
        return max(MIN_BATCH_SECONDS, rewrite_seconds / REWRITE_SHARE)

    def next_size(self, size, planned_seconds, ran, seconds):
        """The size of the next batch after one that ran `ran` jobs in `seconds`."""
        seconds_per_job = max(seconds / ran, 1e-6)
        return max(1, min(int(planned_seconds / seconds_per_job), size * BATCH_GROWTH,
                          self.max_jobs()))


class ArchiveBuffer:
    """The lines of finished jobs not yet appended to the archive. They are appended at
    least every ARCHIVE_FLUSH_SECONDS, before a job that once killed a worker runs, and,
    fsynced, before each rewrite that drops their hot lines: a job is never in neither
    file."""

    def __init__(self, archive):
        self.archive = archive
        self.lines = []
        self.unsynced = False              # appended since the last fsync
        self.flushed_at = time.perf_counter()

    def add(self, line):
        self.lines.append(line)

    def flush_due(self):
        return time.perf_counter() - self.flushed_at >= ARCHIVE_FLUSH_SECONDS

    def flush(self, fsync=False):
        """Append the lines (fsync: and make every line appended so far durable)."""
        if self.lines:
            self.archive.append_lines(self.lines, fsync=fsync)
            self.lines.clear()
            self.unsynced = not fsync
        elif fsync and self.unsynced:
            self.archive.append(b'', fsync=True)
            self.unsynced = False
        self.flushed_at = time.perf_counter()


@dataclass
class Batch:
    """The claim cycle's side of a run: claims, outcomes not yet written, the journal."""
    journal: object
    archive_buffer: ArchiveBuffer
    size: int = 1
    claimed: dict = field(default_factory=dict)         # id -> its line as claimed
    unstarted: deque = field(default_factory=deque)     # ids claimed, not started, in order
    outcomes: dict = field(default_factory=dict)        # id -> Job to write back, None = archived
    planned_seconds: float = 0.0   # how long the batch claimed is meant to run
    working: bool = False          # it has run jobs: its claims are not a joiner's


class ClaimCycle:
    """Claims, runs and records jobs of one file backend (see file_backend.py)."""

    def __init__(self, backend):
        self.backend = backend
        self.table, self.archive, self.index = backend.table, backend.archive, backend.index
        self.sizer = BatchSizer(self.index)

    def work(self, run):
        """Run due jobs until none is due or a limit is reached (see Backend.work)."""
        types = frozenset(run.handlers)
        if self._nothing_due(types, run, self.sizer.first(types, run.jobs_left)):
            return   # the idle poll: no signal handlers to swap, no journal, no pause read
        # Again: a fresh process's poll read the size the last worker left (summary file).
        first_size = self.sizer.first(types, run.jobs_left)
        run.handlers = rules.unpaused(run.handlers, self.backend.paused_types())
        if len(run.handlers) < len(types) and self._nothing_due(
                frozenset(run.handlers), run, first_size):
            return   # only paused types are due
        with deferred_signals(run):
            journal = WorkerJournal(self.backend.path, run.worker,
                                    self.backend.table.lock.mode())
            batch = Batch(journal, ArchiveBuffer(self.archive), first_size)
            try:
                while not run.stop_requested and run.jobs_left != 0:
                    if run.jobs_left is not None:
                        batch.size = min(batch.size, run.jobs_left)
                    if not self._claim_next(run, batch):
                        break
                    self._run_batch(run, batch)
                    # The next call, or the next process (it is saved in the summary file),
                    # starts at the size learned, not at 1.
                    self.sizer.learned(types, batch.size)
            finally:
                if batch.outcomes or batch.unstarted or batch.archive_buffer.lines:
                    self._write_back(run, batch)
                batch.journal.close()
            # Each rewrite left its index already; this one adds the lines a poll read
            # since (a no-op when there are none), for the next cron run.
            self.index.save_summary()

    def _claim_next(self, run, batch):
        """Record the last batch and claim the next one; returns how many were claimed.
        The lines a rewrite changes bound the memory it takes: a batch too big to be
        recorded in the rewrite that claims the next (in a big file) is recorded by a
        rewrite of its own. That costs what two batches half its size would, and a run
        that ends after it saves a rewrite (see BatchSizer.max_lines_changed)."""
        recording = len(batch.outcomes) + len(batch.unstarted)
        if recording and recording + batch.size > self.sizer.max_lines_changed():
            self._write_back(run, batch)
            recording = 0
        if not recording and self._nothing_due(frozenset(run.handlers), run,
                                               1 if batch.working else batch.size):
            return 0
        return self._rewrite(run, batch, claim=True)

    def _nothing_due(self, types, run, wanted):
        """Nothing to claim now, seen from the index of the file; called only when there
        is nothing to record. wanted: a joining worker's batch size (joiner_waits); 1 for
        a worker that works (nothing due at all)."""
        poll = self.index.poll(types, run.worker, self.backend.clock, self.backend.lease_seconds)
        if poll.finished or poll.dead_claims:
            return False
        return poll.now < poll.next_due or joiner_waits(
            poll.others_working, poll.due_count, wanted, poll.next_due, poll.now)

    def _write_back(self, run, batch):
        """Record the last batch and give back its claims not started, claiming nothing."""
        self._rewrite(run, batch, claim=False)

    def _rewrite(self, run, batch, claim):
        """One rewrite: record outcomes, release or recover claims, and (if claim) claim
        the next batch into batch.claimed. Returns how many were claimed."""
        started = time.perf_counter()
        plan = self.backend.rewrite_segments(
            lambda view, now: self._plan(run, batch, view, now, claim),
            before_rename=lambda: batch.archive_buffer.flush(fsync=True))
        batch.outcomes.clear()
        batch.claimed = plan.claimed if plan else {}
        batch.unstarted = deque(batch.claimed)
        batch.planned_seconds = self.sizer.planned_seconds(time.perf_counter() - started)
        return len(batch.claimed)

    def _plan(self, run, batch, view, now, claim):
        """The Plan of one rewrite, from the segments it needs (view: a scan.SegmentView):
        those holding this worker's claims (when it has outcomes to record), a dead
        worker's claims, or finished rows; then those that can hold the jobs to claim."""
        plan = Plan()
        alive = {run.worker: True}
        for worker, claimed_at in view.index.claims().items():
            if worker not in alive:
                alive[worker] = liveness.claim_is_alive(worker, claimed_at, now,
                                                        self.backend.lease_seconds)
        recording = bool(batch.outcomes or batch.unstarted)
        for segment in view.index.segments:
            if (segment.finished or (recording and run.worker in segment.claims)
                    or not all(alive[worker] for worker in segment.claims)):
                view.load(segment)
        mine, candidates, finished, dead = {}, [], [], {}
        handlers = run.handlers
        for start, line in view.lines.items():
            if line.entry is None:
                continue
            status, job_type, run_at, claim_of, _, _ = line.entry   # unpacked: the fastest read
            if status == PENDING:
                if claim and run_at <= now and job_type in handlers:
                    candidates.append(start)
            elif status == PROCESSING:
                worker = claim_of.worker
                if worker == run.worker:
                    mine[claim_of.job_id] = start
                    continue
                if worker not in alive:   # a claim the index did not name: a hand edit
                    alive[worker] = liveness.claim_is_alive(
                        worker, claim_of.claimed_at, now, self.backend.lease_seconds)
                if not alive[worker]:
                    dead.setdefault(worker, []).append(start)
            else:
                finished.append(start)
        candidates.extend(self._apply_outcomes(batch, mine, plan))
        self._archive_finished(finished, plan, view)
        for worker, starts in dead.items():
            candidates.extend(self._recover(run, worker, starts, plan, view, now))
        plan.gone_workers = list(dead) + WorkerJournal.idle_dead(self.backend.path, alive)
        if claim:
            # A rewrite made only to claim (this worker has not worked yet) while
            # another worker works is one the other's next rewrite may make unneeded.
            joining = not batch.working and any(alive[worker] for worker in alive
                                                if worker != run.worker)
            self._claim_due(run, batch, view, candidates, plan, now, joining)
        return plan if plan.changes or plan.archive else None

    def _claim_due(self, run, batch, view, candidates, plan, now, joining):
        """Claim up to batch.size due jobs: highest priority first, then earliest run_at,
        then file (enqueue) order.

        Segments are read in the order of the best job they can hold (scan.Segment.
        due_bound) until none left unread can beat the batch found: in a backlog of a
        million, a claim reads the few segments at its front.

        When joining another worker, a claim smaller than batch.size waits (joiner_waits).
        Once this worker works, it claims what is due in each of its rewrites."""
        lines, changes = view.lines, plan.changes

        def order(start):
            job = changes.get(start) or lines[start].entry
            return (-job.priority, job.run_at, start)
        due = self._read_due(run.handlers, batch.size, view, now, order, [
            start for start in candidates
            if order(start)[1] <= now and lines[start].entry.type in run.handlers])
        if joiner_waits(joining, len(due), batch.size,
                        min((order(start)[1] for start in due), default=now), now):
            return
        chosen = heapq.nsmallest(batch.size, due, key=order)
        claimed_text, worker_field = format_time(now), quote_field(run.worker)
        claimed_at = float(claimed_text)   # as the claimed lines hold it
        keeps_lines = view.index.keeps_lines()   # a small file: see SegmentView.known
        # Claimed lines are made a segment at a time (each read once), then taken in
        # claim order, the order the batch runs them in.
        made = {}   # start -> (job id, the claimed line)
        for start, text in view.texts([start for start in chosen if start not in changes]):
            # The line itself with three fields changed: nothing is reformatted.
            made[start] = claim_of_line(text, worker_field, claimed_text)
            if made[start] is None:
                job = view.job_of(text)
                made[start] = None if job is None else (job.id, self._claim_of(run, job, now))
        for start in chosen:
            job = changes.get(start)   # a retry or a recovered job, pending again
            found = made.pop(start, None) if job is None else (
                job.id, self._claim_of(run, job, now))
            # A line copied by a hand edit: one copy is claimed at a time.
            if found is not None and found[0] not in plan.claimed:
                changes[start] = plan.claimed[found[0]] = found[1]
                pending = lines[start].entry
                if keeps_lines and job is None and pending is not None:   # no reading it again
                    view.known[start] = LineEntry(
                        PROCESSING, pending.type, pending.run_at,
                        Claim(found[0], run.worker, claimed_at), pending.priority,
                        pending.created_at)

    @staticmethod
    def _claim_of(run, job, now):
        """The line of job as claimed by this run, formatted from the Job."""
        return format_line(job.evolve(status=Status.PROCESSING, worker=run.worker,
                                      claimed_at=now))

    @staticmethod
    def _read_due(handlers, size, view, now, order, due):
        """due, and the due lines of segments view has not read, read in the order of the
        best job each can hold, until none left can beat the size-th best found."""
        unread = []
        for segment in view.index.segments:
            bound = (segment.due_bound(handlers, now) if segment.start not in view.loaded
                     else None)
            if bound is not None:
                unread.append((bound, segment))
        unread.sort(key=operator.itemgetter(0))
        for bound, segment in unread:
            if len(due) >= size:
                due = heapq.nsmallest(size, due, key=order)   # the best, in order
                if order(due[-1]) < bound:
                    break
            due += [line.start for line in view.load(segment) if line.entry is not None
                    and line.entry.status == PENDING and line.entry.run_at <= now
                    and line.entry.type in handlers]
        return due

    def _apply_outcomes(self, batch, mine, plan):
        """Write back this run's outcomes and unstarted claims; returns the starts of the
        lines of jobs pending again (a retry may be due at once; a claim given back is due)."""
        pending = []
        for job_id, outcome in batch.outcomes.items():
            if job_id in mine:
                plan.changes[mine[job_id]] = outcome
                if outcome is not None:
                    pending.append(mine[job_id])
            else:
                rules.log.warning('job %s vanished from %s while this worker ran it', job_id,
                                  self.backend.path)
        for job_id in batch.unstarted:
            if job_id in mine:
                plan.changes[mine[job_id]] = parse_line(batch.claimed[job_id]).evolve(
                    status=Status.PENDING, worker='', claimed_at=0.0)
                pending.append(mine[job_id])
        return pending

    def _archive_finished(self, finished, plan, view):
        """Move finished rows (a cancel, a 1.0.0 file) to the archive, exactly once."""
        rows = [(start, job) for start, job in view.jobs(finished) if job]
        if not rows:
            return
        already = self.backend.archived_ids({job.id for _, job in rows})
        for start, job in rows:
            plan.changes[start] = None
            if job.id not in already:
                plan.archive.append(job)

    def _recover(self, run, worker, starts, plan, view, now):
        """Give back the jobs of one dead worker; returns the starts of the lines now
        pending.

        Its finished jobs are in the archive already: they are dropped here. Its journal
        names the job whose handler was running when it died: that one is charged an
        attempt (rules.after_crash). The others had not started, or their outcome was
        lost with the worker: they return to pending as they were. A worker of an older
        version kept no journal: the first claim in run order is charged, as it then was.
        """
        claims = [(i, job) for i, job in view.jobs(starts) if job]
        archived = self.backend.archived_ids({job.id for _, job in claims})
        unfinished = []
        for i, job in sorted(claims, key=lambda c: (-c[1].priority, c[1].run_at, c[0])):
            if job.id in archived:
                plan.changes[i] = None
            else:
                unfinished.append((i, job))
        running = WorkerJournal.running_job(self.backend.path, worker)
        pending = []
        for i, job in unfinished:
            if job.id == running or (running is None and i == unfinished[0][0]):
                outcome = rules.after_crash(job, job.max_attempts or run.max_attempts, now)
            else:
                outcome = job.evolve(status=Status.PENDING, worker='', claimed_at=0.0)
            if outcome.status is Status.FAILED:
                plan.changes[i] = None
                plan.archive.append(outcome)
                run.summary['failed'] += 1
            else:
                plan.changes[i] = outcome
                pending.append(i)
                run.summary['recovered'] += 1
        return pending

    def _run_batch(self, run, batch):
        started, ran = time.perf_counter(), 0
        overrun_at = started + BATCH_OVERRUN * batch.planned_seconds
        for line in batch.claimed.values():
            if run.deadline is not None and time.monotonic() >= run.deadline:
                run.stop_requested = True
            if run.stop_requested:
                break
            if ran and time.perf_counter() > overrun_at:
                break   # the next rewrite gives the rest back, for any worker to claim
            job = parse_line(line)
            batch.unstarted.popleft()
            if job.error and rules.killed_a_worker(job):
                batch.archive_buffer.flush()
            self._execute(run, batch, job, line)
            ran += 1
            if run.jobs_left is not None:
                run.jobs_left -= 1
            if batch.archive_buffer.flush_due():
                batch.archive_buffer.flush()
        if not batch.unstarted:
            batch.claimed = {}   # all ran: drop the lines before the next rewrite plans
        if ran:
            batch.working = True
            batch.size = self.sizer.next_size(batch.size, batch.planned_seconds, ran,
                                              time.perf_counter() - started)

    def _execute(self, run, batch, job, line):
        """Run one claimed job (line: as claimed) and record its outcome (finished jobs
        go to the archive)."""
        attempts = job.attempts + 1
        max_attempts = job.max_attempts or run.max_attempts
        started = time.perf_counter()
        batch.journal.starting(job.id)
        try:
            handler = run.handlers[job.type]
            result, error, exc = rules.attempt(lambda: handler(job.payload), job.timeout or run.timeout,
                                          (job.id, job.type, attempts, max_attempts),
                                          run.is_interrupting)
        except BaseException:
            batch.unstarted.appendleft(job.id)   # Ctrl-C twice: not the job's fault
            raise
        finally:
            batch.journal.finished()
        now = self.backend.clock()
        word = rules.attempt_word(error, attempts, max_attempts)
        if not error:
            batch.archive_buffer.add(
                self._completed_line(job, line, attempts,
                                     result_json(result, job.id, job.type), now))
            batch.outcomes[job.id] = None
        else:
            outcome = rules.after_failure(job, attempts, error, max_attempts, now,
                                          self.backend.backoff_base_seconds)
            rules.report_failure(run.on_failure, outcome, exc)
            if outcome.status in FINAL_STATUSES:
                batch.archive_buffer.add(format_line(outcome))
                batch.outcomes[job.id] = None
            else:
                batch.outcomes[job.id] = outcome
        run.summary[word] += 1
        rules.log_outcome(job.id, job.type, word, time.perf_counter() - started, attempts,
                          max_attempts)

    @staticmethod
    def _completed_line(job, line, attempts, result_text, now):
        """The archive line of job (claimed as line) completed: the line with the
        outcome's fields changed (job.completed_line), else formatted from the Job."""
        return completed_line(line, attempts, result_text, now) or format_line(job.evolve(
            status=Status.COMPLETED, attempts=attempts, error='', result_json=result_text,
            finished_at=now))
