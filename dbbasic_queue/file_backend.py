"""The file backend: a queue's jobs in data/queue.tsv (pending and processing, the hot
file) and data/queue.done.tsv (finished, the archive), both locked by data/queue.lock.

Its operations are here; the claim cycle that works jobs is claims.py, the speed
machinery scan.py, the files themselves storage.py, hand edits editing.py.
"""

import logging
import os
import threading
import time
from pathlib import Path

from . import editing, liveness, rules, schedule
from .backend import Backend
from .claims import ClaimCycle, Plan, Run
from .inspection import FileInspection
from .journal import WorkerJournal
from .job import ACTIVE_STATUSES, FINAL_STATUSES, Job, Status, new_job_id, new_job_ids
from .lineformat import (COLUMNS, DECODE_ERRORS, ENCODING, HEADER_BYTES, PENDING,
                         check_header, find_line, format_line, format_millis, format_new_line,
                         format_new_lines, format_time, id_of_line, ids_present, job_or_none,
                         jobs_with_key, line_bytes, line_of_job, quote_field)
from .scan import Index, SegmentView
from .storage import (GROUP_READ_WRITE, RETRY, Change, EditedInPlace, FileLock, SmallFile, TableFile,
                      TableSummary, WordsFile, abandoned_temp_files,
                      sharing_problems)
from .validate import JSON_ASCII, due_now_millis, payload_json

log = logging.getLogger('dbbasic_queue')
NORMALIZE = object()   # cancel's answer when the file must be rewritten whole first

DENSE_TEXT_SHARE = 0.1     # a text on more lines than this: match every line, not each hit


