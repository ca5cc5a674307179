"""Job options: timeouts, priorities, unique jobs, per-job attempts, delays (issue 6)."""

import collections
import time
from datetime import timedelta

import pytest

from dbbasic_queue import InvalidJobError, Queue
from dbbasic_queue.lineformat import COLUMNS
from tests.conftest import spawn, wait_all


def test_a_handler_running_past_its_timeout_fails_that_attempt_and_the_worker_goes_on(queue, clock):
    slow = queue.enqueue('sleep', {'seconds': 60}, timeout=0.2, max_attempts=2)
    quick = queue.enqueue('sleep', {'seconds': 0})
    started = time.monotonic()
    summary = queue.process_jobs({'sleep': lambda p: time.sleep(p['seconds'])})
    assert time.monotonic() - started < 30   # interrupted, not slept out (a hang detector)
    assert summary == {'completed': 1, 'retried': 1, 'failed': 0, 'recovered': 0}
    job = queue.get_job(slow)
    assert (job['status'], job['attempts']) == ('pending', 1)
    assert job['error'] == 'TimeoutError: job ran longer than its timeout of 0.2 s'
    assert queue.get_job(quick)['status'] == 'completed'
    clock.advance(10_000)
    queue.process_jobs({'sleep': lambda p: time.sleep(p['seconds'])})
    assert queue.get_job(slow)['status'] == 'failed'


def test_a_broad_except_in_the_handler_cannot_swallow_the_timeout(queue):
    def stubborn(payload):
        try:
            time.sleep(5)
        except Exception:
            return 'swallowed'
    job_id = queue.enqueue('stubborn', {})
    queue.process_jobs({'stubborn': stubborn}, timeout=0.2, max_attempts=1)
    assert queue.get_job(job_id)['status'] == 'failed'


@pytest.mark.slow
def test_process_jobs_timeout_is_the_default_and_a_jobs_own_wins(queue):
    default = queue.enqueue('sleep', {'seconds': 0.5})
    generous = queue.enqueue('sleep', {'seconds': 0.5}, timeout=5)
    queue.process_jobs({'sleep': lambda p: time.sleep(p['seconds'])}, timeout=0.1, max_attempts=1)
    assert queue.get_job(default)['error'].startswith('TimeoutError')
    assert queue.get_job(generous)['status'] == 'completed'


def test_due_jobs_run_by_priority_then_run_at_then_enqueue_order(queue, clock):
    order = []
    now = clock.now
    queue.enqueue('t', {'n': 'old-normal'}, run_at=now - 100)
    queue.enqueue('t', {'n': 'low'}, run_at=now - 500, priority=-1)
    queue.enqueue('t', {'n': 'urgent-late'}, run_at=now - 1, priority=10)
    queue.enqueue('t', {'n': 'urgent-early'}, run_at=now - 50, priority=10)
    queue.enqueue('t', {'n': 'new-normal'})
    queue.enqueue('t', {'n': 'urgent-future'}, run_at=now + 100, priority=99)
    queue.process_jobs({'t': lambda p: order.append(p['n'])})
    assert order == ['urgent-early', 'urgent-late', 'old-normal', 'new-normal', 'low']


def test_a_unique_key_returns_the_active_job_instead_of_adding_one(queue):
    first = queue.enqueue('report', {'day': 1}, unique_key='report:2026-11-27')
    assert queue.enqueue('report', {'day': 2}, unique_key='report:2026-11-27') == first
    other = queue.enqueue('report', {}, unique_key='report:2026-11-28')
    assert other != first
    assert queue.path.read_text().count('report:2026-11-27') == 1
    queue.process_jobs({'report': lambda p: p.get('day')})
    assert queue.get_job(first)['result'] == 1
    again = queue.enqueue('report', {'day': 3}, unique_key='report:2026-11-27')
    assert again != first  # the first finished: the key is free again


def test_a_unique_key_is_taken_while_the_job_is_processing(queue):
    answers = []
    first = queue.enqueue('report', {}, unique_key='k"ey with quote')
    queue.process_jobs({'report': lambda p: answers.append(
        queue.enqueue('report', {}, unique_key='k"ey with quote'))})
    assert answers == [first]


