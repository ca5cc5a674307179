"""The line format: every byte-level fact of a queue line, and the one place that turns a
line into a Job and back.

A queue file (queue.tsv, queue.done.tsv) is a header line of column names, then one line
a job, in dbbasic-tsv's dialect (csv, tab delimiter, QUOTE_MINIMAL), so that
`TSV(name, COLUMNS).all()` reads it. Values never contain a raw tab, newline or CR:
payload and result are JSON (which escapes them) and error texts are flattened to one
line (one_line), so every job is exactly one physical line, and a field is what lies
between two tabs. The fields are named by position below (STATUS, RUN_AT, ...).

Three kinds of reader are here, from exact to fast:
- parse_line: the plain parser, the oracle; it reads any line csv would, and files with
  older columns (1.0.0's nine) through their header.
- entry_of_line and the line_at readers: a few columns, by splitting only so far.
- the regexes (PENDING_LINE, ANY_LINE, COUNT_HEAD, COUNT_LINE, page_pattern): whole
  blocks of lines read in C. Each matches only a plain line (no quoted tab, times of ten
  whole digits), and its caller counts matches against lines: a line it does not match
  sends that block to a slower reader, never to a wrong count.
tests/test_file_format.py checks every fast reader against parse_line on generated lines.
"""

import csv
import functools
import math
import re
import sys
from typing import NamedTuple

from .errors import StorageError
from .job import Job, Status

ENCODING = 'utf-8'
DECODE_ERRORS = 'surrogateescape'   # bytes that are not UTF-8 are kept as they are
SEPARATOR = '\t'

SEED_COLUMNS = ('id', 'type', 'payload', 'status', 'created_at', 'run_at',
                'attempts', 'error', 'result')
# Ours come after the seed's nine, so 1.0.0 readers and `cut -f1-9` still work.
# priority is last, so a worker finds it with one rfind instead of splitting the line.
COLUMNS = SEED_COLUMNS + ('worker', 'claimed_at', 'finished_at', 'unique_key', 'timeout',
                          'max_attempts', 'priority')
(ID, TYPE, PAYLOAD, STATUS, CREATED_AT, RUN_AT, ATTEMPTS, ERROR, RESULT, WORKER, CLAIMED_AT,
 FINISHED_AT, UNIQUE_KEY, TIMEOUT, MAX_ATTEMPTS, PRIORITY) = range(len(COLUMNS))
MIN_LINE_BYTES = len(COLUMNS)  # a job line has a tab between each two columns, and a newline

STATUS_BY_WORD = {status.value: status for status in Status}
PENDING, PROCESSING = Status.PENDING.value, Status.PROCESSING.value
# NUL too: the csv module before Python 3.11 refuses a line that holds one.
_ONE_LINE = str.maketrans({'\x00': ' ', '\t': ' ', '\n': ' ', '\r': ' ', '\x0b': ' ', '\x0c': ' ',
                           '\x1c': ' ', '\x1d': ' ', '\x1e': ' ', '\x85': ' ',
                           '\u2028': ' ', '\u2029': ' '})


class UnparsableLine(ValueError):
    """A line that is not a job (a hand edit); it is kept verbatim, never dropped."""


# -- the header --------------------------------------------------------------------------
def header_line(columns):
    """The header line (without newline) of a file of these columns."""
    return SEPARATOR.join(columns)


HEADER_BYTES = (header_line(COLUMNS) + '\n').encode(ENCODING)


def split_header(text):
    """The column names of a header line. Files made before 2.2 have dbbasic-tsv's
    header, ending in CRLF (csv's default line terminator); ours end in LF."""
    return text.rstrip('\r').split(SEPARATOR)


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


@functools.lru_cache(maxsize=8)
def column_order(header):
    """Positions of COLUMNS in header, or None when header starts with COLUMNS."""
    if header[:len(COLUMNS)] == COLUMNS:
        return None
    return [header.index(name) if name in header else None for name in COLUMNS]


# -- values ------------------------------------------------------------------------------
def one_line(text):
    """text with every line or field separator (and NUL) replaced by a space."""
    return text.translate(_ONE_LINE)


def can_be_id(text):
    """True if text (a str) can be a job id: not empty, and one field of one line."""
    return isinstance(text, str) and bool(text) and SEPARATOR not in text and '\n' not in text


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