class FileBackend(Backend):
    """Jobs in two TSV files; see the module docstring and Backend for the contract."""

    kind = 'file'

    def __init__(self, path, *, clock, backoff_base_seconds, lease_seconds, file_mode,
                 durable=False):
        self.path = Path(path)
        self.clock = clock
        self.backoff_base_seconds = backoff_base_seconds
        self.lease_seconds = lease_seconds
        self.file_mode = file_mode
        self.durable = durable     # fsync each enqueue (each enqueue_many) before returning
        lock = FileLock(self.path.with_suffix('.lock'), file_mode)
        # One rewrite lock for both tables: rewrites are rare beside appends.
        rewrite_lock = FileLock(self.path.with_suffix('.rewrite.lock'), file_mode, like=lock)
        self.table = TableFile(self.path, COLUMNS, lock, rewrite_lock)
        self.archive = TableFile(self.path.with_name(self.path.stem + '.done.tsv'), COLUMNS,
                                 lock, rewrite_lock)
        self.index = Index(self.table)
        self.paused = WordsFile(self.path.with_suffix('.paused'), lock)
        self.schedule_state = schedule.StateFile(
            SmallFile(self.path.with_name(self.path.stem + '.schedule.tsv'), lock))
        self.migration = SmallFile(self.path.with_suffix('.migrated'), lock)   # migrate's URL
        self._migration_reported = False
        self.inspection = FileInspection(self.table, self.archive)   # stats, charts, pages
        self.state_lock = threading.RLock()   # one rewrite at a time in this process
        self._header_current = False

    # -- add, find, cancel --------------------------------------------------------------
    def add(self, job_type, payload, payload_text, now, run_at, options):
        """One locked append; with a unique_key, one read of the hot file under the lock.
        This backend's first add reads the file's header (to upgrade a 1.0.0 file)."""
        job_id = new_job_id()
        data = new_line_bytes(job_id, job_type, payload, payload_text, now, run_at, options)
        if not self._header_current:
            self._upgrade_header()
        unique_key = options and options['unique_key']
        if not unique_key:
            self.table.append(data, fsync=self.durable)
            return job_id
        with self.table.lock:
            existing = self._active_job_with_key(unique_key, self.table.read_bytes())
            if existing is not None:
                return existing
            self.table.append(data, fsync=self.durable)
        return job_id

    def add_many(self, chunks):
        """Every line is made before the first is written, and only the encoded lines
        of a chunk are kept (and its lines as str, where it has unique_keys); then one
        locked append per chunk (with unique_keys in it, after one read of the hot file
        under the lock)."""
        chunks = [new_lines(chunk) for chunk in chunks]
        if not self._header_current:
            self._upgrade_header()
        ids, holders = [], {}   # unique_key -> the id of its job, seen in this call
        chunks.reverse()
        while chunks:   # each chunk's bytes let go once written
            chunk_ids, keys, lines, data = chunks.pop()
            if keys is None:
                self.table.append(data)
                ids.extend(chunk_ids)
                continue
            with self.table.lock:
                hot, written = self.table.read_bytes(), []
                for job_id, key, line in zip(chunk_ids, keys, lines):
                    holder = key and (holders.get(key) or self._active_job_with_key(key, hot))
                    if holder:
                        ids.append(holder)
                        continue
                    if key:
                        holders[key] = job_id
                    written.append(line)
                    ids.append(job_id)
                if written:
                    self.table.append(''.join(written).encode(ENCODING))
        if self.durable:
            self.table.append(b'', fsync=True)   # one fsync for every chunk of the call
        return ids

    def _active_job_with_key(self, unique_key, data):
        """The id of the pending or processing job with this unique_key in data (the hot
        file's bytes), or None."""
        return next((job.id for job in jobs_with_key(data, unique_key)
                     if job.status in ACTIVE_STATUSES), None)

    def _upgrade_header(self):
        """Rewrite a file with older columns (1.0.0's nine) to ours, once per backend."""
        header = self.table.read_header()
        if header is not None and tuple(header) != COLUMNS:
            self.normalize()
        self._header_current = True

    def find(self, job_id):
        """Reads the files each time, so it sees what any other process wrote."""
        with self.table.mapped() as (data, _):
            job = find_line(data, job_id, log.warning)
        if job is None or job.status is not Status.PENDING:
            with self.archive.mapped() as (data, _):
                job = find_line(data, job_id, log.warning) or job
        return job

    def cancel(self, job_id):
        """The job stays in the hot file as cancelled; the next worker run archives it.
        One range rewrite of its line, every other byte copied in the kernel, planned on
        the file's bytes read once, not on the index: counting a file the process has no
        index of would cost more than the cancel (a third of it at 100,000 jobs)."""
        def try_once():
            read = self.table.read_whole()
            if read is None:
                return False
            snap, data = read
            try:
                if not data.startswith(HEADER_BYTES):
                    return NORMALIZE   # older columns (or a CRLF header): give it ours
                start, end, job = line_of_job(data, job_id, self.index.report_unparsable)
                if job is None or job.status is not Status.PENDING:
                    return False
                new = line_bytes(format_line(rules.cancelled(job, self.clock())))
                done = self.table.rewrite_ranges(snap, [(start, end, new)])
                if done is None:
                    return RETRY
                os.close(done[0])
                return True
            finally:
                snap.close()

        with self.state_lock:
            outcome = self.table.optimistically(try_once)
            if outcome is NORMALIZE:
                self.normalize()
                outcome = self.table.optimistically(try_once)
        return outcome is True

    def cancel_pending(self, job_type):
        """One rewrite: the jobs stay in the hot file as cancelled, as cancel leaves one."""
        def cancelled(view, now):
            view.load_where(lambda segment: any(
                job_type is None or t == job_type for t in segment.pending))
            return _cancelled(view, now, job_type)

        plan = self.rewrite_segments(cancelled)
        return [job.id for job in plan.changes.values()] if plan else []

    def paused_types(self):
        return self.paused.words()

    def set_paused(self, job_type, paused):
        self.paused.set(job_type, paused)

    # -- recurring jobs ---------------------------------------------------------------
    def schedule_records(self):
        return self.schedule_state.records()

    def commit_schedule(self, decide):
        return self.schedule_state.commit(decide, self._append_scheduled, self.find)

    def _append_scheduled(self, jobs):
        now = self.clock()
        # fsynced whatever durable says: the record written next must never reach the
        # disk before its job, or a power cut loses that slot's job for good.
        self.table.append(b''.join(
            new_line_bytes(job_id, job_type, payload, payload_text, now, None, None)
            for job_id, job_type, payload, payload_text in jobs), fsync=True)

    # -- work -------------------------------------------------------------------------
    def work(self, handlers, max_attempts, timeout, max_jobs, max_seconds, on_failure=None):
        if not self._migration_reported:
            self._migration_reported = True
            moved_to = self.migrated_to()
            if moved_to:
                log.warning('%s was migrated to %s: this worker works the file, where only '
                            'jobs enqueued since are (run migrate again to move them). Point '
                            'the app and this cron line at it: DBBASIC_QUEUE=%s, then '
                            '`crontab -l | dbbasic-queue crontab --merge | crontab -`',
                            self.path, moved_to, moved_to)
        run = Run(dict(handlers), max_attempts, timeout, liveness.current_worker(), on_failure,
                  jobs_left=max_jobs,
                  deadline=None if max_seconds is None else time.monotonic() + max_seconds)
        with self.state_lock:
            # Made per run, not kept: a kept one would make a reference cycle, and the
            # old file versions a dropped backend holds open would wait for the GC.
            ClaimCycle(self).work(run)
        return run.summary

    def rewrite_segments(self, edit, before_rename=None):
        """Apply edit(view, now) -> claims.Plan | None to the hot file, reading and
        rewriting only the segments the plan reads (view: a scan.SegmentView); every
        other byte is copied as it is. Returns the Plan committed, or None. A file that
        a range rewrite would not keep as it is (older columns, CRLF) is first rewritten
        whole (normalize)."""
        def try_once():
            index = self.index.current()
            if not index.normal:
                self.normalize()
                index = self.index.current()
            view = SegmentView(index)
            try:
                plan = edit(view, self.clock())
            except EditedInPlace:
                index.forget()   # read it anew
                return RETRY
            if plan is None:
                return None
            rebuild = index.rebuild(view.changes(plan.changes))
            del view   # rebuild holds it, and lets its lines go before it writes
            done = self.table.rewrite_ranges(index, rebuild, self._under_lock(plan, before_rename))
            if done is None:
                index.forget()   # changed other than by appends: read it anew
                return RETRY
            index.after_rewrite(rebuild, *done)
            index.save_summary()   # the next worker reads it, not the file
            return plan

        with self.state_lock:
            plan = self.table.optimistically(try_once)
        self._remove_journals(plan)
        return plan

    def _under_lock(self, plan, before_rename):
        def under_lock():
            if plan.archive:
                self.archive.append_lines(map(format_line, plan.archive), fsync=True)
            if before_rename is not None:
                before_rename()
        return under_lock

    def _remove_journals(self, plan):
        for worker in plan.gone_workers if plan else ():
            WorkerJournal.remove(self.path, worker)

    def normalize(self):
        """Rewrite the hot file whole, every line in our columns (older columns, 1.0.0's
        nine, get ours) and LF line ends (a CRLF file's): what a range rewrite keeps."""
        def planned(snap):
            check_header(self.path, snap.header)
            if snap.header is None or tuple(snap.header) == COLUMNS:
                return Change(snap.lines)   # CRLF: the snapshot's lines are read as LF
            return Change([self._in_our_columns(line, snap.header) for line in snap.lines])

        with self.state_lock:
            try:
                self.table.rewrite(planned)
            finally:
                self.table.forget()   # its lines: a worker keeps no per-line state

    def _in_our_columns(self, line, header):
        job = job_or_none(line, header)
        if job is None:
            self.index.report_unparsable(line)
            return line
        return format_line(job)

    def archived_ids(self, ids):
        """The subset of ids that have a row in the archive."""
        if not ids:
            return set()
        return ids_present(self.archive.read_bytes(), ids)

    # -- inspection and maintenance -----------------------------------------------------
    def file_lines(self):
        """(file path, line number, line, Job or None) for every line of both files."""
        for table in (self.table, self.archive):
            header, lines = table.read_lines()
            check_header(table.path, header)
            for line_number, line in enumerate(lines, start=2):
                yield table.path, line_number, line, job_or_none(line, header)

    def jobs(self):
        """Hot file first, then the archive; a job found in both (after a crash) is given
        once, as the archive has it."""
        found = {}
        for _, _, _, job in self.file_lines():
            if job is not None and (job.id not in found or found[job.id].status is Status.PENDING
                                    or job.status in FINAL_STATUSES):
                found[job.id] = job
        return list(found.values())

    def job_totals(self):
        return self.inspection.job_totals()

    def minute_counts(self):
        return self.inspection.minute_counts(self)

    def page_jobs(self, status, job_type, text, offset, limit):
        return self.inspection.page_jobs(self, status, job_type, text, offset, limit)

    def claimed_jobs(self):
        return self.inspection.claimed_jobs()

    def workers(self):
        return self.inspection.workers(self.clock(), self.lease_seconds)

    def revive(self, job_id, job_type, now):
        """The archive is filtered outside the lock; the revived jobs are appended to the
        hot file just before its rename: a crash between leaves a job in both files, and
        the pending copy runs."""
        refused = []

        def planned(archive):
            keep, revived = [], {}
            for line in archive.lines:
                job = job_or_none(line, archive.header)
                if job is not None and rules.chosen_for_retry(job, job_id, job_type):
                    if not rules.revivable(job):
                        refused.append(job)
                        return None
                    revived[job.id] = rules.revived(job, now)
                else:
                    keep.append(line)
            if not revived:
                return None
            return Change(keep, lambda: self.table.append_lines(
                map(format_line, revived.values()), fsync=True), list(revived))

        with self.state_lock:
            done = self.archive.rewrite(planned)
        if done is not None:
            return done[0].result, None
        return [], refused[0] if refused else (self.find(job_id) if job_id else None)

    def purge(self, choose, dry_run):
        """The archive is read and filtered outside the lock (jobs finishing meanwhile are
        kept), so enqueues never wait for a purge."""
        chosen = []

        def planned(archive):
            jobs = [job_or_none(line, archive.header) for line in archive.lines]
            chosen[:] = choose([job for job in jobs if job])
            if not chosen or dry_run:
                return None
            gone = set(chosen)
            return Change([line for line, job in zip(archive.lines, jobs)
                           if job is None or job.id not in gone])

        with self.state_lock:
            self.archive.rewrite(planned)
        return list(chosen)

    def check(self, now):
        """Lines that are not jobs or not UTF-8, duplicate ids, jobs still claimed by a
        worker that is gone, temp files left by a crashed rewrite, a summary whose counts
        are not the file's, files whose mode or group keeps out a user of the queue."""
        rows = [(f'{path.name}:{number}', line, job)
                for path, number, line, job in self.file_lines()]
        problems = editing.line_problems(rows)
        for where, _, job in rows:
            if job is not None and job.status is Status.PROCESSING and not liveness.claim_is_alive(
                    job.worker, job.claimed_at, now, self.lease_seconds):
                problems.append(f'{where}: job {job.id} is processing by '
                                f'{job.worker or "an unknown worker"}, which is gone')
        problems += [f'{self.schedule_state.path.name}:{number}: {problem}: {line!r:.80}'
                     for number, line, problem in self.schedule_state.bad_lines()]
        for leftover in sorted(abandoned_temp_files(self.table.lock.path)):
            problems.append(f'{leftover.name}: temp file left by an interrupted rewrite')
        problems += sharing_problems(self.table.lock.path, self.files())
        moved_to = self.migrated_to()
        stranded = moved_to and sum(1 for _, _, job in rows
                                    if job is not None and job.status is Status.PENDING)
        if stranded:
            problems.append(f'{self.path.name}: {stranded} pending job(s) enqueued after the '
                            f'queue was migrated to {moved_to}: no worker of it runs them; '
                            f'run `dbbasic-queue --queue {self.path} migrate --to {moved_to}` '
                            f'again, and point the app at {moved_to}')
        mismatch = Index(self.table).summary_mismatch()
        if mismatch is not None:
            problems.append(f'{self.index.summary_file.path.name}: its counts do not match '
                            f'{self.path.name} from byte {mismatch} on (a cache: delete it, '
                            f'and the next reader counts the file anew)')
        return problems

    def shared_mode(self):
        """The mode of the queue's lock (which every file of it takes) as octal text
        ('660') when it shares the queue with a group, else None."""
        try:
            mode = self.table.lock.path.stat().st_mode & 0o666
        except OSError:
            return None
        return f'{mode:o}' if mode & GROUP_READ_WRITE == GROUP_READ_WRITE else None

    def migrated_to(self):
        return self.migration.read(lambda text: text.strip() or None)

    def record_migration(self, url):
        """Mark this queue as moved to url (migrate, before it moves a job)."""
        self.migration.replace(url + '\n')

    def files(self):
        """Every file of this queue but its main lock: the tables (and what dbbasic-tsv
        keeps beside them), locks, caches, journals, and the log `crontab` names."""
        named = [self.table.rewrite_lock.path, self.paused.path, self.schedule_state.path,
                 self.migration.path, self.path.with_suffix('.log')]
        for table in (self.table, self.archive):
            named += [table.path, table.path.with_suffix('.meta'), table.path.with_suffix('.idx'),
                      TableSummary(table).path]
        return named + [WorkerJournal.path_for(self.path, worker)
                        for worker in WorkerJournal.workers(self.path)]

    def mark_migrated(self, job_ids):
        """Pending jobs (hot file) and failed ones (archive) become 'migrated', in the
        archive; called by migrate once Redis has them. Never deletes a row."""
        job_ids = set(job_ids)

        def migrated(view, now):
            plan = Plan()
            view.load_where(lambda segment: segment.pending)
            rows = [(i, job) for i, job in view.jobs(_pending_starts(view, None))
                    if job is not None and job.id in job_ids]
            already = self.archived_ids({job.id for _, job in rows})
            for i, job in rows:
                plan.changes[i] = None
                if job.id not in already:
                    plan.archive.append(job.evolve(status=Status.MIGRATED, finished_at=now))
            return plan if plan.changes else None

        def failed_migrated(archive):
            lines = [_migrated_line(line, archive.header, job_ids) for line in archive.lines]
            return Change(lines) if lines != archive.lines else None

        self.rewrite_segments(migrated)
        with self.state_lock:
            self.archive.rewrite(failed_migrated)

    # -- hand edits ---------------------------------------------------------------------
    def read_for_edit(self):
        self._upgrade_header()   # edit our columns, never 1.0.0's
        with self.table.lock:
            data = self.table.read_bytes()
        return data.decode(ENCODING, DECODE_ERRORS) or self.table.header_line + '\n'

    def check_edit(self, text):
        return editing.problems(text)

    def save_edit(self, original, edited):
        base, ours = editing.lines_by_id(original), editing.lines_by_id(edited)

        def planned(snap):
            return Change(editing.merge(base, ours, editing.lines_by_id_of(snap.lines)))

        with self.state_lock:
            self.table.rewrite(planned)
        return editing.changed_count(base, ours)


