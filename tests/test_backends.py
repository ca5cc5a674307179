"""The behaviour both backends share, run against each: the file and RQ on a real
redis-server. One set of tests, so the two cannot drift."""

import collections
import time

import pytest

from dbbasic_queue import InvalidJobError, Queue
from tests.conftest import spawn, wait_all

NASTY = {'tab': 'a\tb', 'newline': 'a\nb', 'quote': 'say "hi"', 'emoji': '📧🚀',
         'nested': {'list': [1, [2, None]], 'bool': True}, 'big': 'x' * 100_000}


def queue_of(location):
    return Queue(location, backoff_base_seconds=0)


def failing(payload):
    raise ValueError('smtp said\tno\nreally')


def test_enqueue_and_get_job(backend):
    queue = queue_of(backend)
    before = time.time()
    job_id = queue.enqueue('send_email', NASTY)
    job = queue.get_job(job_id)
    assert len(job_id) == 16 and int(job_id, 16) >= 0
    assert job['payload'] == NASTY and job['status'] == 'pending' and job['attempts'] == 0
    assert job['type'] == 'send_email' and job['error'] is None and job['result'] is None
    assert before - 1 <= job['created_at'] <= time.time()
    assert queue.get_job('0123456789abcdef') is None


def test_process_jobs_runs_due_jobs_and_stores_results(backend):
    queue = queue_of(backend)
    ids = [queue.enqueue('add', {'a': n, 'b': n}) for n in range(3)]
    zero = queue.enqueue('zero', {})
    summary = queue.process_jobs({'add': lambda p: p['a'] + p['b'], 'zero': lambda p: {}})
    assert summary == {'completed': 4, 'retried': 0, 'failed': 0, 'recovered': 0}
    assert [queue.get_job(i)['result'] for i in ids] == [0, 2, 4]
    assert queue.get_job(zero)['result'] == {} and queue.get_job(zero)['status'] == 'completed'
    assert queue.get_job(ids[0])['attempts'] == 1


def test_failures_retry_and_end_failed_at_max_attempts(backend):
    queue = queue_of(backend)
    job_id = queue.enqueue('t', {})
    summary = queue.process_jobs({'t': failing}, max_attempts=3)
    assert summary == {'completed': 0, 'retried': 2, 'failed': 1, 'recovered': 0}
    job = queue.get_job(job_id)
    assert (job['status'], job['attempts']) == ('failed', 3)
    assert job['error'] == 'ValueError: smtp said no really'


def test_a_job_succeeding_after_a_failure(backend):
    queue = queue_of(backend)
    calls = []

    def flaky(payload):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError('first time')
        return 'ok'
    job_id = queue.enqueue('t', {})
    queue.process_jobs({'t': flaky})
    job = queue.get_job(job_id)
    assert (job['status'], job['attempts'], job['error'], job['result']) == ('completed', 2, None, 'ok')


def test_per_job_max_attempts(backend):
    queue = queue_of(backend)
    once = queue.enqueue('t', {}, max_attempts=1)
    queue.process_jobs({'t': failing}, max_attempts=5)
    assert (queue.get_job(once)['status'], queue.get_job(once)['attempts']) == ('failed', 1)


def test_routing_leaves_other_types_pending_and_untouched(backend):
    queue = queue_of(backend)
    email = queue.enqueue('send_email', {})
    report = queue.enqueue('build_report', {})
    assert queue.process_jobs({'send_email': lambda p: 'sent'})['completed'] == 1
    job = queue.get_job(report)
    assert (job['status'], job['attempts'], job['error']) == ('pending', 0, None)
    assert queue.process_jobs({'build_report': lambda p: 'built'})['completed'] == 1
    assert queue.get_job(email)['result'] == 'sent'


@pytest.mark.slow
def test_a_job_never_runs_before_its_run_at(backend):
    queue = queue_of(backend)
    run_at = time.time() + 1.5
    job_id = queue.enqueue('t', {}, run_at=run_at)
    ran_at = []
    queue.process_jobs({'t': lambda p: ran_at.append(time.time())})
    assert ran_at == [] and queue.get_job(job_id)['status'] == 'pending'
    time.sleep(max(0.0, run_at - time.time()) + 1.1)
    queue.process_jobs({'t': lambda p: ran_at.append(time.time())})
    assert len(ran_at) == 1 and ran_at[0] >= run_at


def test_due_jobs_run_in_enqueue_order(backend):
    queue = queue_of(backend)
    order = []
    for n in range(5):
        queue.enqueue('t', {'n': n})
    queue.process_jobs({'t': lambda p: order.append(p['n'])})
    assert order == [0, 1, 2, 3, 4]


