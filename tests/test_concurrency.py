"""Locking (guarantee 1), never two at once (3), fresh reads across processes (12).

Real processes, a real shared file, an O_APPEND execution log written by the handlers.
"""

import collections
import os
import time

import pytest

from dbbasic_queue import Queue
from tests.conftest import spawn, wait_all

ENQUEUER = '''
import sys
from dbbasic_queue import Queue
queue = Queue(sys.argv[1])
ids = [queue.enqueue('work', {'producer': sys.argv[2], 'n': n}) for n in range(int(sys.argv[3]))]
print('\\n'.join(ids))
'''

WORKER = '''
import os, sys, time
from dbbasic_queue import Queue
queue, log_path, deadline = Queue(sys.argv[1]), sys.argv[2], time.time() + float(sys.argv[3])
sleep_seconds = float(sys.argv[4])

def work(payload):
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f'{os.getpid()} start {payload["producer"]}:{payload["n"]}\\n'.encode())
    time.sleep(sleep_seconds)
    os.write(fd, f'{os.getpid()} end {payload["producer"]}:{payload["n"]}\\n'.encode())
    os.close(fd)

while time.time() < deadline:
    queue.process_jobs({'work': work})
    time.sleep(0.01)
'''


def read_log(path):
    return [line.split() for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_concurrent_enqueuers_and_workers_lose_nothing_and_run_each_job_once(tmp_path):
    queue_path, log_path = tmp_path / 'data' / 'queue.tsv', tmp_path / 'executions.log'
    per_producer = 300
    workers = [spawn(WORKER, queue_path, log_path, 6, 0) for _ in range(2)]
    producers = [spawn(ENQUEUER, queue_path, f'p{i}', per_producer) for i in range(3)]
    produced = wait_all(producers)
    wait_all(workers)
    for returncode, _, err in produced:
        assert returncode == 0, err
    enqueued = [job_id for _, out, _ in produced for job_id in out.split()]
    assert len(enqueued) == len(set(enqueued)) == 3 * per_producer

    queue = Queue(queue_path)
    everything = queue.path.read_text() + queue.archive_path.read_text()
    for job_id in enqueued:
        assert everything.count(job_id) == 1
        assert queue.get_job(job_id)['status'] == 'completed'
    starts = collections.Counter(job for _, event, job in read_log(log_path) if event == 'start')
    assert len(starts) == 3 * per_producer and set(starts.values()) == {1}


@pytest.mark.slow
def test_two_overlapping_cron_runs_never_run_the_same_job(tmp_path):
    queue_path, log_path = tmp_path / 'data' / 'queue.tsv', tmp_path / 'executions.log'
    queue = Queue(queue_path)
    ids = [queue.enqueue('work', {'producer': 'seed', 'n': n}) for n in range(40)]
    runs = [spawn(WORKER, queue_path, log_path, 0.5, 0.02) for _ in range(2)]
    for returncode, _, err in wait_all(runs):
        assert returncode == 0, err
    events = read_log(log_path)
    starts = collections.Counter(job for _, event, job in events if event == 'start')
    assert set(starts.values()) == {1} and len(starts) == 40
    # Both runs worked, and no job was ever started by one while running in the other.
    assert len({pid for pid, _, _ in events}) == 2
    running = {}
    for pid, event, job in events:
        if event == 'start':
            assert job not in running
            running[job] = pid
        else:
            assert running.pop(job) == pid
    assert all(queue.get_job(job_id)['status'] == 'completed' for job_id in ids)


def test_a_long_lived_process_sees_jobs_other_processes_enqueued(tmp_path):
    queue_path = tmp_path / 'data' / 'queue.tsv'
    long_lived = Queue(queue_path)
    long_lived.enqueue('t', {})
    assert long_lived.process_jobs({'t': lambda p: 1})['completed'] == 1
    for _ in range(2):
        returncode, out, err = wait_all([spawn(ENQUEUER, queue_path, 'other', 2)])[0]
        assert returncode == 0, err
        first, second = out.split()
        assert long_lived.get_job(first)['status'] == 'pending'
        assert long_lived.cancel_job(first) is True
        assert long_lived.process_jobs({'work': lambda p: 'done'})['completed'] == 1
        assert long_lived.get_job(second)['result'] == 'done'
        assert long_lived.get_job(first)['status'] == 'cancelled'


def test_a_job_finished_by_another_process_is_seen_as_finished(tmp_path):
    queue_path, log_path = tmp_path / 'data' / 'queue.tsv', tmp_path / 'executions.log'
    long_lived = Queue(queue_path)
    job_id = long_lived.enqueue('work', {'producer': 'x', 'n': 1})
    assert long_lived.get_job(job_id)['status'] == 'pending'
    wait_all([spawn(WORKER, queue_path, log_path, 0.2, 0)])
    assert long_lived.get_job(job_id)['status'] == 'completed'
    assert long_lived.cancel_job(job_id) is False


def test_a_forked_child_does_not_share_its_parents_lock(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    queue.enqueue('t', {})  # the lock file is open in this process now
    read_end, write_end = os.pipe()
    with queue.backend.table.lock:
        pid = os.fork()
        if pid == 0:  # child: its enqueue must wait for the parent's lock
            started = time.monotonic()
            queue.enqueue('t', {'from': 'child'})
            os.write(write_end, f'{time.monotonic() - started:.3f}'.encode())
            os._exit(0)
        time.sleep(0.5)
    os.close(write_end)
    waited = float(os.read(read_end, 64).decode())
    os.waitpid(pid, 0)
    assert waited >= 0.4
    assert queue.process_jobs({'t': lambda p: 1})['completed'] == 2


def test_cancels_while_other_processes_enqueue_lose_no_job(tmp_path):
    # cancel_job rewrites the file outside the lock and carries the lines appended
    # meanwhile: every job enqueued during the cancels must still be there.
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    targets = [queue.enqueue('work', {'n': n, 'padding': 'x' * 200}) for n in range(3000)]
    producers = [spawn(ENQUEUER, queue.path, f'p{i}', 1500) for i in range(2)]
    cancelled = []
    for job_id in targets[::100]:
        cancelled.append(queue.cancel_job(job_id))
        time.sleep(0.002)
    produced = wait_all(producers)
    for returncode, _, err in produced:
        assert returncode == 0, err
    enqueued = [job_id for _, out, _ in produced for job_id in out.split()]
    assert len(enqueued) == 3000 and all(cancelled)
    lines = queue.path.read_text().splitlines()[1:]
    assert len(lines) == 3000 + 3000
    ids = {line.split('\t', 1)[0] for line in lines}
    assert ids == set(targets) | set(enqueued)
    assert {queue.get_job(job_id)['status'] for job_id in targets[::100]} == {'cancelled'}


def test_a_forked_child_claims_jobs_under_its_own_pid(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    queue.process_jobs({'t': print})   # the parent has polled (and knows its own identity)
    job_id = queue.enqueue('t', {})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        queue.process_jobs({'t': lambda payload: os.write(write_end, queue.find_job(job_id).worker.encode())})
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        worker = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0
    assert worker.split(':')[-2] == str(pid)
    assert queue.get_job(job_id)['status'] == 'completed'


@pytest.mark.slow
def test_a_purge_while_a_worker_finishes_jobs_loses_none_of_them(tmp_path):
    # purge filters the archive outside the lock; jobs archived meanwhile must survive.
    queue_path, log_path = tmp_path / 'data' / 'queue.tsv', tmp_path / 'executions.log'
    queue = Queue(queue_path)
    old = [queue.enqueue('work', {'producer': 'old', 'n': n, 'pad': 'x' * 300}) for n in range(4000)]
    queue.process_jobs({'work': lambda p: None})
    new = [queue.enqueue('work', {'producer': 'new', 'n': n}) for n in range(1000)]
    worker = spawn(WORKER, queue_path, log_path, 4, 0.002)
    time.sleep(0.3)   # the worker is busy archiving when the purges run
    purged = []
    for _ in range(5):
        purged += queue.purge(['completed'], keep=0)
        time.sleep(0.05)
    wait_all([worker])
    archived = {line.split('\t', 1)[0] for line in queue.archive_path.read_text().splitlines()[1:]}
    assert set(old) <= set(purged)
    assert set(new) <= archived | set(purged) and not set(new) & set(queue.path.read_text().split())


@pytest.mark.slow
def test_a_retry_while_a_worker_finishes_jobs_loses_none_of_them(tmp_path):
    queue_path, log_path = tmp_path / 'data' / 'queue.tsv', tmp_path / 'executions.log'
    queue = Queue(queue_path)
    types = [f'old{n}' for n in range(5)]
    failed = [queue.enqueue(types[n % 5], {'n': n, 'pad': 'x' * 300}) for n in range(5000)]
    queue.process_jobs(dict.fromkeys(types, lambda p: 1 / 0), max_attempts=1)
    new = [queue.enqueue('work', {'producer': 'new', 'n': n}) for n in range(1000)]
    worker = spawn(WORKER, queue_path, log_path, 4, 0.002)   # no handler for the old types
    time.sleep(0.3)   # the worker is busy archiving when the retries run
    revived = []
    for job_type in types:
        revived += queue.retry(failed=True, job_type=job_type)
        time.sleep(0.05)
    wait_all([worker])
    archived = {line.split('\t', 1)[0] for line in queue.archive_path.read_text().splitlines()[1:]}
    assert sorted(revived) == sorted(failed) and not set(failed) & archived
    assert {queue.get_job(job_id)['status'] for job_id in failed} == {'pending'}
    assert set(new) <= archived