def as_stored(text):
    """text as it is found inside a quoted field (a quote doubled): what a search of the
    stored bytes looks for."""
    return text.replace('"', '""')


def quote_json(text):
    """quote_field(text) for JSON text, which never holds a raw tab or line break: only a
    quote makes it need quoting."""
    return '"' + text.replace('"', '""') + '"' if '"' in text else text


# -- writing a line ----------------------------------------------------------------------
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


_NEW_JOB_TAIL = '\t0' + '\t' * (len(COLUMNS) - 7)   # attempts 0, the rest empty


def format_new_line(job_id, job_type, payload_json, created_at, run_at_text):
    """format_line(Job(...)) of a new pending job without options, without building the
    Job: enqueue's hot path. Same text, byte for byte (tested)."""
    return (f'{job_id}\t{quote_field(job_type)}\t{quote_json(payload_json)}\tpending'
            f'\t{created_at}\t{run_at_text}{_NEW_JOB_TAIL}')


def format_new_lines(ids, types, payload_texts, created_at, run_at_text):
    """format_new_line of each (id, type, payload text), each ending in a newline: the
    lines of enqueue_many, without a call a job (a call a job costs a tenth more)."""
    ends = {job_type: format_new_line('', job_type, '\n', created_at, run_at_text).split('\n')
            for job_type in set(types)}
    quote, quotes = '"', '""'   # quote_json, inlined
    return [f'{job_id}{ends[job_type][0]}"{payload_text.replace(quote, quotes)}"'
            f'{ends[job_type][1]}\n' if quote in payload_text else
            f'{job_id}{ends[job_type][0]}{payload_text}{ends[job_type][1]}\n'
            for job_id, job_type, payload_text in zip(ids, types, payload_texts)]


def claimed_line(line, worker, claimed_at):
    """The line of the pending job on line (str, without newline) as claimed by worker at
    claimed_at: the same text with status, worker and claimed_at changed, so nothing is
    reformatted (claim_of_line). None when line is not simply that: then format the
    claimed Job instead."""
    claim = claim_of_line(line, quote_field(worker), format_time(claimed_at))
    return None if claim is None else claim[1]


_FLOATS = (CREATED_AT, RUN_AT, FINISHED_AT, TIMEOUT)
_INTS = (ATTEMPTS, MAX_ATTEMPTS, PRIORITY)


def claim_of_line(line, worker_field, claimed_at_text):
    """(job id, the line as claimed: the same text with status, worker and claimed_at
    changed) when line is a plain pending job line that parse_line reads (its numbers
    numbers, its quoted fields well quoted), else None: then parse it and format the
    claimed Job. A claim's check without building the Job; worker_field and
    claimed_at_text are quote_field(worker) and format_time(claimed_at), made once for a
    batch."""
    fields = line.split('\t')
    if (len(fields) != len(COLUMNS) or fields[STATUS] != PENDING or fields[WORKER]
            or fields[CLAIMED_AT] or not fields[ID] or not fields[TYPE]
            or fields[ID].startswith('"')):
        return None
    try:
        for i in _FLOATS:
            float(fields[i] or 0)
        for i in _INTS:
            int(fields[i] or 0)
    except ValueError:
        return None
    quotes = line.count('"')
    if quotes:
        # Mostly only the payload (JSON) holds quotes: then it is the one field to check.
        suspects = (fields[PAYLOAD],) if fields[PAYLOAD].count('"') == quotes else fields
        if any(field.startswith('"') and not _well_quoted(field) for field in suspects):
            return None
        if fields[TYPE] == '""':
            return None   # quoted empty: no type
    job_id = fields[ID]
    fields[STATUS], fields[WORKER], fields[CLAIMED_AT] = PROCESSING, worker_field, claimed_at_text
    return job_id, '\t'.join(fields)


def _well_quoted(field):
    return len(field) >= 2 and field.endswith('"') and '"' not in field[1:-1].replace('""', '')


def completed_line(line, attempts, result_json, finished_at):
    """The line of the claimed job on line (as claimed_line made it) once completed:
    the same text with status, attempts, error, result and finished_at changed, so
    nothing else is reformatted. None when line is not simply that."""
    fields = line.split('\t')
    if len(fields) != len(COLUMNS) or fields[STATUS] != PROCESSING:
        return None
    fields[STATUS], fields[ATTEMPTS], fields[ERROR] = 'completed', str(attempts), ''
    fields[RESULT], fields[FINISHED_AT] = quote_field(result_json), format_time(finished_at)
    return '\t'.join(fields)


