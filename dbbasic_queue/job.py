"""A job, and the one place that turns a TSV line into a Job and back.

Lines are written in dbbasic-tsv's dialect (csv, tab delimiter, QUOTE_MINIMAL), so
`TSV(name, COLUMNS).all()` reads them. Values never contain a raw tab, newline or CR:
payload and result are JSON (which escapes them) and error texts are flattened to one
line, so every job is exactly one physical line.
"""

import csv
import enum
import functools
import json
import math
import operator
import os
from dataclasses import dataclass, fields
from typing import Any, Optional, TypedDict, Union

from .errors import StorageError

SEED_COLUMNS = ('id', 'type', 'payload', 'status', 'created_at', 'run_at',
                'attempts', 'error', 'result')
# Ours come after the seed's nine, so 1.0.0 readers and `cut -f1-9` still work.
# priority is last, so a worker finds it with one rfind instead of splitting the line.
COLUMNS = SEED_COLUMNS + ('worker', 'claimed_at', 'finished_at', 'unique_key', 'timeout',
                          'max_attempts', 'priority')


class Status(str, enum.Enum):
    PENDING = 'pending'
    PROCESSING = 'processing'
    COMPLETED = 'completed'
    FAILED = 'failed'
    CANCELLED = 'cancelled'
    MIGRATED = 'migrated'       # moved to Redis by `dbbasic-queue migrate`

    def __str__(self):
        return self.value


FINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.MIGRATED})
ACTIVE_STATUSES = frozenset({Status.PENDING, Status.PROCESSING})   # a unique_key is held
_STATUS_BY_WORD = {status.value: status for status in Status}
# NUL too: the csv module before Python 3.11 refuses a line that holds one.
_ONE_LINE = str.maketrans({'\x00': ' ', '\t': ' ', '\n': ' ', '\r': ' ', '\x0b': ' ', '\x0c': ' ',
                           '\x1c': ' ', '\x1d': ' ', '\x1e': ' ', '\x85': ' ',
                           '\u2028': ' ', '\u2029': ' '})


def is_queue_header(header):
    """True if header (its fields) starts with the seed's nine columns."""
    return tuple(header[:len(SEED_COLUMNS)]) == SEED_COLUMNS


def check_header(path, header):
    """Raise StorageError unless header (None: no file yet) starts with the seed's columns.

    Nothing of the file is echoed: it may be one the user running this must not read.
    """
    if header is not None and not is_queue_header(header):
        raise StorageError(f'{path} is not a dbbasic-queue file: its first line is not the '
                           f'header of one')


class UnparsableLine(ValueError):
    """A line that is not a job (a hand edit); it is kept verbatim, never dropped."""


Number = Union[int, float]


class JobDict(TypedDict):
    """A job as get_job returns it: payload and result decoded, times in Unix seconds."""
    id: str
    type: str
    payload: Any
    status: str                 # pending processing completed failed cancelled migrated
    created_at: int
    run_at: Number
    attempts: int
    error: Optional[str]
    result: Any


class JobDetails(JobDict):
    """A job as list_jobs returns it: every column (None where unset)."""
    worker: Optional[str]
    claimed_at: Optional[Number]
    finished_at: Optional[Number]
    unique_key: Optional[str]
    timeout: Optional[Number]
    max_attempts: Optional[int]
    priority: int


