"""Bad input (guarantee 9), one job per line (10), 1.0.0 files (11), dbbasic-tsv tables."""

import csv
import io
import json
import logging
import math
from datetime import date

import pytest
from dbbasic.tsv import TSV
from hypothesis import given, settings
from hypothesis import strategies as st

from dbbasic_queue import COLUMNS, InvalidJobError, Queue
from dbbasic_queue.job import Job, Status
from dbbasic_queue.lineformat import format_line, format_new_line, format_time, one_line, split_line

ONE_MB_STRING = 'x' * 1_000_000

NASTY_PAYLOADS = [
    {'tab': 'a\tb', 'newline': 'a\nb', 'cr': 'a\r\nb', 'quote': 'say "hi"', 'backslash': 'C:\\dir\\'},
    {'unicode': 'naïve café ñ 中文', 'emoji': '📧🚀👍🏽', 'separators': '\u2028\u2029\x85\x0b\x0c'},
    {'nested': {'list': [1, [2, [3, {'deep': None}]]], 'bool': True, 'float': 1.5e-300}},
    {'lone_surrogate': '\udcff\ud800'},
    ['a', 'list', 'payload'], 'a string payload', 42, None,
    {'big': ONE_MB_STRING},
]


@pytest.mark.parametrize('payload', NASTY_PAYLOADS, ids=range(len(NASTY_PAYLOADS)))
def test_payloads_round_trip_exactly_and_stay_on_one_line(queue, payload):
    job_id = queue.enqueue('t', payload)
    assert queue.get_job(job_id)['payload'] == payload
    assert len(queue.path.read_bytes().split(b'\n')) == 3  # header, job, ''
    seen = []
    queue.process_jobs({'t': seen.append})
    assert seen == [payload]
    assert queue.get_job(job_id)['payload'] == payload


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(payload=json_values, error=st.text())
@pytest.mark.slow
def test_any_json_payload_and_any_error_text_keep_one_job_per_line(tmp_path_factory, payload, error):
    queue = Queue(tmp_path_factory.mktemp('q') / 'queue.tsv')

    def fail(p):
        raise RuntimeError(error)

    job_id = queue.enqueue('t', payload)
    assert queue.get_job(job_id)['payload'] == payload
    queue.process_jobs({'t': fail}, max_attempts=1)
    archived = queue.archive_path.read_text(encoding='utf-8').split('\n')
    assert len(archived) == 3 and archived[1].startswith(job_id + '\t')
    job = queue.get_job(job_id)
    assert job['payload'] == payload and job['status'] == 'failed'
    assert job['error'].startswith('RuntimeError: ') and '\n' not in job['error']


CYCLIC = {'name': 'me'}
CYCLIC['self'] = CYCLIC

BAD_ENQUEUES = [
    (('', {}), r'job_type must not be empty'),
    ((None, {}), r'job_type must be a str, got NoneType'),
    ((b'send', {}), r'job_type must be a str, got bytes'),
    ((['send'], {}), r'job_type must be a str, got list'),
    (('send\temail', {}), r"job_type must be one line without tabs, got 'send\\temail'"),
    (('send\nemail', {}), r"job_type must be one line without tabs, got 'send\\nemail'"),
    (('t', {1, 2}), r'payload must be JSON-serializable .*set'),
    (('t', {'o': object()}), r'payload must be JSON-serializable .*object'),
    (('t', {'x': math.nan}), r'payload must be JSON-serializable .*Out of range float'),
    (('t', {'x': math.inf}), r'payload must be JSON-serializable .*Out of range float'),
    (('t', CYCLIC), r'payload must be JSON-serializable: it contains itself'),
    (('t', {}, '2027-01-01'), r'run_at must be Unix seconds \(int or float\) or a datetime, got str'),
    (('t', {}, date(2027, 1, 1)), r'run_at must be .* got date'),
    (('t', {}, True), r'run_at must be .* got bool'),
    (('t', {}, math.nan), r'run_at must be finite, got nan'),
]


@pytest.mark.parametrize('args,message', BAD_ENQUEUES, ids=[m for _, m in BAD_ENQUEUES])
def test_bad_input_raises_a_clear_error_and_writes_nothing(queue, args, message):
    queue.enqueue('t', {'first': 1})
    before = queue.path.read_bytes()
    with pytest.raises(InvalidJobError, match=message):
        queue.enqueue(*args)
    assert queue.path.read_bytes() == before


def test_bad_input_on_a_new_queue_creates_no_file(queue):
    with pytest.raises(InvalidJobError):
        queue.enqueue('t', {1, 2})
    assert not queue.path.exists()