# -- reading a line: the plain parser ------------------------------------------------------
def split_line(line):
    """The fields of one TSV line, unquoted as the csv module would."""
    fields = line.split('\t')
    quotes = line.count('"')
    if not quotes:
        return fields
    # Mostly only the payload (JSON) holds quotes: then it is the one field to look at.
    suspects = ((PAYLOAD,) if len(fields) > PAYLOAD and fields[PAYLOAD].count('"') == quotes
                else range(len(fields)))
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
        if not job_id or not job_type or status_word not in STATUS_BY_WORD:
            raise ValueError('missing id, type or status')
        return Job(job_id, job_type, payload, STATUS_BY_WORD[status_word],
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


def id_of_line(line):
    """The id field of a line as written (the whole line when it has no tab)."""
    return line.split('\t', 1)[0]


# -- reading a few columns: the cheap readers -----------------------------------------------
class Claim(NamedTuple):
    job_id: str
    worker: str
    claimed_at: float


class LineEntry(NamedTuple):
    """The cheap columns of one line."""
    status: str
    type: str
    run_at: float
    claim: object        # a Claim for processing rows, else None
    priority: int
    created_at: float


def entry_of_line(line):
    """The LineEntry of a line of COLUMNS, or None when it is not a job. Cheap on
    purpose: it splits only the first columns (and finds priority, the last one, with
    one rfind); a line it cannot read so that holds a quote (a quoted tab, a hand edit)
    is read by the plain parser."""
    entry = _cheap_entry(line)
    if entry is None and '"' in line:
        return entry_of_older(line, COLUMNS)
    return entry


def _cheap_entry(line):
    fields = line.split('\t', RUN_AT + 1)
    if len(fields) <= RUN_AT + 1 or not fields[ID]:
        return None
    status = STATUS_BY_WORD.get(fields[STATUS])
    try:
        run_at = float(fields[RUN_AT] or 0)
        created_at = float(fields[CREATED_AT] or 0)
        priority = int(line[line.rfind('\t') + 1:] or 0)
    except ValueError:
        return None
    if status is None:
        return None
    job_id, job_type = fields[ID], fields[TYPE]
    if job_id.startswith('"') or job_type.startswith('"'):
        job_id, job_type = split_line(line)[:PAYLOAD]   # a quoted field: a hand edit
    claim = None
    if status is Status.PROCESSING:
        every = line.split('\t')
        if len(every) != len(COLUMNS) or every[WORKER].startswith('"'):
            every = split_line(line)   # a tab inside a quoted field
        try:
            claimed_at = float(every[CLAIMED_AT]) if len(every) > CLAIMED_AT and every[
                CLAIMED_AT] else 0.0
        except ValueError:
            return None
        # interned: the thousands of claims of one batch share one str
        claim = Claim(job_id, sys.intern(every[WORKER]) if len(every) > WORKER else '',
                      claimed_at)
    return LineEntry(status.value, sys.intern(job_type), run_at, claim, priority, created_at)


def entry_of_older(line, header):
    """The LineEntry of a line of a file with older columns (or of any line, read by the
    plain parser), or None."""
    try:
        job = parse_line(line, header)
    except UnparsableLine:
        return None
    claim = Claim(job.id, job.worker, job.claimed_at) if job.status is Status.PROCESSING else None
    created_at = split_line(line.rstrip('\r'))[header.index('created_at')] if (
        'created_at' in header) else ''
    return LineEntry(job.status.value, job.type, job.run_at, claim, job.priority,
                     float(created_at or 0))


def entry_of_job(job):
    """The LineEntry of format_line(job): its times as written (to the millisecond)."""
    claim = (Claim(job.id, sys.intern(job.worker), float(format_time(job.claimed_at) or 0))
             if job.status is Status.PROCESSING else None)
    return LineEntry(job.status.value, sys.intern(job.type), float(format_time(job.run_at) or 0),
                     claim, job.priority, float(job.created_at))


class Line(NamedTuple):
    """One line of a block of lines read: where it is, and its LineEntry."""
    start: int           # byte offset in the file version
    end: int             # after its newline
    segment: int         # the byte offset of the block (an index segment) it was read in
    entry: object        # a LineEntry, or None when the line is not a job


def read_lines(data, start, report, older=None):
    """The Lines of data (whole lines at byte offset start); report(text) is told of a
    line that is not a job; older: the header of a file with older columns (None:
    COLUMNS). Read by ANY_LINE in C when every line is plain, else line by line."""
    if older is None:
        plain = _plain_lines(data, start)
        if plain is not None:
            return plain
    lines, pos = [], start
    for raw in data.split(b'\n')[:-1]:
        end = pos + len(raw) + 1
        text = raw.decode(ENCODING, DECODE_ERRORS)
        if text.endswith('\r'):
            text = text[:-1]   # a CRLF line (the next full rewrite drops the CR)
        entry = (None if not text else entry_of_line(text) if older is None
                 else entry_of_older(text, older))
        if entry is None and text:
            report(text)
        lines.append(Line(pos, end, start, entry))
        pos = end
    return lines


def _plain_lines(data, start):
    """read_lines of data when ANY_LINE matches each of its lines (what entry_of_line
    would make of them, tested), else None."""
    matches = ANY_LINE.findall(data)
    raws = data.split(b'\n')
    if len(matches) != len(raws) - 1:
        return None
    types, lines, pos = {}, [], start
    try:
        for raw, (job_type, status, created_at, run_at, worker, claimed_at, priority) in zip(
                raws, matches):
            end = pos + len(raw) + 1
            name = types.get(job_type)
            if name is None:
                name = types[job_type] = sys.intern(job_type.decode(ENCODING, DECODE_ERRORS))
            claim = None
            if status == PROCESSING_BYTES:
                job_id = raw[:raw.index(b'\t')]
                if job_id.startswith(b'"'):
                    return None   # a quoted id: entry_of_line unquotes it
                claim = Claim(job_id.decode(ENCODING, DECODE_ERRORS),
                              sys.intern(worker.decode(ENCODING, DECODE_ERRORS)),
                              float(claimed_at) if claimed_at else 0.0)
            lines.append(Line(pos, end, start, LineEntry(
                _WORD_OF_BYTES[status], name, float(run_at), claim, int(priority or 0),
                float(created_at or 0))))
            pos = end
    except ValueError:
        return None   # a number that is not one (a hand edit): read line by line
    return lines


def text_between(data, start, end):
    """The text of the line data[start:end] (its newline included), without its end."""
    text = data[start:end - 1].decode(ENCODING, DECODE_ERRORS)
    return text[:-1] if text.endswith('\r') else text


def line_bytes(text):
    """A line's text as the bytes written, its newline included."""
    return (text + '\n').encode(ENCODING, DECODE_ERRORS)


# -- finding lines in a whole file's bytes ---------------------------------------------------
def id_needle(job_id):
    """The bytes before and after a job id that start its line."""
    return b'\n' + quote_field(job_id).encode(ENCODING, DECODE_ERRORS) + b'\t'


def ids_present(data, ids):
    """The subset of ids (a set of str) that start a line of data."""
    if len(ids) <= 16:
        return {i for i in ids if id_needle(i) in data}
    present = {line.split(b'\t', 1)[0] for line in data.split(b'\n')}
    return {i for i in ids if quote_field(i).encode(ENCODING, DECODE_ERRORS) in present}


def find_line(data, job_id, warn):
    """The last job in data (a whole file) whose id is job_id, or None; warn(text) is
    told of a line of that id that does not parse."""
    pos = data.rfind(id_needle(job_id))
    if pos < 0:
        return None
    try:
        return parse_line_at(data, pos + 1)
    except UnparsableLine as exc:
        warn(f'job {job_id} has a line that does not parse: {exc}')
        return None


def line_of_job(data, job_id, report):
    """(start, end, the Job or None) of the first line of data (a whole file of COLUMNS,
    header first) whose id is job_id; (0, 0, None) when there is none. report(text) is
    told of that line when it is not a job."""
    pos = data.find(id_needle(job_id))
    if pos < 0:
        return 0, 0, None
    start, end = pos + 1, data.find(b'\n', pos + 1) + 1
    text = text_between(data, start, end)
    job = job_or_none(text, COLUMNS)
    if job is None:
        report(text)
    return start, end, job


def parse_line_at(data, pos):
    """The Job on the line of data (a whole file, header first) that holds byte pos.

    Raises UnparsableLine when that line is not a job.
    """
    start, end = data.rfind(b'\n', 0, pos) + 1, data.find(b'\n', pos)
    line = data[start:end if end >= 0 else len(data)].decode(ENCODING, DECODE_ERRORS)
    header = split_header(data[:data.find(b'\n')].decode(ENCODING, DECODE_ERRORS))
    return parse_line(line, header)


def parse_line_at_or_none(data, pos):
    try:
        return parse_line_at(data, pos)
    except UnparsableLine:
        return None


def positions(data, needle):
    """Where needle occurs in data, at most once per line."""
    pos = data.find(needle)
    while pos >= 0:
        yield pos
        pos = data.find(needle, data.find(b'\n', pos) + 1 or len(data))


def line_starts(data, needle):
    """The start of each line holding needle."""
    return [data.rfind(b'\n', 0, pos) + 1 for pos in positions(data, needle)]


_LINE_ID = re.compile(rb'\n([^\t\n]*)')   # from the newline before: a literal skipped to in C


def ids_of_lines(data):
    """The id field (bytes, as written) of each line of data, whole lines."""
    return _LINE_ID.findall(b'\n' + data)


def status_needle(word):
    """Bytes found on a line of this status (a str word), and on no other plain line."""
    return b'\t' + word.encode() + b'\t'


def key_needle(unique_key):
    """Bytes found on every line of this unique_key (and perhaps others: parse them)."""
    return ('\t' + quote_field(unique_key) + '\t').encode(ENCODING, DECODE_ERRORS)


def lines_of_status(data, word):
    """The line starts of data's lines that hold this status word as a field."""
    return line_starts(data, status_needle(word))


def claimed_jobs(data):
    """The Jobs of data (a whole file) whose status is processing."""
    claimed = [parse_line_at_or_none(data, pos) for pos in positions(data, status_needle(PROCESSING))]
    return [job for job in claimed if job is not None and job.status is Status.PROCESSING]


def jobs_with_key(data, unique_key):
    """The Jobs of data (a whole file) whose unique_key is unique_key."""
    found = (parse_line_at_or_none(data, pos) for pos in positions(data, key_needle(unique_key)))
    return [job for job in found if job is not None and job.unique_key == unique_key]


def last_lines(data, header_end, pattern, count):
    """The starts of the last `count` lines after header_end that pattern matches, last first."""
    starts, end = [], len(data)
    while len(starts) < count and end > header_end:
        start = max(data.rfind(b'\n', header_end, end - 1) + 1, header_end)
        if pattern.match(data, start):
            starts.append(start)
        end = start
    return starts


def status_type_times(line, header):
    """(id, status word, type, created_at, run_at) of a line, or None when it is not a
    job: split only as far as run_at when it is a plain line of COLUMNS."""
    fields = line.split('\t', RUN_AT + 1)
    if (len(fields) <= RUN_AT or fields[STATUS] not in STATUS_BY_WORD
            or fields[TYPE][:1] in ('', '"') or fields[ID][:1] in ('', '"')
            or tuple(header) != COLUMNS):
        job = job_or_none(line, header)
        if job is None:
            return None
        return job.id, job.status.value, job.type, float(job.created_at), job.run_at
    try:
        return (fields[ID], fields[STATUS], fields[TYPE], float(fields[CREATED_AT] or 0),
                float(fields[RUN_AT] or 0))
    except ValueError:
        return None   # not a job: check reports it


# -- reading blocks of lines in C: the regexes -------------------------------------------------
_STATUS_WORDS_RE = b'|'.join(status.value.encode() for status in Status)

# A pending line, read as far as run_at: tab-free first columns, status pending, and
# created_at and run_at of 10 integer digits (2001-2286), so that the smallest as bytes
# is the earliest. As many matches as lines means every line matched (a match running
# into the next line would leave that line without one).
PENDING_LINE = re.compile(rb'(?m)^[^\t\n]+\t([^\t"\n]+)\t[^\t]*\tpending\t(\d{10})\t'
                          rb'(\d{10}(?:\.\d{1,3})?)\t')
PENDING_TYPE, PENDING_CREATED, PENDING_RUN_AT = range(3)   # its groups
# Any line of COLUMNS: type, status, created_at, run_at, worker, claimed_at, priority.
ANY_LINE = re.compile(rb'(?m)^[^\t\n]+\t([^\t"\n]+)\t[^\t]*\t(' + _STATUS_WORDS_RE +
                      rb')\t(\d*(?:\.\d+)?)\t(\d{10}(?:\.\d{1,3})?)\t[^\t]*\t[^\t]*\t[^\t]*\t'
                      rb'([^\t"\n]*)\t([\d.]*)\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t(-?\d*)$')
ANY_TYPE, ANY_STATUS, ANY_CREATED, ANY_RUN_AT, ANY_WORKER, ANY_CLAIMED_AT, ANY_PRIORITY = range(7)
PENDING_BYTES, PROCESSING_BYTES = PENDING.encode(), PROCESSING.encode()
_WORD_OF_BYTES = {word.encode(): word for word in STATUS_BY_WORD}
PROCESSING_NEEDLE = b'\t' + PROCESSING_BYTES + b'\t'   # on every line of a claim


def priorities_empty(data, lines):
    """True when each of data's `lines` lines ends in an empty priority (0): then a
    PENDING_LINE match is all a line needs."""
    return data.count(b'\t\n') == lines

# The counting patterns of stats and the charts: id, type, status, created_at, run_at.
# Reading on to finished_at costs twice as much, so only COUNT_LINE does; in the hot
# file the few finished lines (cancelled since the last run) are found by a byte search.
# A skipped field is [^\t]*, not [^\t\n]*: a third faster, and a line short of tabs that
# runs into the next one leaves fewer matches than lines, which the caller sees.
# created_at and run_at: ten whole digits (2001 to 2286), so that their text orders as
# their number; a line with another time is not matched.
# No group holds a quote: a quoted field (a hand edit) makes a line the caller counts
# the exact way. A match starts at the newline before its line: a literal the search skips to in C (~8 %
# quicker than ^). Status and created_at are one group: one object less a line.
COUNT_HEAD = re.compile(rb'\n([^\t"\n]+)\t([^\t"\n]+)\t[^\t]*\t((?:' + _STATUS_WORDS_RE +
                        rb')\t\d{10})\t(\d{10}(?:\.\d+)?)\t')
COUNT_LINE = re.compile(COUNT_HEAD.pattern + rb'(?:[^\t]*\t){5}(\d*)[\d.]*\t')   # + finished_at
# The same, when no id is wanted: an empty group (b'', one shared object) for the id.
COUNT_HEAD_NO_ID = re.compile(COUNT_HEAD.pattern.replace(rb'\n([^\t"\n]+)', rb'\n()[^\t"\n]+', 1))
COUNT_ID, COUNT_TYPE, COUNT_STATUS_CREATED, COUNT_RUN_AT, COUNT_FINISHED = range(5)   # groups
PENDING_CREATED_PREFIX = PENDING_BYTES + b'\t'


def status_and_created(group):
    """(status word, created_at) as bytes, of a COUNT_STATUS_CREATED group."""
    status, created = group.split(b'\t')
    return status, created


def status_of(group):
    """The status word (bytes) of a COUNT_STATUS_CREATED group."""
    return group.partition(b'\t')[0]


def page_pattern(statuses, job_type):
    """A line's (payload, status, error) if it has one of these statuses and this type
    (None: any)."""
    status_re = b'(?:' + b'|'.join(word.encode() for word in statuses) + b')'
    type_re = (re.escape(quote_field(job_type).encode(ENCODING, DECODE_ERRORS))
               if job_type is not None else rb'[^\t\n]*')
    # The rest of the line is read too: the next match then starts at the next line,
    # not after a search for it (an archive's long lines: a third quicker).
    return _compiled(rb'(?m)^[^\t\n]+\t' + type_re + rb'\t([^\t\n]*)\t(' + status_re +
                     rb')\t(?:[^\t\n]*\t){3}([^\t\n]*)\t[^\n]*')


PAGE_PAYLOAD, PAGE_STATUS, PAGE_ERROR = 1, 2, 3   # page_pattern's groups, as match[n]
_compiled = functools.lru_cache(maxsize=64)(re.compile)
