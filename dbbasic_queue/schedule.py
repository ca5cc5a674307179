"""Recurring jobs: a schedule declared next to the handlers, enqueued by the workers.

    from dbbasic_queue import cron, every
    SCHEDULE = [
        cron('0 3 * * *', 'build_report', {'kind': 'daily'}),    # 03:00 local time
        every('15m', 'cleanup'),
        cron('*/5 9-17 * * mon-fri', 'sync_crm', tz='Europe/Berlin'),
    ]
    process_jobs(HANDLERS, schedule=SCHEDULE)

There is no scheduler daemon and no leader: every worker run (Queue.enqueue_due) enqueues
one job for each slot that came due since the slot last enqueued. The record "entry E
enqueued slot S" is stored with the job, atomically (the backends' commit_schedule), so
overlapping runs, several hosts and kill -9 never give two jobs for one slot, nor lose
one. The job's payload is the entry's, plus SLOT_FIELD: the slot's time, ISO 8601.

This module holds the rules (which slots are due, what is recorded); the backends only
store. A new entry, or one whose schedule text changed, starts from now: its first job is
its next slot. After downtime, catch_up says what the missed slots get: 'latest' (one job,
for the latest), 'all' (one job each, for at most max_catch_up of the latest: the
earlier ones are skipped, with a warning) or 'none' (nothing for a slot found more than
MISSED_SLOT_SECONDS late).

Cron expressions are the five fields of crontab(5), parsed and stepped by cronsim (the
[cron] extra), in the entry's zone (tz=, else local time) with Debian cron's rules on DST
days: a time the clock skips runs at the jump, a time it repeats runs once.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, NamedTuple

from .errors import InvalidArgumentError, QueueError
from .job import new_job_id
from .lineformat import one_line
from .validate import check_job_type, parse_duration, payload_json

log = logging.getLogger('dbbasic_queue')

CATCH_UP = ('latest', 'all', 'none')
MISSED_SLOT_SECONDS = 300        # catch_up='none': a slot found later than this is skipped
MAX_CATCH_UP_SLOTS = 1000        # catch_up='all': the most slots one run enqueues (the latest)
SLOT_FIELD = 'scheduled_for'     # added to each scheduled job's payload: its slot, ISO 8601
LATEST_WINDOW_SECONDS = 3600     # latest(): the first look back; then 4x wider each time
STATE_COLUMNS = ('name', 'schedule', 'last_slot', 'job_id', 'rollback_slot')
CRON_FIELDS = 5                  # minute hour day-of-month month day-of-week


class Record(NamedTuple):
    """What is stored per entry: its schedule text, the last slot enqueued (Unix seconds;
    for a new or changed entry, when it started) and that slot's job id. rollback_slot is
    set only while a file commit is in flight: if job_id is not in the queue, the slot
    was not enqueued and last_slot is rollback_slot (see FileBackend.commit_schedule)."""
    name: str
    schedule: str
    last_slot: float
    job_id: str = ''
    rollback_slot: float | None = None


# -- entries ---------------------------------------------------------------------------
class Entry:
    """One recurring job: made by cron() or every(); its slots are Unix seconds."""

    def __init__(self, name, job_type, payload, schedule, catch_up,
                 max_catch_up=MAX_CATCH_UP_SLOTS):
        self.job_type = job_type
        self.name = job_type if name is None else name
        self.schedule = schedule        # the text stored beside the slot: a change restarts
        self.catch_up = catch_up
        self.max_catch_up = max_catch_up
        self.payload = payload
        self._check()

    def __repr__(self):
        return f'<{self.schedule} -> {self.job_type} ({self.name})>'

    def next_after(self, t):
        """The first slot after t."""
        raise NotImplementedError

    def zone(self):
        """The zone its slots are shown in; None: local time."""
        return None

    def slot_text(self, slot):
        """A slot as the job's payload carries it: ISO 8601 with the entry's offset."""
        raise NotImplementedError

    def slots(self, after, until):
        """Every slot s with after < s <= until, in order."""
        slot = self.next_after(after)
        while slot <= until:
            yield slot
            slot = self.next_after(slot)

    def latest(self, after, until):
        """The last slot s with after < s <= until, or None; looks back in widening
        windows, so a long gap in a frequent schedule is not stepped through."""
        window = LATEST_WINDOW_SECONDS
        while True:
            start = max(after, until - window)
            found = None
            for found in self.slots(start, until):
                pass
            if found is not None or start == after:
                return found
            window *= 4

    def last_slots(self, after, until, count):
        """The last count slots s with after < s <= until, in order; looks back in
        widening windows, as latest() does."""
        window = LATEST_WINDOW_SECONDS
        while True:
            start = max(after, until - window)
            found = deque(self.slots(start, until), maxlen=count)
            if len(found) == count or start == after:
                return list(found)
            window *= 4

    def next_runs(self, after, count):
        runs, slot = [], after
        for _ in range(count):
            slot = self.next_after(slot)
            runs.append(slot)
        return runs

    def _check(self):
        where = f'schedule entry {self.name!r}'
        if not isinstance(self.name, str) or not self.name or one_line(self.name) != self.name:
            raise InvalidArgumentError(f'{where}: name must be one line of text without tabs')
        try:
            check_job_type(self.job_type)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f'{where}: {exc}') from None
        if self.catch_up not in CATCH_UP:
            raise InvalidArgumentError(f'{where}: catch_up must be one of {", ".join(CATCH_UP)}, '
                                       f'got {self.catch_up!r}')
        if (isinstance(self.max_catch_up, bool) or not isinstance(self.max_catch_up, int)
                or self.max_catch_up < 1):
            raise InvalidArgumentError(f'{where}: max_catch_up must be an int >= 1, '
                                       f'got {self.max_catch_up!r}')
        if self.payload is None:
            self.payload = {}
        if not isinstance(self.payload, dict) or SLOT_FIELD in self.payload:
            raise InvalidArgumentError(f'{where}: payload must be a dict without a '
                                       f'{SLOT_FIELD!r} key (each job gets its slot there)')
        try:
            payload_json(self.payload)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f'{where}: {exc}') from None


class CronEntry(Entry):
    def __init__(self, expression, job_type, payload, tz, name, catch_up, max_catch_up):
        self.expression = ' '.join(str(expression).split()) if isinstance(expression, str) else expression
        self.tz = tz
        super().__init__(name, job_type, payload,
                         f'cron {self.expression}' + (f' {tz}' if tz else ''), catch_up,
                         max_catch_up)
        where = f'schedule entry {self.name!r}'
        if not isinstance(expression, str):
            raise InvalidArgumentError(f'{where}: a cron expression must be a str, got {expression!r}')
        if tz is not None:
            try:
                _zone(tz)
            except (ValueError, OSError, KeyError) as exc:
                raise InvalidArgumentError(f'{where}: unknown time zone {tz!r} ({exc})') from None
        if len(self.expression.split()) != CRON_FIELDS:
            raise InvalidArgumentError(
                f'{where}: bad cron expression {expression!r}: it needs 5 fields (minute '
                f'hour day-of-month month day-of-week)')
        CronSim, CronSimError = _cronsim()
        try:
            CronSim(self.expression, datetime.now(self.zone()))
        except (CronSimError, ValueError) as exc:
            raise InvalidArgumentError(f'{where}: bad cron expression {expression!r}: '
                                       f'{exc}') from None

    def zone(self):
        return _zone(self.tz) if self.tz else local_zone()

    def next_after(self, t):
        CronSim, _ = _cronsim()
        try:
            return next(CronSim(self.expression, datetime.fromtimestamp(t, self.zone()))).timestamp()
        except StopIteration:      # no match within cronsim's 50 years: never, for us
            return math.inf

    def slot_text(self, slot):
        return datetime.fromtimestamp(slot, self.zone()).isoformat()


class EveryEntry(Entry):
    """Slots at whole multiples of the interval since the Unix epoch: the same on every host."""

    def __init__(self, interval, job_type, payload, name, catch_up, max_catch_up):
        where = f'schedule entry {job_type if name is None else name!r}'
        if isinstance(interval, timedelta):
            seconds = interval.total_seconds()
            text = _duration_text(seconds)
        elif isinstance(interval, (int, float)) and not isinstance(interval, bool):
            seconds, text = float(interval), _duration_text(float(interval))
        elif isinstance(interval, str):
            try:
                seconds, text = parse_duration(interval), interval.strip().lower()
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f'{where}: {exc}') from None
        else:
            raise InvalidArgumentError(f'{where}: an interval is a str like "15m", seconds or '
                                       f'a timedelta, got {interval!r}')
        if not math.isfinite(seconds) or seconds < 1:
            raise InvalidArgumentError(f'{where}: the interval must be at least 1 second, '
                                       f'got {interval!r}')
        self.interval_seconds = seconds
        super().__init__(name, job_type, payload, f'every {text}', catch_up, max_catch_up)

    def next_after(self, t):
        return (math.floor(t / self.interval_seconds) + 1) * self.interval_seconds

    def latest(self, after, until):
        slot = math.floor(until / self.interval_seconds) * self.interval_seconds
        return slot if slot > after else None

    def slot_text(self, slot):
        return datetime.fromtimestamp(slot, timezone.utc).isoformat()


def cron(expression: str, job_type: str, payload: dict[str, Any] | None = None, *,
         tz: str | None = None, name: str | None = None, catch_up: str = 'latest',
         max_catch_up: int = MAX_CATCH_UP_SLOTS) -> Entry:
    """A job of job_type at each time matching a crontab(5) expression ('0 3 * * *'), in
    the zone tz (an IANA name such as 'Europe/Berlin'; default: local time). name (default
    job_type) identifies it in the stored state; give one when two entries share a type.
    catch_up: see the module docstring; max_catch_up bounds what 'all' enqueues at once.
    Raises InvalidArgumentError for a bad expression or zone; needs the [cron] extra."""
    return CronEntry(expression, job_type, payload, tz, name, catch_up, max_catch_up)


def every(interval: str | float | timedelta, job_type: str,
          payload: dict[str, Any] | None = None, *, name: str | None = None,
          catch_up: str = 'latest', max_catch_up: int = MAX_CATCH_UP_SLOTS) -> Entry:
    """A job of job_type every interval ('90s', '15m', '2h', '1d', seconds or a
    timedelta; at least 1 s), at whole multiples of it since 1970-01-01 UTC ('1d' is
    midnight UTC: use cron for local days). catch_up and max_catch_up: as cron()'s."""
    return EveryEntry(interval, job_type, payload, name, catch_up, max_catch_up)


