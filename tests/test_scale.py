"""Scale: several workers, bulk enqueue, large queues, durable enqueue (the scale issue).

Speed itself is measured by benchmarks/bench.py, never asserted here; these tests pin the
mechanisms the speed comes from, so that losing one fails a test.
"""

import fcntl
import time

from dbbasic_queue import Queue
from dbbasic_queue import scan as scan_module

from .conftest import SUBPROCESS_TIMEOUT_SECONDS, spawn, wait_all

ONE_JOB_WORKER = '''
import sys
from dbbasic_queue import Queue
print(Queue(sys.argv[1]).process_jobs({'t': lambda p: None})['completed'])
'''


def test_rewrites_take_turns_on_the_rewrite_lock_and_enqueues_never_wait_for_it(tmp_path):
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    first = queue.enqueue('t', {'n': 1})
    with open(tmp_path / 'queue.rewrite.lock', 'a') as rewrite_lock:
        fcntl.flock(rewrite_lock, fcntl.LOCK_EX)   # another process is rewriting
        worker = spawn(ONE_JOB_WORKER, path)
        time.sleep(1)
        assert worker.poll() is None, 'a claim rewrite did not wait for its turn'
        second = queue.enqueue('t', {'n': 2})       # an append does not wait for it
        assert queue.get_job(first)['status'] == 'pending'
    out, _ = worker.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert out.strip() == '2'
    assert [queue.get_job(i)['status'] for i in (first, second)] == ['completed'] * 2


def test_a_version_rewritten_by_another_worker_is_not_parsed_again(tmp_path, monkeypatch):
    parsed = []

    def counted(line, *args):
        parsed.append(line)
        return entry_of_line(line, *args)
    entry_of_line = scan_module.entry_of_line
    monkeypatch.setattr(scan_module, 'entry_of_line', counted)
    path = tmp_path / 'queue.tsv'
    watcher, worker = Queue(path), Queue(path)
    for n in range(200):
        watcher.enqueue('t', {'n': n})
    watcher.process_jobs({'other': lambda p: None})
    assert len(parsed) == 200
    parsed.clear()
    assert worker.process_jobs({'t': lambda p: None}, max_jobs=3)['completed'] == 3
    parsed.clear()
    watcher.process_jobs({'other': lambda p: None})   # reads the worker's new version
    assert parsed == []   # its 197 pending lines are the ones it parsed before


def test_a_small_claim_waits_briefly_for_a_worker_that_is_busy(tmp_path):
    # A worker holds a claim and is running it; another, which has learned to claim big
    # batches, leaves one new due job to it for CLAIM_WAIT_SECONDS, then takes it.
    from dbbasic_queue.claims import CLAIM_WAIT_SECONDS
    path = tmp_path / 'queue.tsv'
    started, release = tmp_path / 'started', tmp_path / 'release'
    queue = Queue(path)
    queue.enqueue('slow', {})
    busy = spawn('''
import sys, time
from pathlib import Path
from dbbasic_queue import Queue

def slow(payload):
    Path(sys.argv[2]).touch()
    while not Path(sys.argv[3]).exists():
        time.sleep(0.01)
Queue(sys.argv[1]).process_jobs({'slow': slow})
''', path, started, release)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while not started.exists():
            assert time.monotonic() < deadline and busy.poll() is None
            time.sleep(0.01)
        now = [time.time()]
        worker = Queue(path, clock=lambda: now[0])
        for n in range(300):
            worker.enqueue('t', {'n': n})
        assert worker.process_jobs({'t': lambda p: None})['completed'] == 300   # learns
        job_id = worker.enqueue('t', {'n': 'new'})
        assert worker.process_jobs({'t': lambda p: None})['completed'] == 0
        assert worker.get_job(job_id)['status'] == 'pending'
        now[0] += CLAIM_WAIT_SECONDS
        assert worker.process_jobs({'t': lambda p: None})['completed'] == 1
    finally:
        release.touch()
        wait_all([busy])
