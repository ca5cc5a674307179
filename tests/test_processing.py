"""Retries (guarantee 5), scheduling (7) and cancel_job (8) on the file, with a fake clock.

Routing (6) and a success after a failure are in test_backends.py, run on both backends."""

import logging
import os
import subprocess
import signal
import sys
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbbasic_queue import Queue, liveness
from dbbasic_queue.job import Job, Status
from dbbasic_queue.lineformat import format_line
from dbbasic_queue import scan as scan_module
from tests.conftest import SUBPROCESS_TIMEOUT_SECONDS


def failing(payload):
    raise ValueError('smtp said\tno\nreally')


def test_a_failure_retries_with_exponential_backoff_from_a_60_second_base(queue, clock):
    job_id = queue.enqueue('t', {})
    assert queue.process_jobs({'t': failing}) == {
        'completed': 0, 'retried': 1, 'failed': 0, 'recovered': 0}
    job = queue.get_job(job_id)
    assert job['status'] == 'pending' and job['attempts'] == 1
    # 1.0.0: 60 * 2**attempts; we add up to 25 % jitter.
    assert 120 <= job['run_at'] - clock.now <= 150
    clock.advance(151)
    queue.process_jobs({'t': failing})
    job = queue.get_job(job_id)
    assert job['attempts'] == 2 and 240 <= job['run_at'] - clock.now <= 300


def test_backoff_base_is_configurable_and_capped(tmp_path, clock):
    queue = Queue(tmp_path / 'q.tsv', clock=clock, backoff_base_seconds=5)
    assert 10 <= queue.backoff_seconds(1) <= 12.5
    assert queue.backoff_seconds(30) == 3600


def test_at_max_attempts_a_job_is_failed_and_kept(queue, clock):
    job_id = queue.enqueue('t', {})
    for _ in range(3):
        queue.process_jobs({'t': failing}, max_attempts=3)
        clock.advance(10_000)
    job = queue.get_job(job_id)
    assert job['status'] == 'failed' and job['attempts'] == 3
    assert job['error'] == 'ValueError: smtp said no really'
    assert queue.process_jobs({'t': failing}) == {
        'completed': 0, 'retried': 0, 'failed': 0, 'recovered': 0}
    assert job_id in queue.archive_path.read_text()


def test_max_attempts_counts_executions_so_one_means_no_retry(queue):
    job_id = queue.enqueue('t', {})
    assert queue.process_jobs({'t': failing}, max_attempts=1)['failed'] == 1
    assert queue.get_job(job_id)['attempts'] == 1


def test_the_traceback_goes_to_the_dbbasic_queue_logger(queue, caplog):
    queue.enqueue('t', {})
    with caplog.at_level(logging.ERROR, logger='dbbasic_queue'):
        queue.process_jobs({'t': failing})
    record = caplog.records[-1]
    assert record.name == 'dbbasic_queue' and record.exc_info[0] is ValueError
    assert 'Traceback' in caplog.text


def test_a_job_never_runs_before_its_run_at(queue, clock):
    job_id = queue.enqueue('t', {}, run_at=clock.now + 60.5)
    ran = []
    queue.process_jobs({'t': ran.append})
    clock.advance(60.4)
    queue.process_jobs({'t': ran.append})
    assert ran == [] and queue.get_job(job_id)['status'] == 'pending'
    clock.advance(0.1)
    queue.process_jobs({'t': ran.append})
    assert ran == [{}]


def test_due_jobs_run_in_run_at_order_then_enqueue_order(queue, clock):
    order = []
    now = clock.now
    queue.enqueue('t', {'n': 'late'}, run_at=now - 10)
    queue.enqueue('t', {'n': 'first'}, run_at=now - 100)
    queue.enqueue('t', {'n': 'tie-1'}, run_at=now - 50)
    queue.enqueue('t', {'n': 'tie-2'}, run_at=now - 50)
    queue.enqueue('t', {'n': 'future'}, run_at=now + 10)
    queue.process_jobs({'t': lambda p: order.append(p['n'])})
    assert order == ['first', 'tie-1', 'tie-2', 'late']


