"""Atomic rewrites (guarantee 2) and crash recovery (4), with real signals and limits."""

import os
import signal
import subprocess
import sys
import time

import pytest

from dbbasic_queue import Queue, liveness
from dbbasic_queue.job import Job, Status
from dbbasic_queue.lineformat import format_line, parse_line
from tests.conftest import SUBPROCESS_TIMEOUT_SECONDS, run_python, spawn, wait_all

SLOW_WORKER = '''
import sys, time
from pathlib import Path
from dbbasic_queue import Queue
queue, started = Queue(sys.argv[1]), Path(sys.argv[2])

def slow(payload):
    started.write_text(str(payload['n']))
    time.sleep(float(sys.argv[3]))
    return payload['n']

print(queue.process_jobs({'slow': slow}))
'''


def wait_for(path, timeout=SUBPROCESS_TIMEOUT_SECONDS):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f'{path} never appeared'
        time.sleep(0.01)


def test_a_job_whose_worker_was_killed_runs_again_and_the_crash_counts(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv', backoff_base_seconds=0)
    job_id = queue.enqueue('slow', {'n': 1})
    started = tmp_path / 'started'
    worker = spawn(SLOW_WORKER, queue.path, started, 30)
    wait_for(started)
    assert queue.get_job(job_id)['status'] == 'processing'
    assert queue.process_jobs({'slow': lambda p: 'stolen'})['completed'] == 0  # still alive
    os.kill(worker.pid, signal.SIGKILL)
    wait_all([worker])

    summary = queue.process_jobs({'slow': lambda p: 'second run'})
    assert summary['recovered'] == 1 and summary['completed'] == 1
    job = queue.get_job(job_id)
    assert (job['status'], job['attempts'], job['result']) == ('completed', 2, 'second run')


def test_a_job_that_kills_its_worker_every_time_ends_failed(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv', backoff_base_seconds=0)
    job_id = queue.enqueue('suicide', {})
    code = '''
import os, signal, sys
from dbbasic_queue import Queue
Queue(sys.argv[1], backoff_base_seconds=0).process_jobs(
    {'suicide': lambda p: os.kill(os.getpid(), signal.SIGKILL)}, max_attempts=3)
'''
    for _ in range(3):
        assert run_python(code, queue.path).returncode == -signal.SIGKILL
    code_ok = code.replace("os.kill(os.getpid(), signal.SIGKILL)", "'survived'")
    assert run_python(code_ok, queue.path).returncode == 0
    job = queue.get_job(job_id)
    assert (job['status'], job['attempts']) == ('failed', 3)
    assert job['error'].startswith('WorkerLost: worker ')


def test_claims_of_a_killed_worker_without_a_journal_charge_the_first_only(tmp_path):
    # A worker of 2.0.0 kept no journal of the job it was starting: the first claim in
    # run order is charged, as 2.0.0 did, and (the crash not being a handler's failure)
    # it stays due; the others come back without an attempt.
    queue = Queue(tmp_path / 'data' / 'queue.tsv', backoff_base_seconds=1000)
    first = queue.enqueue('slow', {'n': 1})
    others = [queue.enqueue('slow', {'n': n}) for n in (2, 3)]
    # Claim all three for a worker process that then dies, as a big batch would be.
    victim = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        marker = liveness.start_marker(victim.pid)
        lines = queue.path.read_text().split('\n')
        worker = f'{liveness.HOST}:{victim.pid}:{marker}'
        lines[1:4] = [format_line(parse_line(line).evolve(
            status=Status.PROCESSING, worker=worker, claimed_at=time.time())) for line in lines[1:4]]
        queue.path.write_text('\n'.join(lines))
        assert queue.process_jobs({'slow': lambda p: p['n']})['completed'] == 0  # alive
    finally:
        victim.kill()
        victim.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    summary = queue.process_jobs({'slow': lambda p: p['n']})
    assert summary == {'completed': 3, 'retried': 0, 'failed': 0, 'recovered': 3}
    assert queue.get_job(first)['attempts'] == 2 and queue.get_job(first)['status'] == 'completed'
    assert [queue.get_job(i)['attempts'] for i in others] == [1, 1]  # one run each, no crash charge


def claim_line(job_id, worker, claimed_at):
    job = Job(id=job_id, type='t', payload_json='{}', status=Status.PROCESSING,
              created_at=1, run_at=1, worker=worker, claimed_at=claimed_at)
    return format_line(job)


@pytest.mark.parametrize('case,recovered', [
    ('pid reused by another process', True),
    ('the same live process', False),
    ('another host within the lease', False),
    ('another host past the lease', True),
])
def test_which_claims_are_recovered(tmp_path, case, recovered):
    queue = Queue(tmp_path / 'q.tsv', lease_seconds=100)
    queue.enqueue('t', {})  # creates the file with its header
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        marker = liveness.start_marker(other.pid)
        worker, claimed_at = {
            'pid reused by another process': (f'{liveness.HOST}:{other.pid}:{marker}0', time.time()),
            'the same live process': (f'{liveness.HOST}:{other.pid}:{marker}', time.time()),
            'another host within the lease': (f'elsewhere:{other.pid}:{marker}', time.time() - 90),
            'another host past the lease': (f'elsewhere:{other.pid}:{marker}', time.time() - 110),
        }[case]
        with open(queue.path, 'a') as f:
            f.write(claim_line('cccccccccccccccc', worker, claimed_at) + '\n')
        summary = queue.process_jobs({'t': lambda p: 'ok'})
    finally:
        other.kill()
        other.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert summary['recovered'] == (1 if recovered else 0)
    status = queue.get_job('cccccccccccccccc')['status']
    assert status == ('completed' if recovered else 'processing')  # recovered: due at once


def test_a_failed_rewrite_leaves_the_file_whole_and_raises(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    for n in range(300):
        queue.enqueue('t', {'n': n, 'padding': 'x' * 200})
    before = queue.path.read_bytes()
    code = '''
import resource, sys
from dbbasic_queue import Queue, StorageError
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    Queue(sys.argv[1]).process_jobs({'t': lambda p: p['n']})
except StorageError as exc:
    print('StorageError:', exc)
'''
    result = run_python(code, queue.path, len(before) // 2)
    assert result.returncode == 0, result.stderr
    assert 'StorageError: cannot rewrite' in result.stdout and 'File too large' in result.stdout
    assert 'previous file is intact' in result.stderr
    assert queue.path.read_bytes() == before
    assert sorted(p.name for p in queue.path.parent.iterdir() if p.name.endswith('.tmp')) == []
    # Nothing was lost or left claimed: a worker without the limit runs all 300.
    assert queue.process_jobs({'t': lambda p: p['n']})['completed'] == 300


def test_a_failed_cancel_leaves_the_file_whole_and_raises(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    ids = [queue.enqueue('t', {'n': n, 'padding': 'x' * 200}) for n in range(300)]
    before = queue.path.read_bytes()
    code = '''
import resource, sys
from dbbasic_queue import Queue, StorageError
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    Queue(sys.argv[1]).cancel_job(sys.argv[2])
except StorageError as exc:
    print('StorageError:', exc)
'''
    result = run_python(code, queue.path, ids[150], len(before) // 2)
    assert result.returncode == 0, result.stderr
    assert 'StorageError: cannot rewrite' in result.stdout and 'File too large' in result.stdout
    assert queue.path.read_bytes() == before
    assert sorted(p.name for p in queue.path.parent.iterdir() if p.name.endswith('.tmp')) == []
    assert queue.cancel_job(ids[150]) is True


def test_sigterm_finishes_the_current_job_and_gives_back_the_unstarted_ones(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    ids = [queue.enqueue('slow', {'n': n}) for n in range(30)]
    code = '''
import sys, time
from pathlib import Path
from dbbasic_queue import Queue, queue as queue_module
queue_module.MIN_BATCH_SECONDS = 100  # claim everything in the second batch
queue, started = Queue(sys.argv[1]), Path(sys.argv[2])
def slow(payload):
    if payload['n'] == 3:
        started.write_text('3')
    time.sleep(0.3 if payload['n'] == 3 else 0.001)
    return payload['n']
queue.process_jobs({'slow': slow})
'''
    started = tmp_path / 'started'
    worker = spawn(code, queue.path, started)
    wait_for(started)
    assert sum(queue.get_job(i)['status'] == 'processing' for i in ids) > 1
    worker.send_signal(signal.SIGTERM)
    returncode, _, err = wait_all([worker])[0]
    assert returncode == -signal.SIGTERM, err
    jobs = [queue.get_job(i) for i in ids]
    assert [j['status'] for j in jobs[:4]] == ['completed'] * 4
    assert all(j['status'] == 'pending' and j['attempts'] == 0 for j in jobs[4:])


def test_an_append_cut_short_by_a_size_limit_leaves_no_half_line(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    queue.enqueue('t', {'n': 1})
    before = queue.path.read_bytes()
    code = '''
import resource, sys
from dbbasic_queue import Queue, StorageError
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    Queue(sys.argv[1]).enqueue('t', {'n': 2, 'padding': 'x' * 500})
except StorageError as exc:
    print('StorageError:', exc)
'''
    result = run_python(code, queue.path, len(before) + 40)
    assert result.returncode == 0, result.stderr
    assert 'short write' in result.stdout and 'undone' in result.stdout
    assert queue.path.read_bytes() == before
    assert queue.process_jobs({'t': lambda p: p['n']})['completed'] == 1