def test_the_file_is_a_dbbasic_tsv_table_with_the_seed_columns_first(queue):
    ids = [queue.enqueue('t', {'i': i, 'text': 'quote " tab \t'}) for i in range(3)]
    queue.process_jobs({'t': lambda p: p['i']}, max_attempts=1)
    queue.enqueue('t', {'pending': True})
    header = queue.path.read_text().split('\n')[0].split('\t')
    assert tuple(header[:9]) == ('id', 'type', 'payload', 'status', 'created_at', 'run_at',
                                 'attempts', 'error', 'result')
    data_dir = queue.path.parent
    hot = list(TSV('queue', list(COLUMNS), data_dir=data_dir).all())
    done = list(TSV('queue.done', list(COLUMNS), data_dir=data_dir).all())
    assert [row['status'] for row in hot] == ['pending']
    assert [row['id'] for row in done] == ids
    assert [row['payload'] for row in done] == [
        '{"i": %d, "text": "quote \\" tab \\t"}' % i for i in range(3)]


def test_a_line_that_is_not_a_job_is_kept_verbatim_and_reported(queue, caplog):
    first = queue.enqueue('t', {'n': 1})
    garbage = 'this line was\tadded by hand "with a stray quote'
    with open(queue.path, 'a') as f:
        f.write(garbage + '\n')
    second = queue.enqueue('t', {'n': 2})
    ran = []
    with caplog.at_level(logging.WARNING, logger='dbbasic_queue'):
        queue.process_jobs({'t': lambda p: ran.append(p['n'])})
    assert ran == [1, 2]
    assert queue.path.read_text().split('\n')[1:] == [garbage, '']
    assert 'not a job' in caplog.text and 'added by hand' in caplog.text
    assert queue.get_job(first)['status'] == queue.get_job(second)['status'] == 'completed'


ORIGINAL_FILE = (
    'id\ttype\tpayload\tstatus\tcreated_at\trun_at\tattempts\terror\tresult\n'
    'aaaaaaaaaaaaaaa1\tsend_email\t{"to": "a@example.com", "subject": "Hi"}\tpending\t1700000000\t1700000000\t0\t\t\n'
    'aaaaaaaaaaaaaaa2\tsend_email\t{"to": "b@example.com"}\tprocessing\t1700000000\t1700000000\t0\t\t\n'
    'aaaaaaaaaaaaaaa3\tsend_email\t{"to": "c@example.com"}\tcompleted\t1700000000\t1700000000\t1\t\t{"sent_at": 1700000001}\n'
    'aaaaaaaaaaaaaaa4\treport\t{}\tfailed\t1700000000\t1700000000\t3\tNo handler for report\t\n'
    'aaaaaaaaaaaaaaa5\tsend_email\t{"to": "d@example.com"}\tcancelled\t1700000000\t1700000000\t0\tCancelled by user\t\n'
)


def test_a_file_written_by_dbbasic_queue_1_0_0_is_read_and_worked_as_is(queue):
    queue.path.parent.mkdir(parents=True)
    queue.path.write_text(ORIGINAL_FILE)
    assert queue.get_job('aaaaaaaaaaaaaaa1')['payload'] == {'to': 'a@example.com', 'subject': 'Hi'}
    assert queue.get_job('aaaaaaaaaaaaaaa3')['result'] == {'sent_at': 1700000001}
    sent = []
    summary = queue.process_jobs({'send_email': lambda p: sent.append(p['to'])})
    # The pending job runs; the 'processing' row its dead 1.0.0 worker left behind is
    # recovered (that crash counts as an attempt) and, still due, runs too.
    assert sent == ['a@example.com', 'b@example.com']
    assert summary['recovered'] == 1
    stuck = queue.get_job('aaaaaaaaaaaaaaa2')
    assert (stuck['status'], stuck['attempts']) == ('completed', 2)
    assert tuple(queue.path.read_text().split('\n')[0].split('\t')) == COLUMNS
    for job_id, status in [('aaaaaaaaaaaaaaa3', 'completed'), ('aaaaaaaaaaaaaaa4', 'failed'),
                           ('aaaaaaaaaaaaaaa5', 'cancelled')]:
        assert queue.get_job(job_id)['status'] == status
        assert job_id not in queue.path.read_text()
        assert queue.archive_path.read_text().count(job_id) == 1