def test_cancel_job_cancels_a_pending_job_which_then_never_runs(queue):
    job_id = queue.enqueue('t', {})
    assert queue.cancel_job(job_id) is True
    ran = []
    queue.process_jobs({'t': ran.append})
    assert ran == []
    job = queue.get_job(job_id)
    assert (job['status'], job['error']) == ('cancelled', 'Cancelled by user')
    assert queue.cancel_job(job_id) is False


def test_cancel_job_is_false_for_finished_failed_running_and_unknown_jobs(queue, clock):
    done = queue.enqueue('ok', {})
    failed = queue.enqueue('bad', {})
    queue.process_jobs({'ok': lambda p: 1, 'bad': failing}, max_attempts=1)
    assert queue.cancel_job(done) is False
    assert queue.cancel_job(failed) is False
    assert queue.cancel_job('0123456789abcdef') is False
    assert queue.cancel_job(None) is False

    running = queue.enqueue('slow', {})
    answers = []
    queue.process_jobs({'slow': lambda p: answers.append(queue.cancel_job(running))})
    assert answers == [False]
    assert queue.get_job(running)['status'] == 'completed'


def test_cancelled_jobs_move_to_the_archive_at_the_next_worker_run(queue):
    job_id = queue.enqueue('t', {})
    queue.cancel_job(job_id)
    queue.process_jobs({'other': print})
    assert job_id not in queue.path.read_text()
    assert queue.archive_path.read_text().count(job_id) == 1
    assert queue.get_job(job_id)['status'] == 'cancelled'


def _dead_worker():
    """The worker text of a process on this host that has exited."""
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    marker = liveness.start_marker(proc.pid)
    proc.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    return f'{liveness.HOST}:{proc.pid}:{marker}'


@pytest.mark.parametrize('odd', ['due', 'run_at 0', 'dead claim', 'cancelled', 'not a job'])
def test_the_first_poll_of_a_fresh_worker_acts_on_any_line_among_future_jobs(tmp_path, clock,
                                                                               odd, caplog):
    # The first poll of a process reads the file in one regex pass; it must still see
    # every line that needs work, wherever it is.
    queue = Queue(tmp_path / 'q.tsv', clock=clock)
    for n in range(50):
        queue.enqueue('t', {'n': n}, run_at=clock.now + 3600)
    job = Job('d' * 16, 't', '{"odd": 1}', Status.PENDING, int(clock.now), clock.now + 3600)
    line = {
        'due': lambda: format_line(job.evolve(run_at=clock.now - 1)),
        'run_at 0': lambda: format_line(job.evolve(run_at=0)),
        'dead claim': lambda: format_line(job.evolve(status=Status.PROCESSING, worker=_dead_worker(),
                                                     claimed_at=clock.now - 5)),
        'cancelled': lambda: format_line(job.evolve(status=Status.CANCELLED, finished_at=clock.now)),
        'not a job': lambda: 'a line someone typed',
    }[odd]()
    with open(queue.path, 'a') as f:
        f.write(line[:25] + '\n' + line[25:] + '\n' if odd == 'not a job' else line + '\n')
    ran = []
    with caplog.at_level(logging.WARNING, logger='dbbasic_queue'):
        summary = Queue(queue.path, clock=clock).process_jobs({'t': ran.append})
    if odd in ('due', 'run_at 0'):
        assert ran == [{'odd': 1}]
    elif odd == 'dead claim':
        assert summary['recovered'] == 1 and queue.get_job('d' * 16)['status'] == 'pending'
    elif odd == 'cancelled':
        assert 'd' * 16 not in queue.path.read_text() and ran == []
        assert queue.get_job('d' * 16)['status'] == 'cancelled'
    else:
        assert 'kept a line that is not a job' in caplog.text and ran == []


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(
    st.sampled_from([Status.PENDING, Status.PENDING, Status.PROCESSING, Status.CANCELLED, None]),
    st.sampled_from(['t', 'pending', '"q"', 'a b']),
    st.sampled_from([0, 5, 1e9, 1_800_000_000, 1_800_000_000.5, 1_800_000_000.001, 9_999_999_999.999,
                     10_000_000_000, 1_799_999_999.25]),
    st.sampled_from(['', 'pending', '1800000000']),
    st.sampled_from([0, 0, 3, -2]),
    st.sampled_from(['h:1:a', 'h:2:', 'a\tb']),
    st.text(alphabet='ab\tpending0123456789"', max_size=30)), max_size=12),
    segment_bytes=st.sampled_from([1, 120, 700, 1 << 20]))
