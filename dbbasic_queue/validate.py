"""Checks of what callers pass in: one clear exception per bad value, before anything
is written. Shared by both backends, so their errors are the same."""

import json
import logging
import math
import re
from datetime import datetime, timedelta
from itertools import repeat

from .errors import InvalidArgumentError, InvalidJobError, safe_repr
from .lineformat import one_line

log = logging.getLogger('dbbasic_queue')

# Times a job may be scheduled at: those a datetime (and so `list` and `show`) can print.
LATEST_TIME_SECONDS = 253_402_300_799     # 9999-12-31 23:59:59 UTC
MAX_TIMEOUT_SECONDS = 10 * 366 * 86400    # ten years; setitimer refuses far more
DURATION_UNITS_SECONDS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}
DURATION_PATTERN = re.compile(r'(\d+(?:\.\d+)?)([smhdw]?)')


def json_encoders(ensure_ascii):
    """(encode, encode_each): value -> JSON text, like json.dumps(value, allow_nan=False),
    and values -> an iterator of their JSON texts, with no Python call per value.

    The C encoder is built once here instead of on every call as JSONEncoder.encode
    does: that halves enqueue's JSON cost. Without cycle markers, a cyclic payload ends
    in RecursionError, which payload_json reports like any unserializable payload.
    """
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=False)
    if json.encoder.c_make_encoder is None:
        return encoder.encode, lambda values: map(encoder.encode, values)
    encode_str = (json.encoder.encode_basestring_ascii if ensure_ascii
                  else json.encoder.encode_basestring)
    c_encode = json.encoder.c_make_encoder(None, encoder.default, encode_str, None, ': ', ', ',
                                           False, False, False)
    return (lambda value: ''.join(c_encode(value, 0)),
            lambda values: map(''.join, map(c_encode, values, repeat(0))))


JSON, JSON_EACH = json_encoders(ensure_ascii=False)
JSON_ASCII = json_encoders(ensure_ascii=True)[0]


def parse_duration(text):
    """'90', '90s', '15m', '2h', '7d', '1w', '1h30m' -> seconds (InvalidArgumentError if not)."""
    text = text.strip().lower()
    parts = DURATION_PATTERN.findall(text)
    if not text or ''.join(n + u for n, u in parts) != text:
        raise InvalidArgumentError(f'bad duration {text!r}: use e.g. 90s, 15m, 2h, 7d or 1h30m')
    return sum(float(n) * DURATION_UNITS_SECONDS[u or 's'] for n, u in parts)


def check_job_type(job_type):
    if not isinstance(job_type, str):
        raise InvalidJobError(f'job_type must be a str, got {type(job_type).__name__}')
    if not job_type:
        raise InvalidJobError('job_type must not be empty')
    if one_line(job_type) != job_type:
        raise InvalidJobError(f'job_type must be one line without tabs, got {job_type!r}')
    check_encodable('job_type', job_type)


def check_encodable(name, text):
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        raise InvalidJobError(f'{name} must be text that UTF-8 can store (it holds a lone '
                              f'surrogate), got {text!r}') from None


def payload_json(payload, encode=JSON):
    try:
        return encode(payload)
    except RecursionError:
        raise InvalidJobError('payload must be JSON-serializable: it contains itself, '
                              'or is nested too deeply') from None
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f'payload must be JSON-serializable (dict, list, str, int, '
                              f'finite float, bool, None): {exc}') from None


def result_json(result, job_id, job_type):
    """The JSON text stored as a job's result; the repr of one that is not JSON, with a
    warning."""
    try:
        text = JSON(result)
        text.encode('utf-8')
        return text
    except UnicodeEncodeError:
        return JSON_ASCII(result)
    except (TypeError, ValueError, RecursionError) as exc:
        log.warning('job %s (%s) returned a result that is not JSON (%s); stored its repr',
                    job_id, job_type, safe_repr(exc))
        return JSON_ASCII(safe_repr(result))


def run_at_from(now, run_at, delay):
    if run_at is not None and delay is not None:
        raise InvalidJobError('give run_at or delay, not both')
    if delay is not None:
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        if (isinstance(delay, bool) or not isinstance(delay, (int, float))
                or not math.isfinite(delay) or delay < 0):
            raise InvalidJobError(f'delay must be seconds >= 0 or a timedelta, got {delay!r}')
        return in_calendar(now + delay, f'delay {delay!r}')
    return due_now(now) if run_at is None else timestamp_of(run_at)