def test_cancel_job(backend):
    queue = queue_of(backend)
    pending = queue.enqueue('t', {})
    later = queue.enqueue('t', {}, delay=3600)
    assert queue.cancel_job(pending) is True and queue.cancel_job(later) is True
    ran = []
    queue.process_jobs({'t': ran.append})
    assert ran == []
    assert queue.get_job(pending)['status'] == 'cancelled'
    assert queue.cancel_job(pending) is False
    done = queue.enqueue('t', {})
    queue.process_jobs({'t': lambda p: 1})
    assert queue.cancel_job(done) is False
    assert queue.cancel_job('0123456789abcdef') is False


def test_bad_input_raises_and_adds_no_job(backend):
    queue = queue_of(backend)
    for args, options in [(('', {}), {}), (('t', {1, 2}), {}), (('t', {'x': float('nan')}), {}),
                          (('t', {}), {'run_at': 'tomorrow'}), (('t', {}), {'priority': 1.5}),
                          (('t', {}), {'timeout': -1}), (('t', {}), {'unique_key': ''})]:
        with pytest.raises(InvalidJobError):
            queue.enqueue(*args, **options)
    assert queue.list_jobs() == []


def test_a_unique_key_gives_back_the_active_job(backend):
    queue = queue_of(backend)
    first = queue.enqueue('report', {'n': 1}, unique_key='nightly')
    assert queue.enqueue('report', {'n': 2}, unique_key='nightly') == first
    queue.process_jobs({'report': lambda p: p['n']})
    assert queue.get_job(first)['result'] == 1
    assert queue.enqueue('report', {'n': 3}, unique_key='nightly') != first


def test_a_timeout_fails_the_attempt(backend):
    queue = queue_of(backend)
    job_id = queue.enqueue('sleep', {}, timeout=0.3, max_attempts=1)
    queue.process_jobs({'sleep': lambda p: time.sleep(5)})
    job = queue.get_job(job_id)
    assert job['status'] == 'failed' and job['error'].startswith('TimeoutError: ')


def test_stats_and_list(backend):
    queue = queue_of(backend)
    queue.enqueue('a', {})
    queue.enqueue('b', {})
    queue.process_jobs({'a': lambda p: 1})
    stats = queue.stats()
    assert stats['by_status']['completed'] == 1 and stats['by_status']['pending'] == 1
    assert stats['by_type']['b']['pending'] == 1
    assert [j['type'] for j in queue.list_jobs(status='pending')] == ['b']


PRODUCER = '''
import sys
from dbbasic_queue import Queue
queue = Queue(sys.argv[1])
print('\\n'.join(queue.enqueue('work', {'n': sys.argv[2] + str(n)}) for n in range(int(sys.argv[3]))))
'''

WORKER = '''
import os, sys, time
from dbbasic_queue import Queue
queue, log_path, deadline = Queue(sys.argv[1]), sys.argv[2], time.time() + float(sys.argv[3])
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
while time.time() < deadline:
    queue.process_jobs({'work': lambda p: os.write(log, (p['n'] + '\\n').encode())})
    time.sleep(0.05)
'''


@pytest.mark.slow
def test_concurrent_producers_and_workers_run_each_job_exactly_once(backend, tmp_path):
    log_path = tmp_path / 'executions.log'
    workers = [spawn(WORKER, backend, log_path, 8) for _ in range(2)]
    producers = [spawn(PRODUCER, backend, f'p{i}-', 150) for i in range(3)]
    produced = wait_all(producers)
    for code, _, err in wait_all(workers) + produced:
        assert code == 0, err
    ids = [i for _, out, _ in produced for i in out.split()]
    executed = collections.Counter(log_path.read_text().split())
    assert len(ids) == len(set(ids)) == 450
    assert len(executed) == 450 and set(executed.values()) == {1}
    queue = queue_of(backend)
    assert all(queue.get_job(i)['status'] == 'completed' for i in ids)


def test_purge_by_count_keeps_the_newest_and_never_unnamed_statuses(backend):
    queue = queue_of(backend)
    ids = [queue.enqueue('t', {'n': n}) for n in range(5)]
    broken = queue.enqueue('broken', {})
    queue.process_jobs({'broken': failing}, max_attempts=1)
    for _ in ids:   # one at a time, so they finish in order
        queue.process_jobs({'t': lambda p: p['n']}, max_jobs=1)
        time.sleep(0.02)
    assert [queue.get_job(i)['status'] for i in ids] == ['completed'] * 5
    with pytest.raises(ValueError, match='older_than_seconds, keep, or both'):
        queue.purge(['completed'])
    with pytest.raises(ValueError, match='keep must be an int >= 0'):
        queue.purge(['completed'], keep=-1)
    assert sorted(queue.purge(['completed'], keep=4, dry_run=True)) == [ids[0]]
    assert sorted(queue.purge(['completed'], 3600, keep=4)) == [ids[0]]   # either limit
    assert sorted(queue.purge(['completed', 'failed'], keep=3)) == sorted([ids[1], broken])
    assert [queue.get_job(i) is None for i in ids] == [True, True, False, False, False]
    assert queue.purge(['completed'], keep=0) and queue.get_job(ids[4]) is None
