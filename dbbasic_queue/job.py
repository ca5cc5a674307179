"""A job: the record (Job), its status words, the dicts get_job and list_jobs return,
and new job ids. How a job is stored as a line of a file is lineformat.py."""

import enum
import json
import operator
import os
from dataclasses import dataclass, fields
from typing import Any, Optional, TypedDict, Union

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
STATUS_WORDS = tuple(status.value for status in Status)          # in the order of Status
FINAL_WORDS = tuple(sorted(status.value for status in FINAL_STATUSES))
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


def number(value):
    """A float that holds an integer becomes that int (1.0.0 stored ints)."""
    return int(value) if float(value).is_integer() else value


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