def check_schedule(schedule, handlers=None):
    """The entries of schedule, checked: a list of cron()/every() entries with distinct
    names, each (when handlers are given) of a type this worker has a handler for."""
    if isinstance(schedule, (str, bytes)) or not hasattr(schedule, '__iter__'):
        raise InvalidArgumentError(f'schedule must be a list of cron() and every() entries, '
                                   f'got {schedule!r:.80}')
    entries, names = list(schedule), set()
    for entry in entries:
        if not isinstance(entry, Entry):
            raise InvalidArgumentError(f'schedule entries are made by cron() or every(), got '
                                       f'{entry!r:.80}')
        if entry.name in names:
            raise InvalidArgumentError(f'two schedule entries are named {entry.name!r}: give '
                                       f'one of them name=...')
        names.add(entry.name)
        if handlers is not None and entry.job_type not in handlers:
            raise InvalidArgumentError(f'schedule entry {entry.name!r} ({entry.schedule}) runs '
                                       f'{entry.job_type!r}, which has no handler in this worker')
    return entries


# -- what is due -----------------------------------------------------------------------
def needs_commit(entries, records, now, next_slots):
    """True if a commit would change anything: an entry without a record (or with a
    changed schedule), a record in flight, or a slot due. next_slots caches next_after by
    (name, schedule, last slot), so an idle poll does no cron arithmetic."""
    for entry in entries:
        record = records.get(entry.name)
        if record is None or record.schedule != entry.schedule or record.rollback_slot is not None:
            return True
        key = (entry.name, entry.schedule, record.last_slot)
        slot = next_slots.get(key)
        if slot is None:
            if len(next_slots) > 4 * len(entries):
                next_slots.clear()
            slot = next_slots[key] = entry.next_after(record.last_slot)
        if slot <= now:
            return True
    return False