def test_cancel_job_on_a_1_0_0_file_upgrades_it_first(queue):
    queue.path.parent.mkdir(parents=True)
    queue.path.write_text(ORIGINAL_FILE)
    assert queue.cancel_job('aaaaaaaaaaaaaaa1') is True
    lines = queue.path.read_text().split('\n')
    assert tuple(lines[0].split('\t')) == COLUMNS
    assert all(len(line.split('\t')) == len(COLUMNS) for line in lines[1:] if line)
    assert queue.get_job('aaaaaaaaaaaaaaa1')['status'] == 'cancelled'
    assert queue.get_job('aaaaaaaaaaaaaaa2')['status'] == 'processing'


def test_cancel_job_keeps_every_other_byte_even_if_not_utf8(queue):
    keep = queue.enqueue('t', {'n': 1})
    target = queue.enqueue('t', {'n': 2})
    with open(queue.path, 'ab') as f:
        f.write(b'hand \xff\xfe edit\n')
    queue.enqueue('t', {'n': 3})
    before = queue.path.read_bytes()
    assert queue.cancel_job(target) is True
    after = queue.path.read_bytes()
    old_line = next(line for line in before.split(b'\n') if line.startswith(target.encode()))
    new_line = next(line for line in after.split(b'\n') if line.startswith(target.encode()))
    assert after.replace(new_line, old_line) == before
    assert queue.get_job(keep)['status'] == 'pending'


def test_enqueue_upgrades_a_1_0_0_header_before_appending(queue):
    queue.path.parent.mkdir(parents=True)
    queue.path.write_text(ORIGINAL_FILE)
    job_id = queue.enqueue('send_email', {'to': 'e@example.com'})
    lines = queue.path.read_text().split('\n')
    assert tuple(lines[0].split('\t')) == COLUMNS
    assert all(len(line.split('\t')) == len(COLUMNS) for line in lines[1:] if line)
    assert queue.get_job(job_id)['payload'] == {'to': 'e@example.com'}
    assert queue.get_job('aaaaaaaaaaaaaaa1')['status'] == 'pending'


@settings(max_examples=200, deadline=None)
@given(job_type=st.text(min_size=1).filter(lambda t: one_line(t) == t), payload=json_values,
       run_at=st.floats(min_value=0, max_value=4e9))
def test_enqueue_fast_formatter_writes_what_format_line_writes(job_type, payload, run_at):
    payload_json = json.dumps(payload, ensure_ascii=False)
    job = Job('0123456789abcdef', job_type, payload_json, Status.PENDING, 1_800_000_000, run_at)
    line = format_new_line(job.id, job_type, payload_json, 1_800_000_000, format_time(run_at))
    assert line == format_line(job)


@settings(max_examples=500, deadline=None)
@given(seconds=st.floats(min_value=-1e12, max_value=1e12) | st.integers(-10**12, 10**12))
def test_times_are_written_rounded_up_to_the_millisecond(seconds):
    text = format_time(seconds)
    assert float(text or 0) >= seconds            # never early ...
    assert float(text or 0) - seconds <= 0.001    # ... and late by under a millisecond
    whole, _, fraction = text.partition('.')
    assert len(fraction) <= 3 and not fraction.endswith('0') and whole.lstrip('-').isdigit()


@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.text().map(one_line), min_size=12, max_size=12))
def test_lines_are_written_in_the_csv_dialect_of_dbbasic_tsv(fields):
    job = Job(fields[0] or 'x', fields[1] or 't', fields[2], Status.FAILED, 1, 2.5, 3, fields[7],
              fields[8], fields[9], unique_key=fields[10], timeout=1.5, max_attempts=4,
              priority=-2)
    line = format_line(job)
    buffer = io.StringIO()
    csv.writer(buffer, delimiter='\t', quoting=csv.QUOTE_MINIMAL, lineterminator='\n').writerow(
        [job.id, job.type, job.payload_json, 'failed', '1', '2.5', '3', job.error,
         job.result_json, job.worker, '', '', job.unique_key, '1.5', '4', '-2'])
    assert line + '\n' == buffer.getvalue()
    assert split_line(line) == next(csv.reader([line], delimiter='\t'))


# -- every fast reader of lineformat agrees with the plain parser ----------------------------
from dbbasic_queue import lineformat  # noqa: E402

times = (st.integers(0, 4_000_000_000) | st.floats(0, 4e9, allow_nan=False).map(lambda t: round(t, 3))
         | st.sampled_from([0, 1_700_000_000, 1_700_000_000.5, 999_999_999, 10_000_000_000]))
field_text = st.text(st.sampled_from('ab "\t\r\\x é'), max_size=6)