@pytest.mark.slow
def test_segments_counted_in_c_agree_with_a_parse_of_every_line(lines, segment_bytes):
    # The regexes that count a segment (scan._segment) may give up and read line by
    # line, but what they count is what reading every line counts.
    text_lines = []
    for status, job_type, run_at, unique_key, priority, worker, junk in lines:
        if status is None:
            text_lines.append(junk.replace('\n', '') or 'x')
        else:
            text_lines.append(format_line(Job(
                'ab' * 8, job_type, '{"k": "pending"}', status, int(run_at), run_at,
                unique_key=unique_key,
                max_attempts=1_800_000_000, priority=priority,
                worker=worker if status is Status.PROCESSING else '',
                claimed_at=run_at if status is Status.PROCESSING else 0)))
    data = ''.join(line + '\n' for line in text_lines).encode()
    if not data:
        return
    kept, scan_module.SEGMENT_BYTES = scan_module.SEGMENT_BYTES, segment_bytes
    try:
        segments = scan_module.summarize(data, 7, lambda line: None)
    finally:
        scan_module.SEGMENT_BYTES = kept
    assert [(s.start, s.end) for s in segments] == list(zip(
        [7] + [s.end for s in segments[:-1]], [s.start for s in segments[1:]] + [7 + len(data)]))
    exact = scan_module._segment_of_lines(data, 7, scan_module.read_lines(
        data, 7, lambda line: None), 0)
    together = segments[0] if segments else exact
    for segment in segments[1:]:
        together = scan_module._merged(together, segment, b'')
    assert ({t: tuple(v) for t, v in together.pending.items()}
            == {t: tuple(v) for t, v in exact.pending.items()})
    assert (together.claims, together.finished) == (exact.claims, exact.finished)
    assert together.oldest == exact.oldest   # the earliest created_at of a pending job
    top = max((p for status, _, _, _, p, _, _ in lines if status is not None), default=0)
    assert together.top_priority >= top   # a bound: no job in it has a higher priority
    assert [s.crc for s in segments] == [zlib.crc32(data[s.start - 7:s.end - 7]) for s in segments]


@pytest.mark.parametrize('other', [None, 'processing', 'a "quoted" type'])
def test_a_segment_keeps_the_oldest_created_at_of_its_pending_lines(other):
    # stats adds it up (tally.of_index). Each way of counting a segment: a regex for
    # pending lines only, one for any line (a claim here), and line by line (a quoted type).
    def line(created_at, status=Status.PENDING, job_type='t'):
        return format_line(Job('ab' * 8, job_type, '{}', status, created_at, 1_900_000_000,
                               worker='h:1:a' if status is Status.PROCESSING else ''))
    lines = [line(1_800_000_005), line(1_800_000_001), line(1_800_000_009)]
    if other == 'processing':
        lines.append(line(1_700_000_000, Status.PROCESSING))
    elif other:
        lines.append(line(1_700_000_000, job_type=other))
    data = ''.join(text + '\n' for text in lines).encode()
    [segment] = scan_module.summarize(data, 7, lambda line: None)
    assert segment.oldest == (1_700_000_000 if other == 'a "quoted" type' else 1_800_000_001)