def plan(entries, records, now):
    """(changed records by name, new jobs as (job_id, type, payload, payload_text)) for
    the slots of entries due at now, given the stored records."""
    changed, jobs = {}, []
    for entry in entries:
        record = records.get(entry.name)
        if record is None or record.schedule != entry.schedule:
            if record is not None:
                log.info('schedule entry %r changed from %r to %r: it starts from now',
                         entry.name, record.schedule, entry.schedule)
            changed[entry.name] = Record(entry.name, entry.schedule, float(math.floor(now)))
            continue
        last, slots = _due(entry, record.last_slot, now)
        if last is None:
            continue
        job_id = ''
        for slot in slots:
            payload = {**entry.payload, SLOT_FIELD: entry.slot_text(slot)}
            job_id = new_job_id()
            jobs.append((job_id, entry.job_type, payload, payload_json(payload)))
        if not slots:
            log.info('schedule entry %r: skipped the slot of %s (found %.0f s late, '
                     "catch_up='none')", entry.name, entry.slot_text(last), now - last)
        changed[entry.name] = Record(entry.name, entry.schedule, last, job_id)
    return changed, jobs


def _due(entry, last, now):
    """(the new last slot or None if none came due, the slots to enqueue)."""
    if entry.catch_up == 'all':
        slots = entry.last_slots(last, now, entry.max_catch_up)
        if slots and entry.next_after(last) < slots[0]:
            log.warning("schedule entry %r: skipped its missed slots from %s up to %s "
                        "(catch_up='all' enqueues the latest %d at most: raise max_catch_up "
                        "for more)", entry.name, entry.slot_text(entry.next_after(last)),
                        entry.slot_text(slots[0]), entry.max_catch_up)
        return (slots[-1] if slots else None), slots
    latest = entry.latest(last, now)
    if latest is None:
        return None, []
    if entry.catch_up == 'none' and now - latest > MISSED_SLOT_SECONDS:
        return latest, []
    return latest, [latest]