def in_calendar(seconds, what):
    if not 0 <= seconds <= LATEST_TIME_SECONDS:
        raise InvalidJobError(f'{what} is outside the times a job can have (Unix seconds '
                              f'from 0, 1970, to {LATEST_TIME_SECONDS}, the end of 9999)')
    return seconds


def job_options(priority, unique_key, timeout, max_attempts):
    """The Job fields of enqueue's options, validated (InvalidJobError otherwise)."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidJobError(f'priority must be an int, got {priority!r}')
    if unique_key is not None and (not isinstance(unique_key, str) or not unique_key
                                   or one_line(unique_key) != unique_key):
        raise InvalidJobError(f'unique_key must be a non-empty one-line str, got {unique_key!r}')
    if unique_key is not None:
        check_encodable('unique_key', unique_key)
    try:
        check_timeout(timeout)
    except ValueError as exc:
        raise InvalidJobError(str(exc)) from None
    if max_attempts is not None and (isinstance(max_attempts, bool)
                                     or not isinstance(max_attempts, int) or max_attempts < 1):
        raise InvalidJobError(f'max_attempts must be an int >= 1, got {max_attempts!r}')
    return {'priority': priority, 'unique_key': unique_key or '', 'timeout': timeout or 0.0,
            'max_attempts': max_attempts or 0}


def check_timeout(timeout):
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < math.inf):
        raise InvalidArgumentError(f'timeout must be seconds > 0, got {timeout!r}')
    if timeout is not None and timeout > MAX_TIMEOUT_SECONDS:
        raise InvalidArgumentError(f'timeout must be at most {MAX_TIMEOUT_SECONDS} seconds '
                                   f'(ten years), got {timeout!r}')


def due_now(now):
    return due_now_millis(now) / 1000


def due_now_millis(now):
    # Stored times round up to the millisecond (never early); "now" rounds down so a job
    # enqueued for now is due at once.
    return math.floor(now * 1000)


def timestamp_of(run_at):
    if isinstance(run_at, datetime):
        return run_at.timestamp()
    if isinstance(run_at, bool) or not isinstance(run_at, (int, float)):
        raise InvalidJobError(f'run_at must be Unix seconds (int or float) or a datetime, '
                              f'got {type(run_at).__name__}')
    if not math.isfinite(run_at):
        raise InvalidJobError(f'run_at must be finite, got {run_at!r}')
    return in_calendar(float(run_at), f'run_at {run_at!r}')


def check_limit(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 <= value < math.inf):
        raise InvalidArgumentError(f'{name} must be a finite number >= 0 or None, got {value!r}')


def check_durable(durable):
    """durable as a bool: True/False, or the environment's 1/0, true/false, yes/no, on/off."""
    if isinstance(durable, bool):
        return durable
    words = {'1': True, 'true': True, 'yes': True, 'on': True,
             '0': False, 'false': False, 'no': False, 'off': False}
    if isinstance(durable, str) and durable.strip().lower() in words:
        return words[durable.strip().lower()]
    raise InvalidArgumentError(f'durable must be True or False (in the environment: 1 or 0), '
                               f'got {durable!r}')


def check_file_mode(file_mode):
    """None, or permission bits given as an int (0o660) or octal text ('660', '0o660')."""
    if file_mode is None:
        return None
    mode = file_mode
    if isinstance(mode, str):
        try:
            mode = int(mode.strip().lower().removeprefix('0o'), 8)
        except ValueError:
            mode = None
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise InvalidArgumentError(f'file_mode must be permission bits such as 0o660 (or "660" in '
                         f'$DBBASIC_QUEUE_MODE), got {file_mode!r}')
    if mode & 0o600 != 0o600:
        raise InvalidArgumentError(f'file_mode must let the owner read and write, got {oct(mode)}')
    return mode


def check_handlers(handlers, max_attempts):
    if not hasattr(handlers, 'items') or not all(callable(h) for h in handlers.values()):
        raise InvalidArgumentError('handlers must be a dict of job_type -> callable(payload)')
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidArgumentError(f'max_attempts must be an int >= 1, got {max_attempts!r}')