@dataclass
class Job:
    """One job. payload_json and result_json hold the stored JSON text."""
    id: str
    type: str
    payload_json: str
    status: Status
    created_at: int
    run_at: float
    attempts: int = 0
    error: str = ''
    result_json: str = ''
    worker: str = ''
    claimed_at: float = 0.0
    finished_at: float = 0.0
    unique_key: str = ''
    timeout: float = 0.0        # seconds; 0 = process_jobs' default
    max_attempts: int = 0       # 0 = process_jobs' default
    priority: int = 0           # higher runs first

    @property
    def payload(self):
        return json.loads(self.payload_json) if self.payload_json else {}

    @property
    def result(self):
        return json.loads(self.result_json) if self.result_json else None

    def to_dict(self, full: bool = False) -> JobDict:
        """The public view returned by get_job (payload and result decoded).

        full=True adds the other columns (JobDetails), None when unset.
        """
        view: Any = {
            'id': self.id, 'type': self.type, 'payload': self.payload,
            'status': self.status.value, 'created_at': self.created_at,
            'run_at': number(self.run_at), 'attempts': self.attempts,
            'error': self.error or None, 'result': self.result,
        }
        if full:
            view.update(worker=self.worker or None,
                        claimed_at=number(self.claimed_at) if self.claimed_at else None,
                        finished_at=number(self.finished_at) if self.finished_at else None,
                        unique_key=self.unique_key or None,
                        timeout=number(self.timeout) if self.timeout else None,
                        max_attempts=self.max_attempts or None, priority=self.priority)
        return view

    def evolve(self, **changes):
        """A copy with some fields changed (dataclasses.replace, without its cost)."""
        values = list(_ALL_FIELDS(self))
        for name, value in changes.items():
            values[_FIELD_INDEX[name]] = value
        return Job(*values)


_FIELD_NAMES = tuple(field.name for field in fields(Job))
_FIELD_INDEX = {name: i for i, name in enumerate(_FIELD_NAMES)}
_ALL_FIELDS = operator.attrgetter(*_FIELD_NAMES)   # job -> a tuple of every field


def one_line(text):
    """text with every line or field separator (and NUL) replaced by a space."""
    return text.translate(_ONE_LINE)


def number(value):
    """A float that holds an integer becomes that int (1.0.0 stored ints)."""
    return int(value) if float(value).is_integer() else value


def format_time(seconds):
    """Seconds as text, rounded up to the millisecond so a job never runs early."""
    if not seconds:
        return '0' if seconds == 0 else ''
    if float(seconds).is_integer():
        return str(int(seconds))
    millis = math.ceil(seconds * 1000)
    if millis / 1000 < seconds:   # seconds * 1000 was rounded down to a float
        millis += 1
    return format_millis(millis)


def format_millis(millis):
    """Whole milliseconds (an int) as seconds text: 1500 -> '1.5', 2000 -> '2'."""
    if millis < 0:
        return '-' + format_millis(-millis)
    seconds, fraction = divmod(millis, 1000)
    if not fraction:
        return str(seconds)
    return f'{seconds}.{fraction:03d}'.rstrip('0')


def quote_field(field):
    """A field as csv QUOTE_MINIMAL writes it with a tab delimiter."""
    if '"' in field or '\t' in field or '\n' in field or '\r' in field:
        return '"' + field.replace('"', '""') + '"'
    return field


def format_line(job):
    """The TSV line (without newline) that stores job, in COLUMNS order. Only the text
    fields can need quoting: numbers and the status word never do."""
    return '\t'.join((
        quote_field(job.id), quote_field(job.type), quote_field(job.payload_json),
        job.status.value, str(job.created_at), format_time(job.run_at), str(job.attempts),
        quote_field(one_line(job.error)), quote_field(job.result_json), quote_field(job.worker),
        format_time(job.claimed_at) if job.claimed_at else '',
        format_time(job.finished_at) if job.finished_at else '',
        quote_field(job.unique_key), format_time(job.timeout) if job.timeout else '',
        str(job.max_attempts) if job.max_attempts else '',
        str(job.priority) if job.priority else ''))


def claimed_line(line, worker, claimed_at):
    """The line of the pending job on line (str, without newline) as claimed by worker at
    claimed_at: the same text with status, worker and claimed_at changed, so nothing is
    reformatted. None when line is not simply that (a quoted tab, other columns): then
    format the claimed Job instead."""
    fields = line.split('\t')
    if len(fields) != len(COLUMNS) or fields[3] != 'pending' or fields[9] or fields[10]:
        return None
    fields[3], fields[9], fields[10] = 'processing', quote_field(worker), format_time(claimed_at)
    return '\t'.join(fields)


def completed_line(line, attempts, result_json, finished_at):
    """The line of the claimed job on line (as claimed_line made it) once completed:
    the same text with status, attempts, error, result and finished_at changed, so
    nothing else is reformatted. None when line is not simply that."""
    fields = line.split('\t')
    if len(fields) != len(COLUMNS) or fields[3] != 'processing':
        return None
    fields[3], fields[6], fields[7] = 'completed', str(attempts), ''
    fields[8], fields[11] = quote_field(result_json), format_time(finished_at)
    return '\t'.join(fields)


