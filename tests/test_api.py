"""The seed README's API, call-compatible, on a Queue of our own."""

import os
import re
from datetime import datetime, timedelta, timezone

import pytest

import dbbasic_queue
from dbbasic_queue import Queue


def test_enqueue_returns_a_16_hex_id_and_get_job_shows_the_seed_keys(queue, clock):
    job_id = queue.enqueue('send_email', {'to': 'user@example.com'})
    assert re.fullmatch(r'[0-9a-f]{16}', job_id)
    job = queue.get_job(job_id)
    assert job == {
        'id': job_id, 'type': 'send_email', 'payload': {'to': 'user@example.com'},
        'status': 'pending', 'created_at': int(clock.now), 'run_at': int(clock.now),
        'attempts': 0, 'error': None, 'result': None,
    }


def test_ids_are_unique_across_threads_and_a_forked_child():
    from concurrent.futures import ThreadPoolExecutor

    from dbbasic_queue.job import new_job_id
    new_job_id()   # the parent has a pool of ids when it forks
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, ' '.join(new_job_id() for _ in range(300)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = pipe.read().split()
    assert os.waitpid(pid, 0)[1] == 0
    with ThreadPoolExecutor(8) as pool:
        parent_ids = list(pool.map(lambda _: new_job_id(), range(3000)))
    assert len(child_ids) == 300
    assert all(re.fullmatch(r'[0-9a-f]{16}', i) for i in child_ids + parent_ids)
    assert len(set(child_ids + parent_ids)) == 3300


def test_process_jobs_runs_due_jobs_and_returns_counts_by_outcome(queue):
    first = queue.enqueue('add', {'a': 1, 'b': 2})
    second = queue.enqueue('add', {'a': 5, 'b': 5})
    summary = queue.process_jobs({'add': lambda p: p['a'] + p['b']})
    assert summary == {'completed': 2, 'retried': 0, 'failed': 0, 'recovered': 0}
    assert queue.get_job(first)['result'] == 3
    assert queue.get_job(second)['status'] == 'completed'
    assert queue.get_job(second)['attempts'] == 1


@pytest.mark.parametrize('result', [0, {}, [], '', False, None, 0.0])
def test_falsy_handler_results_are_stored_as_they_are(queue, result):
    job_id = queue.enqueue('t', {})
    queue.process_jobs({'t': lambda p: result})
    stored = queue.get_job(job_id)['result']
    assert stored == result and type(stored) is type(result)


def test_run_at_accepts_int_float_and_datetimes(queue, clock):
    naive = datetime(2027, 1, 2, 3, 4, 5)
    aware = datetime(2027, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert queue.get_job(queue.enqueue('t', {}, run_at=1_900_000_000))['run_at'] == 1_900_000_000
    assert queue.get_job(queue.enqueue('t', {}, run_at=1_900_000_000.25))['run_at'] == 1_900_000_000.25
    assert queue.get_job(queue.enqueue('t', {}, run_at=naive))['run_at'] == naive.timestamp()
    assert queue.get_job(queue.enqueue('t', {}, run_at=aware))['run_at'] == aware.timestamp()


def test_run_at_zero_means_1970_not_now(queue):
    job_id = queue.enqueue('t', {}, run_at=0)
    assert queue.get_job(job_id)['run_at'] == 0
    assert queue.process_jobs({'t': lambda p: 'ran'})['completed'] == 1


def test_get_job_of_an_unknown_id_is_none(queue):
    queue.enqueue('t', {})
    assert queue.get_job('0123456789abcdef') is None
    assert queue.get_job('') is None
    assert queue.get_job(None) is None


def test_module_functions_use_data_queue_tsv_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(dbbasic_queue.ENV_VAR, raising=False)
    job_id = dbbasic_queue.enqueue('t', {'n': 1})
    assert job_id in (tmp_path / 'data' / 'queue.tsv').read_text()
    assert dbbasic_queue.process_jobs({'t': lambda p: p['n']})['completed'] == 1
    assert dbbasic_queue.get_job(job_id)['result'] == 1
    assert dbbasic_queue.cancel_job(job_id) is False


def test_the_environment_variable_moves_the_default_queue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(dbbasic_queue.ENV_VAR, str(tmp_path / 'jobs' / 'email.tsv'))
    job_id = dbbasic_queue.enqueue('t', {})
    assert job_id in (tmp_path / 'jobs' / 'email.tsv').read_text()
    assert not (tmp_path / 'data').exists()


def test_several_queues_are_independent(tmp_path):
    email, reports = Queue(tmp_path / 'email.tsv'), Queue(tmp_path / 'reports.tsv')
    email_id = email.enqueue('t', {})
    assert reports.get_job(email_id) is None
    assert reports.process_jobs({'t': lambda p: 1})['completed'] == 0
    assert email.process_jobs({'t': lambda p: 1})['completed'] == 1


def test_a_queue_path_must_be_a_tsv_file(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.tsv, got '.*queue\.txt'"):
        Queue(tmp_path / 'queue.txt')


def test_importing_the_package_touches_no_disk(tmp_path):
    from tests.conftest import run_python
    out = run_python('import os, dbbasic_queue; print(sorted(os.listdir(".")))', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


def test_process_jobs_rejects_bad_arguments(queue):
    with pytest.raises(TypeError, match='handlers must be a dict'):
        queue.process_jobs(['t'])
    with pytest.raises(ValueError, match=r'max_attempts must be an int >= 1, got 0'):
        queue.process_jobs({}, max_attempts=0)


@pytest.mark.parametrize('call, error', [
    (lambda q: q.enqueue('', {}), 'InvalidJobError'),
    (lambda q: q.process_jobs({'t': 'not callable'}), 'InvalidArgumentError'),
    (lambda q: q.process_jobs({}, max_attempts=0), 'InvalidArgumentError'),
    (lambda q: q.list_jobs(status='lost'), 'InvalidArgumentError'),
    (lambda q: q.retry('0123456789abcdef'), 'JobNotFound'),
    (lambda q: q.retry(), 'InvalidArgumentError'),
    (lambda q: q.purge(['pending'], 10), 'InvalidArgumentError'),
    (lambda q: q.purge(['completed']), 'InvalidArgumentError'),
    (lambda q: Queue('data/queue.txt'), 'InvalidArgumentError'),
    (lambda q: Queue(q.path, file_mode='rw'), 'InvalidArgumentError'),
])
def test_every_error_raised_on_purpose_is_a_queue_error(queue, call, error):
    import dbbasic_queue
    queue.enqueue('t', {})
    with pytest.raises(dbbasic_queue.QueueError) as raised:
        call(queue)
    assert type(raised.value).__name__ == error


def test_a_dropped_queue_closes_its_files_without_waiting_for_the_gc(tmp_path):
    # A reference cycle would keep old versions of the file open (and in memory) until
    # the cyclic GC ran: each cancel_job of a fresh Queue then got slower.
    import gc
    import weakref
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    queue.enqueue('t', {})
    queue.process_jobs({'t': lambda p: None})
    queue.cancel_job(queue.enqueue('t', {}))
    dropped = weakref.ref(queue.backend)
    gc.disable()
    try:
        del queue
        assert dropped() is None
    finally:
        gc.enable()
