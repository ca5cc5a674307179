"""Retries (guarantee 5), scheduling (7) and cancel_job (8) on the file, with a fake clock.

Routing (6) and a success after a failure are in test_backends.py, run on both backends."""

import logging

from dbbasic_queue import Queue


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