_NEW_JOB_TAIL = '\t0' + '\t' * (len(COLUMNS) - 7)   # attempts 0, the rest empty


def quote_json(text):
    """quote_field(text) for JSON text, which never holds a raw tab or line break: only a
    quote makes it need quoting."""
    return '"' + text.replace('"', '""') + '"' if '"' in text else text


def format_new_line(job_id, job_type, payload_json, created_at, run_at_text):
    """format_line(Job(...)) of a new pending job without options, without building the
    Job: enqueue's hot path. Same text, byte for byte (tested)."""
    return (f'{job_id}\t{quote_field(job_type)}\t{quote_json(payload_json)}\tpending'
            f'\t{created_at}\t{run_at_text}{_NEW_JOB_TAIL}')


IDS_PER_READ = 256
_ids = iter(())


def new_job_id():
    """16 random hex digits from os.urandom (unguessable), read 256 ids at a time.

    next() on a list iterator is atomic, so threads never share an id; a forked child
    starts a pool of its own (see the at-fork hook below).
    """
    global _ids
    try:
        return next(_ids)
    except StopIteration:
        _ids = iter(new_job_ids(IDS_PER_READ))
        return next(_ids)


def new_job_ids(count):
    """count ids as new_job_id makes them, from one read of os.urandom."""
    return os.urandom(8 * count).hex(' ', 8).split(' ') if count else []


def _forget_ids():
    global _ids
    _ids = iter(())


os.register_at_fork(after_in_child=_forget_ids)


def split_line(line):
    """The fields of one TSV line, unquoted as the csv module would."""
    fields = line.split('\t')
    quotes = line.count('"')
    if not quotes:
        return fields
    # Mostly only the payload (JSON) holds quotes: then it is the one field to look at.
    suspects = (2,) if len(fields) > 2 and fields[2].count('"') == quotes else range(len(fields))
    for i in suspects:
        field = fields[i]
        if field.startswith('"'):
            if len(field) < 2 or not field.endswith('"') or '"' in field[1:-1].replace('""', ''):
                # A quoted field with a tab inside, or odd quoting: let csv decide.
                return next(csv.reader([line], delimiter='\t'), [])
            fields[i] = field[1:-1].replace('""', '"')
    return fields


def parse_line(line, header=COLUMNS):
    """The Job stored on line; raises UnparsableLine when it is not a valid job row.

    header is the file's header, so files with the seed's nine columns (1.0.0) read as
    well as ours.
    """
    if line.endswith('\r'):
        line = line[:-1]   # a CRLF line ending (unix2dos, a Windows editor)
    fields = split_line(line)
    order = column_order(tuple(header))
    if order is not None:
        fields = [fields[i] if i is not None and i < len(fields) else '' for i in order]
    elif len(fields) < len(COLUMNS):
        fields += [''] * (len(COLUMNS) - len(fields))
    (job_id, job_type, payload, status_word, created_at, run_at, attempts, error, result,
     worker, claimed_at, finished_at, unique_key, timeout, max_attempts,
     priority) = fields[:len(COLUMNS)]
    try:
        if not job_id or not job_type or status_word not in _STATUS_BY_WORD:
            raise ValueError('missing id, type or status')
        return Job(job_id, job_type, payload, _STATUS_BY_WORD[status_word],
                   int(float(created_at or 0)), float(run_at or 0), int(attempts or 0),
                   error, result, worker, float(claimed_at or 0), float(finished_at or 0),
                   unique_key, float(timeout or 0), int(max_attempts or 0), int(priority or 0))
    except ValueError as exc:
        raise UnparsableLine(f'{exc}: {line[:200]!r}') from None


def job_or_none(line, header):
    """The Job on line, or None when it is not one."""
    try:
        return parse_line(line, header or COLUMNS)
    except UnparsableLine:
        return None


@functools.lru_cache(maxsize=8)
def column_order(header):
    """Positions of COLUMNS in header, or None when header starts with COLUMNS."""
    if header[:len(COLUMNS)] == COLUMNS:
        return None
    return [header.index(name) if name in header else None for name in COLUMNS]