@st.composite
def stored_jobs(draw):
    """A Job as a writer (or a hand edit that still parses) may leave it."""
    status = draw(st.sampled_from(list(Status)))
    return Job(
        id=draw(st.text('0123456789abcdef', min_size=1, max_size=16) | st.just('a"b')),
        type=draw(st.text(st.sampled_from('tyé_ "\t'), min_size=1, max_size=6)),
        payload_json=json.dumps(draw(json_values)), status=status,
        created_at=int(draw(times)), run_at=draw(times), attempts=draw(st.integers(0, 30)),
        error=lineformat.one_line(draw(field_text)), result_json=draw(st.sampled_from(['', '1', '"ok"', '{"a": "b"}'])),
        # No writer puts a tab in a worker (host:pid:start), the error (one_line) or the
        # result (JSON): the counting patterns skip those fields by their tabs.
        worker=draw(st.text(st.sampled_from('ab "\\x é:'), max_size=6))
        if status is Status.PROCESSING else draw(st.sampled_from(['', 'w'])),
        claimed_at=draw(times), finished_at=draw(times), unique_key=draw(field_text),
        timeout=draw(st.sampled_from([0, 1.5, 30])), max_attempts=draw(st.integers(0, 5)),
        priority=draw(st.integers(-3, 3)))


OLDER_HEADERS = [lineformat.SEED_COLUMNS, lineformat.COLUMNS[:12],
                 tuple(reversed(lineformat.COLUMNS))]


def plain(line, header=lineformat.COLUMNS):
    return lineformat.job_or_none(line, header)


def file_of(lines):
    return (lineformat.header_line(lineformat.COLUMNS) + '\n' + ''.join(
        line + '\n' for line in lines)).encode('utf-8', 'surrogateescape')


@settings(max_examples=400, deadline=None)
@given(job=stored_jobs(), crlf=st.booleans())
def test_every_fast_reader_of_a_line_agrees_with_the_plain_parser(job, crlf):
    line = lineformat.format_line(job)
    expected = plain(line)
    assert expected is not None
    text = line + '\r' if crlf else line
    # the cheap columns of a claim
    entry = lineformat.entry_of_line(line)
    assert entry == (expected.status.value, expected.type, expected.run_at,
                     lineformat.Claim(expected.id, expected.worker, expected.claimed_at)
                     if expected.status is Status.PROCESSING else None, expected.priority,
                     float(expected.created_at))
    [read] = lineformat.read_lines((text + '\n').encode('utf-8', 'surrogateescape'), 5,
                                   lambda line: None)
    assert read.entry == entry and (read.start, read.segment) == (5, 5)
    assert lineformat.entry_of_job(job) == entry
    # a claim and a completion that change their fields in place
    claimed = lineformat.claimed_line(line, 'host:1:2', 1_800_000_000.25)
    if claimed is not None:
        assert plain(claimed) == expected.evolve(status=Status.PROCESSING, worker='host:1:2',
                                                 claimed_at=1_800_000_000.25)
        assert lineformat.id_of_line(line) == expected.id
    claim = lineformat.claim_of_line(line, 'host:1:2', lineformat.format_time(1_800_000_000.25))
    assert claim is None or claim == (expected.id, claimed)
    if (expected.status is Status.PENDING and '"' not in line and not expected.worker
            and not expected.claimed_at):
        assert claim is not None   # a plain line is claimed without being parsed
    completed = lineformat.completed_line(line, 3, '{"r": 1}', 1_800_000_001)
    if completed is not None:
        assert plain(completed) == expected.evolve(status=Status.COMPLETED, attempts=3, error='',
                                                   result_json='{"r": 1}', finished_at=1_800_000_001)
    # the counting readers
    times_read = lineformat.status_type_times(text, lineformat.COLUMNS)
    assert times_read == (expected.id, expected.status.value, expected.type,
                          float(expected.created_at), expected.run_at)
    _agrees_with_the_regexes(line, expected)
    # the readers of a whole file
    data = file_of(['x\tnot a job', line])
    assert lineformat.find_line(data, expected.id, print) == expected
    assert lineformat.ids_present(data, {expected.id, 'other'}) == {expected.id}
    assert lineformat.claimed_jobs(data) == ([expected] if expected.status is Status.PROCESSING
                                             else [])
    if expected.unique_key:
        assert lineformat.jobs_with_key(data, expected.unique_key) == [expected]