def test_concurrent_enqueuers_with_one_unique_key_make_one_job(tmp_path):
    path = tmp_path / 'data' / 'queue.tsv'
    Queue(path).enqueue('warm', {})
    code = '''
import sys
from dbbasic_queue import Queue
queue = Queue(sys.argv[1])
print('\\n'.join(queue.enqueue('report', {}, unique_key='nightly') for _ in range(50)))
'''
    results = wait_all([spawn(code, path) for _ in range(4)])
    ids = collections.Counter(i for code_, out, err in results for i in out.split())
    assert all(code_ == 0 for code_, _, _ in results), results
    assert len(ids) == 1 and sum(ids.values()) == 200
    assert path.read_text().count('nightly') == 1


def test_per_job_max_attempts_overrides_the_process_jobs_default(queue, clock):
    once = queue.enqueue('fail', {}, max_attempts=1)
    many = queue.enqueue('fail', {}, max_attempts=5)
    default = queue.enqueue('fail', {})
    for _ in range(6):
        queue.process_jobs({'fail': lambda p: 1 / 0}, max_attempts=2)
        clock.advance(100_000)
    assert [queue.get_job(i)['attempts'] for i in (once, many, default)] == [1, 5, 2]
    assert {queue.get_job(i)['status'] for i in (once, many, default)} == {'failed'}


def test_delay_is_run_at_now_plus_seconds_or_a_timedelta(queue, clock):
    assert queue.get_job(queue.enqueue('t', {}, delay=90))['run_at'] == clock.now + 90
    assert queue.get_job(queue.enqueue('t', {}, delay=timedelta(hours=1)))['run_at'] == clock.now + 3600


@pytest.mark.parametrize('options,message', [
    ({'timeout': -1}, r'timeout must be seconds > 0, got -1'),
    ({'timeout': 0}, r'timeout must be seconds > 0, got 0'),
    ({'timeout': 'soon'}, r"timeout must be seconds > 0, got 'soon'"),
    ({'priority': 1.5}, r'priority must be an int, got 1.5'),
    ({'priority': '9'}, r"priority must be an int, got '9'"),
    ({'priority': True}, r'priority must be an int, got True'),
    ({'unique_key': ''}, r"unique_key must be a non-empty one-line str, got ''"),
    ({'unique_key': 'a\tb'}, r'unique_key must be a non-empty one-line str'),
    ({'unique_key': 7}, r'unique_key must be a non-empty one-line str, got 7'),
    ({'max_attempts': 0}, r'max_attempts must be an int >= 1, got 0'),
    ({'max_attempts': 2.0}, r'max_attempts must be an int >= 1, got 2.0'),
    ({'delay': -5}, r'delay must be seconds >= 0 or a timedelta, got -5'),
    ({'delay': timedelta(seconds=-1)}, r'delay must be seconds >= 0'),
    ({'delay': 5, 'run_at': 10}, r'give run_at or delay, not both'),
])
def test_bad_option_values_raise_and_write_nothing(queue, options, message):
    queue.enqueue('t', {})
    before = queue.path.read_bytes()
    with pytest.raises(InvalidJobError, match=message):
        queue.enqueue('t', {}, **options)
    assert queue.path.read_bytes() == before


def test_process_jobs_rejects_a_bad_default_timeout(queue):
    with pytest.raises(ValueError, match='timeout must be seconds > 0, got -1'):
        queue.process_jobs({}, timeout=-1)


TWELVE_COLUMN_FILE = (
    '\t'.join(COLUMNS[:12]) + '\n'
    'bbbbbbbbbbbbbbb1\tt\t{}\tpending\t1700000000\t1700000000\t0\t\t\t\t\t\n'
    'bbbbbbbbbbbbbbb2\tt\t{}\tpending\t1700000000\t1700000001\t0\t\t\t\t\t\n'
)


def test_a_file_of_our_earlier_format_reads_and_is_upgraded_on_its_next_rewrite(queue):
    queue.path.parent.mkdir(parents=True)
    queue.path.write_text(TWELVE_COLUMN_FILE)
    assert queue.get_job('bbbbbbbbbbbbbbb1')['status'] == 'pending'
    queue.process_jobs({'t': lambda p: 'ok'}, max_jobs=1)
    lines = queue.path.read_text().splitlines()
    assert tuple(lines[0].split('\t')) == COLUMNS
    assert len(lines[1].split('\t')) == len(COLUMNS)
    urgent = queue.enqueue('t', {}, priority=5)
    order = []
    queue.process_jobs({'t': lambda p: order.append(1)})
    assert queue.get_job(urgent)['status'] == queue.get_job('bbbbbbbbbbbbbbb2')['status'] == 'completed'