def _pending_starts(view, job_type):
    """The starts of the pending lines view read, of this type (None: any)."""
    return [start for start, line in view.lines.items()
            if line.entry is not None and line.entry.status == PENDING
            and (job_type is None or line.entry.type == job_type)]


def _cancelled(view, now, job_type):
    """The Plan that cancels the pending jobs of this type (None: any) view read."""
    plan = Plan()
    for start, job in view.jobs(_pending_starts(view, job_type)):
        if job is not None:
            plan.changes[start] = rules.cancelled(job, now)
    return plan if plan.changes else None


def _migrated_line(line, header, job_ids):
    if id_of_line(line) in job_ids:
        job = job_or_none(line, header)
        if job is not None and job.status is Status.FAILED:
            return format_line(job.evolve(status=Status.MIGRATED))
    return line


# -- the lines of new jobs ---------------------------------------------------------------
def new_lines(new_jobs):
    """(ids, unique_keys, lines ending in a newline, those lines encoded) of NewJobs,
    unique_keys and lines None where no job has a key: the common case (no options,
    due now) without a call per job."""
    ids = new_job_ids(len(new_jobs))
    now = new_jobs.created_at
    lines = format_new_lines(ids, new_jobs.types, new_jobs.texts, int(now),
                             format_millis(due_now_millis(now)))
    if new_jobs.run_ats.count(None) + new_jobs.options.count(None) < 2 * len(new_jobs):
        for i, (job_id, new_job) in enumerate(zip(ids, new_jobs)):
            if new_job[-2:] != (None, None):   # a run_at or options
                lines[i] = _new_line(job_id, *new_job) + '\n'
    try:
        data = ''.join(lines).encode(ENCODING)
    except UnicodeEncodeError:   # a payload with lone surrogates: new_line_bytes escapes it
        lines = [new_line_bytes(job_id, *new_job).decode(ENCODING)
                 for job_id, new_job in zip(ids, new_jobs)]
        data = ''.join(lines).encode(ENCODING)
    keys = [options and options['unique_key'] for options in new_jobs.options]
    if not any(keys):
        return ids, None, None, data   # no keys: the str lines are not needed
    return ids, keys, lines, data


def new_line_bytes(job_id, job_type, payload, payload_text, now, run_at, options):
    """The new job's line and its newline, encoded once."""
    line = _new_line(job_id, job_type, payload, payload_text, now, run_at, options) + '\n'
    try:
        return line.encode(ENCODING)
    except UnicodeEncodeError:
        # Lone surrogates in a str: escape them so the file stays valid UTF-8.
        escaped = payload_json(payload, JSON_ASCII)
        return line.replace(quote_field(payload_text), quote_field(escaped), 1).encode(ENCODING)


def _new_line(job_id, job_type, payload, payload_text, now, run_at, options):
    """The new job's line (it may hold lone surrogates: see new_line_bytes)."""
    if options is None:
        run_at_text = (format_millis(due_now_millis(now)) if run_at is None
                       else format_time(run_at))
        line = format_new_line(job_id, job_type, payload_text, int(now), run_at_text)
    else:
        line = format_line(Job(job_id, job_type, payload_text, Status.PENDING, int(now),
                               due_now_millis(now) / 1000 if run_at is None else run_at,
                               **options))
    return line