def removed(entries, records):
    """The records whose name is not in entries: ignored, and reported by the caller."""
    names = {entry.name for entry in entries}
    return [record for name, record in sorted(records.items()) if name not in names]


# -- the state file of a file queue --------------------------------------------------------
class StateFile:
    """The records of a file queue's recurring jobs: data/queue.schedule.tsv (a
    storage.SmallFile, locked by the queue's lock), committed with the jobs they enqueue."""

    def __init__(self, small_file):
        self.file = small_file
        self.path = small_file.path
        self._reported = set()   # lines that are not records, logged once

    def records(self):
        """The records by entry name; a line that is not one is logged, and kept."""
        records, bad = self.file.read(parse_state)
        for number, line, problem in bad:
            if line not in self._reported:
                self._reported.add(line)
                log.warning('%s:%d: kept a line that is not an entry\'s state (%s): %.200r',
                            self.path, number, problem, line)
        return records

    def bad_lines(self):
        """(line number, line, problem) of each line that is not a record (for check)."""
        return self.file.read(parse_state)[1]

    def commit(self, decide, append_jobs, find):
        """Under the queue's lock, with a two-phase record, because a job and its record
        are in two files: first each entry with new jobs is recorded with its new slot and
        last job id, and its previous slot as rollback_slot; then append_jobs(jobs) appends
        the jobs (one fsynced append); then the records are written without rollback_slot.
        A commit that finds a rollback_slot left by a killed process looks the job id up
        (find(job_id): the Job or None): in the queue, the slot was enqueued; not there, it
        was not, and the entry's last slot is rollback_slot. The jobs are on disk before
        the records' rename, so a power cut cannot keep a settled record whose job it lost.
        Returns the new jobs' ids."""
        with self.file.lock:
            records, bad = self.file.read(parse_state)
            kept_lines = [line for _, line, _ in bad]   # hand edits: written back as they were
            resolved = _settled(records, find)
            records = {**records, **resolved}
            changed, jobs = decide(records)
            settled = {**records, **changed}
            if jobs:
                in_flight = {name: record._replace(rollback_slot=records[name].last_slot)
                             for name, record in changed.items() if record.job_id}
                self.file.replace(format_state({**settled, **in_flight}, kept_lines))
                append_jobs(jobs)
            if changed or resolved:
                self.file.replace(format_state(settled, kept_lines))
        return [job[0] for job in jobs]