def _agrees_with_the_regexes(line, job):
    """Each regex matches this line as the parser reads it, or (for a line that is not
    plain: quoted fields, times not of ten whole digits) does not match it at all."""
    data = b'\n' + (line + '\n').encode('utf-8', 'surrogateescape')
    any_line = lineformat.ANY_LINE.findall(data)
    if any_line:
        [m] = any_line
        assert (m[lineformat.ANY_TYPE].decode(), m[lineformat.ANY_STATUS].decode(),
                float(m[lineformat.ANY_CREATED] or 0), float(m[lineformat.ANY_RUN_AT]),
                int(m[lineformat.ANY_PRIORITY] or 0)) == (
            job.type, job.status.value, job.created_at, job.run_at, job.priority)
        if job.status is Status.PROCESSING:
            assert (m[lineformat.ANY_WORKER].decode(), float(m[lineformat.ANY_CLAIMED_AT] or 0)
                    ) == (job.worker, job.claimed_at)
    pending = lineformat.PENDING_LINE.findall(data)
    assert len(pending) <= 1 and (not pending or job.status is Status.PENDING)
    if pending:
        assert (pending[0][lineformat.PENDING_TYPE].decode(),
                int(pending[0][lineformat.PENDING_CREATED]),
                float(pending[0][lineformat.PENDING_RUN_AT])) == (job.type, job.created_at,
                                                                  job.run_at)
    for pattern in (lineformat.COUNT_HEAD, lineformat.COUNT_LINE):
        counted = pattern.findall(data)
        if counted:
            [m] = counted
            status, created = lineformat.status_and_created(m[lineformat.COUNT_STATUS_CREATED])
            assert (m[lineformat.COUNT_ID].decode(), m[lineformat.COUNT_TYPE].decode(),
                    status.decode(), int(created), float(m[lineformat.COUNT_RUN_AT])) == (
                job.id, job.type, job.status.value, job.created_at, job.run_at)
            if pattern is lineformat.COUNT_LINE:
                assert int(m[lineformat.COUNT_FINISHED] or 0) == int(job.finished_at)
    page = lineformat.page_pattern(lineformat.STATUS_BY_WORD, job.type).match(data, 1)
    if page:
        assert (page[lineformat.PAGE_STATUS].decode(),
                page[lineformat.PAGE_PAYLOAD].decode()) == (
            job.status.value, lineformat.quote_field(job.payload_json))
    plain_line = ('\t' not in job.type + job.worker + job.id + job.unique_key
                  and '"' not in job.type + job.id + job.worker
                  and all(_ten_digits(t) for t in (job.created_at, job.run_at)))
    if plain_line:   # a plain line is read by the regexes, never left to the slow way
        assert any_line and lineformat.COUNT_LINE.findall(data) and page
        assert bool(pending) == (job.status is Status.PENDING)


def _ten_digits(seconds):
    text = lineformat.format_time(seconds)
    whole, _, fraction = text.partition('.')
    return len(whole) == 10 and whole.isdigit() and len(fraction) <= 3


@settings(max_examples=200, deadline=None)
@given(job=stored_jobs(), header=st.sampled_from(OLDER_HEADERS))
def test_lines_of_older_columns_read_as_the_plain_parser_reads_them(job, header):
    full = lineformat.split_line(lineformat.format_line(job))
    line = '\t'.join(lineformat.quote_field(full[lineformat.COLUMNS.index(name)])
                     for name in header)
    expected = plain(line, header)
    entry = lineformat.entry_of_older(line, header)
    if expected is None:
        assert entry is None
        return
    assert entry == (expected.status.value, expected.type, expected.run_at,
                     lineformat.Claim(expected.id, expected.worker, expected.claimed_at)
                     if expected.status is Status.PROCESSING else None, expected.priority,
                     float(expected.created_at))
    [read] = lineformat.read_lines((line + '\n').encode('utf-8', 'surrogateescape'), 0,
                                   lambda line: None, older=header)
    assert read.entry == entry


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.sampled_from(['', 'a', '1', '1.5', 'x', '"', '""', '"a""b"', '"a',
                                        'pending']), min_size=16, max_size=16))
def test_a_claim_made_without_parsing_is_the_claim_of_the_parsed_job(fields):
    fields[lineformat.STATUS] = 'pending'
    line = '\t'.join(fields)
    claim = lineformat.claim_of_line(line, 'w', '1800000000.5')
    if claim is None:
        return
    job = plain(line)
    assert job is not None and claim[0] == job.id
    assert plain(claim[1]) == job.evolve(status=Status.PROCESSING, worker='w',
                                         claimed_at=1_800_000_000.5)


@settings(max_examples=300, deadline=None)
@given(line=st.lists(st.sampled_from(list('ab1.\t"-x') + [
    'pending', 'processing', 'completed', '1700000000']), max_size=40).map(''.join))
def test_a_line_the_plain_parser_refuses_is_no_job_to_the_fast_readers(line):
    if plain(line) is not None:
        return
    assert lineformat.entry_of_line(line) is None or lineformat.split_line(line) != line.split('\t')
    assert lineformat.status_type_times(line, lineformat.COLUMNS) is None