@pytest.mark.parametrize('exit_by', ['max_seconds', 'a second Ctrl-C'])
def test_claimed_jobs_not_started_go_back_pending_without_an_attempt(queue, monkeypatch, exit_by):
    # One big batch, so most jobs are claimed when the run ends.
    monkeypatch.setattr('dbbasic_queue.claims.MIN_BATCH_SECONDS', 100)
    ids = [queue.enqueue('t', {'n': n}) for n in range(40)]

    def handler(payload):
        if payload['n'] == 10 and exit_by != 'max_seconds':
            os.kill(os.getpid(), signal.SIGINT)   # asks the worker to stop after this job
            os.kill(os.getpid(), signal.SIGINT)   # the second one interrupts this job
        time.sleep(0.02 if exit_by == 'max_seconds' else 0)
        return payload['n']

    if exit_by == 'max_seconds':
        queue.process_jobs({'t': handler}, max_seconds=0.3)
    else:
        # Python's own Ctrl-C handler (an RQ worker earlier in this process replaced it).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with pytest.raises(KeyboardInterrupt):
                queue.process_jobs({'t': handler})
        finally:
            signal.signal(signal.SIGINT, previous)
    jobs = [queue.get_job(job_id) for job_id in ids]
    done = [job for job in jobs if job['status'] == 'completed']
    waiting = [job for job in jobs if job['status'] == 'pending']
    assert len(done) + len(waiting) == 40 and 1 < len(done) < 30
    assert {job['attempts'] for job in waiting} == {0}
    if exit_by != 'max_seconds':
        assert jobs[10]['status'] == 'pending' and len(done) == 10


def test_a_job_enqueued_with_options_is_due_at_once(tmp_path):
    # The clock stands still at a time that is not a whole millisecond: a stored run_at
    # rounded up would be in the future, and the job would wait for the next poll.
    queue = Queue(tmp_path / 'q.tsv', clock=lambda: 1_800_000_000.0004)
    job_id = queue.enqueue('t', {}, max_attempts=1, priority=1)
    assert queue.process_jobs({'t': lambda payload: 'ran'})['completed'] == 1
    assert queue.get_job(job_id)['result'] == 'ran'


def test_the_lines_a_small_file_keeps_between_rewrites_are_those_its_bytes_hold(
        tmp_path, monkeypatch):
    # A small hot file keeps the Lines of the segments a rewrite wrote, made from the
    # lines it changed, not read, and counts the segments from them: each must be what
    # reading those bytes gives (the plain oracle), through claims, completions, retries,
    # give-backs, negative priorities and other workers' lines.
    from dbbasic_queue.lineformat import read_lines
    monkeypatch.setattr(scan_module, 'SEGMENT_BYTES', 2048)   # ~15 lines a segment
    checked = []
    after_rewrite = scan_module.Index.after_rewrite

    def checked_after(index, *args):
        after_rewrite(index, *args)
        assert index.kept_lines
        for start, (segment, lines) in index.kept_lines.items():
            assert segment in index.segments and segment.start == start
            data = index.segment_bytes(segment)
            assert lines == read_lines(data, start, lambda line: None)
            # and its counts, made from them, are what counting its bytes gives
            assert segment.as_json() == scan_module._segment(data, start, print).as_json()
        checked.append(len(index.kept_lines))
    monkeypatch.setattr(scan_module.Index, 'after_rewrite', checked_after)
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    for n in range(120):
        queue.enqueue('fails' if n % 7 == 0 else 'ok', {'n': n, 'text': 'a "quoted" word'},
                      priority=n % 3 - 1)
    other = f'{liveness.HOST}:{os.getppid()}:{liveness.start_marker(os.getppid())}'
    with open(path, 'a') as f:   # another live worker's claim, and a hand edit
        f.write(format_line(Job('cafe', 'ok', '{}', Status.PROCESSING, int(time.time()),
                                time.time(), worker=other, claimed_at=time.time())) + '\n')
        f.write('not a job\n')

    def fails(payload):
        raise ValueError('no')
    summary = queue.process_jobs({'ok': lambda p: None, 'fails': fails}, max_attempts=2)
    assert summary['completed'] == 120 - 18 and sum(summary.values()) == 120
    assert len(checked) >= 3
    assert queue.stats()['by_status']['pending'] == 18   # retries, after their backoff