def _settled(records, find):
    """The records a killed commit left in flight, settled by looking their job up."""
    settled = {}
    for name, record in records.items():
        if record.rollback_slot is None:
            continue
        if find(record.job_id) is not None:
            settled[name] = record._replace(rollback_slot=None)
        else:
            log.warning('schedule entry %r: the job of its last slot was never written '
                        '(a worker was killed); that slot is due again', name)
            settled[name] = record._replace(last_slot=record.rollback_slot, job_id='',
                                            rollback_slot=None)
    return settled


# -- the stored text: one line per entry -------------------------------------------------
def format_record(record):
    rollback = '' if record.rollback_slot is None else _utc_text(record.rollback_slot)
    return '\t'.join((record.name, record.schedule, _utc_text(record.last_slot),
                      record.job_id, rollback))


def parse_record(line):
    """The Record of one stored line; ValueError if it is not one."""
    fields = line.rstrip('\r\n').split('\t')
    if len(fields) != len(STATE_COLUMNS) or not fields[0] or not fields[1]:
        raise ValueError(f'expected {len(STATE_COLUMNS)} tab-separated fields '
                         f'({", ".join(STATE_COLUMNS)})')
    name, schedule, last_slot, job_id, rollback = fields
    return Record(name, schedule, _parse_utc(last_slot), job_id,
                  _parse_utc(rollback) if rollback else None)


def parse_state(text):
    """(records by name, [(line number, line, problem)] for lines that are not records)
    of a state file's text (its first line the header)."""
    records, bad = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        if number == 1 and line.split('\t')[0] == STATE_COLUMNS[0] or not line.strip():
            continue
        try:
            record = parse_record(line)
        except ValueError as exc:
            bad.append((number, line, str(exc)))
            continue
        records[record.name] = record
    return records, bad


def format_state(records, bad_lines=()):
    """A state file's text: the header, a line per record by name, and any lines that
    were not records, kept as they were (a hand edit is never dropped)."""
    lines = ['\t'.join(STATE_COLUMNS)]
    lines += [format_record(record) for _, record in sorted(records.items())]
    lines += list(bad_lines)
    return ''.join(line + '\n' for line in lines)


def _utc_text(seconds):
    text = datetime.fromtimestamp(seconds, timezone.utc).isoformat()
    return text.replace('+00:00', 'Z')


def _parse_utc(text):
    try:
        moment = datetime.fromisoformat(text.replace('Z', '+00:00'))
    except ValueError:
        raise ValueError(f'bad time {text!r}: expected ISO 8601 like 2026-12-01T03:00:00Z') from None
    if moment.tzinfo is None:
        raise ValueError(f'bad time {text!r}: it needs an offset (Z for UTC)')
    return moment.timestamp()


def _duration_text(seconds):
    return f'{seconds:g}s'


# -- zones and cronsim -----------------------------------------------------------------
def _cronsim():
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise QueueError('cron() needs cronsim: pip install "dbbasic-queue[cron]"') from None
    return CronSim, CronSimError


@lru_cache(maxsize=64)
def _zone(name):
    from zoneinfo import ZoneInfo
    return ZoneInfo(name)


def local_zone():
    """This machine's zone with its DST rules: $TZ if it names one, else /etc/localtime;
    failing both, the current fixed offset (logged once)."""
    return _local_zone(os.environ.get('TZ'))


@lru_cache(maxsize=8)
def _local_zone(tz_variable):
    from zoneinfo import ZoneInfo
    try:
        if tz_variable:
            name = tz_variable.lstrip(':')
            if name.startswith('/'):
                with open(name, 'rb') as f:
                    return ZoneInfo.from_file(f, key=name)
            return ZoneInfo(name)
        with open('/etc/localtime', 'rb') as f:
            return ZoneInfo.from_file(f, key='localtime')
    except (OSError, ValueError, KeyError) as exc:
        fixed = datetime.now().astimezone().tzinfo
        log.warning('cron: cannot read the local time zone (%s); using the fixed offset %s, '
                    'without DST rules: give tz= to be sure', exc, fixed)
        return fixed
