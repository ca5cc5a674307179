"""What is particular to the RQ backend: one setting, JSON in Redis, RQ's own queues
and workers, the CLI on a redis:// queue, and a lossless, idempotent migrate."""

import json
import os
import signal
import subprocess
import sys
import time
import zlib

import pytest

from redis import Redis

from dbbasic_queue import Queue
from tests.conftest import SUBPROCESS_TIMEOUT_SECONDS, python_env, run_python


def cli(cwd, *args, env=None):
    return subprocess.run([sys.executable, '-m', 'dbbasic_queue', *args], cwd=cwd,
                          capture_output=True, text=True, env={**python_env(), **(env or {})},
                          timeout=SUBPROCESS_TIMEOUT_SECONDS)


def test_importing_dbbasic_queue_never_imports_rq():
    result = run_python('import sys, dbbasic_queue\n'
                        'dbbasic_queue.Queue("data/x.tsv")\n'
                        'print(sorted(m for m in sys.modules if m in ("rq", "redis")))')
    assert result.stdout.strip() == '[]'


def test_the_environment_variable_switches_the_module_functions_to_rq(redis_url, tmp_path):
    code = '''
from dbbasic_queue import enqueue, process_jobs, get_job, cancel_job
job_id = enqueue('send_email', {'to': 'a@example.com'})
print(process_jobs({'send_email': lambda p: {'sent': p['to']}}))
print(get_job(job_id)['result'])
'''
    env = {**python_env(), 'DBBASIC_QUEUE': redis_url}
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, text=True,
                            capture_output=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stderr
    assert "'completed': 1" in result.stdout and "{'sent': 'a@example.com'}" in result.stdout
    assert not (tmp_path / 'data').exists()  # no file was touched


def test_jobs_are_json_in_redis_on_one_rq_queue_per_type(redis_url):
    queue = Queue(redis_url)
    job_id = queue.enqueue('send_email', {'to': 'a@example.com'})
    queue.enqueue('build_report', {})
    redis = Redis.from_url(redis_url)
    data = json.loads(zlib.decompress(redis.hget(f'rq:job:{job_id}', 'data')))  # RQ zlibs it
    assert data == ['dbbasic_queue.rq_backend.dispatch', None,
                    ['send_email', {'to': 'a@example.com'}], {}]
    assert redis.llen('rq:queue:dbbasic:send_email') == 1
    assert redis.llen('rq:queue:dbbasic:build_report') == 1
    queue.process_jobs({'send_email': lambda p: {'ok': True}})
    result = json.loads(redis.hget(f'rq:job:{job_id}', 'meta').decode())
    assert result['attempts'] == 1


@pytest.mark.slow
def test_the_cli_works_on_a_redis_queue(redis_url, tmp_path):
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"t": lambda p: p["n"] * 2}\n')
    job_id = cli(tmp_path, '--queue', redis_url, 'enqueue', 't', '{"n": 21}').stdout.strip()
    stats = cli(tmp_path, '--queue', redis_url, '--json', 'stats')
    assert json.loads(stats.stdout)['by_status']['pending'] == 1, stats.stderr
    worked = cli(tmp_path, '--queue', redis_url, 'work', 'handlers:HANDLERS')
    assert worked.returncode == 0 and f'{job_id} t completed' in worked.stderr
    shown = json.loads(cli(tmp_path, '--queue', redis_url, '--json', 'show', job_id).stdout)
    assert shown['result'] == 42 and shown['status'] == 'completed'


@pytest.mark.slow
def test_work_loop_is_a_long_running_rq_worker(redis_url, tmp_path):
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"t": lambda p: p["n"]}\n')
    worker = subprocess.Popen([sys.executable, '-m', 'dbbasic_queue', '--queue', redis_url,
                               'work', 'handlers:HANDLERS', '--loop'], cwd=tmp_path,
                              env=python_env(), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        queue = Queue(redis_url)
        time.sleep(1)
        ids = [queue.enqueue('t', {'n': n}) for n in range(3)]
        deadline = time.monotonic() + 30
        while not all(queue.get_job(i)['status'] == 'completed' for i in ids):
            assert time.monotonic() < deadline, 'the long-running worker did not pick the jobs up'
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0
    assert [queue.get_job(i)['result'] for i in ids] == [0, 1, 2]


def make_file_queue(tmp_path, pending=3):
    queue = Queue(tmp_path / 'data' / 'queue.tsv', backoff_base_seconds=0)
    failed = queue.enqueue('report', {'month': 13})
    queue.process_jobs({'report': lambda p: 1 / 0}, max_attempts=2)
    done = queue.enqueue('send_email', {'to': 'done'})
    queue.process_jobs({'send_email': lambda p: 'sent'})
    later = queue.enqueue('send_email', {'to': 'later'}, delay=3600)
    ids = [queue.enqueue('send_email', {'to': f'{n}@example.com'}) for n in range(pending)]
    return queue, failed, done, later, ids


@pytest.mark.slow
def test_migrate_moves_pending_and_failed_jobs_keeping_ids_and_history(redis_url, tmp_path):
    queue, failed, done, later, ids = make_file_queue(tmp_path)
    dry = cli(tmp_path, 'migrate', '--to', redis_url, '--dry-run')
    assert dry.returncode == 0 and 'would move 5 job(s)' in dry.stdout
    assert Queue(redis_url).list_jobs() == []
    moved = cli(tmp_path, 'migrate', '--to', redis_url)
    assert moved.returncode == 0, moved.stderr
    assert f'moved 5 job(s) to {redis_url}' in moved.stdout

    redis_queue = Queue(redis_url)
    job = redis_queue.get_job(failed)
    assert (job['status'], job['attempts'], job['error']) == ('failed', 2, 'ZeroDivisionError: division by zero')
    assert redis_queue.get_job(later)['status'] == 'pending'
    assert abs(redis_queue.get_job(later)['run_at'] - queue.get_job(later)['run_at']) <= 1
    assert redis_queue.get_job(done) is None  # finished jobs stay in the file's archive
    for job_id in [failed, later] + ids:
        assert queue.get_job(job_id)['status'] == 'migrated'  # marked, not deleted
    assert queue.archive_path.read_text().count(failed) == 1
    assert redis_queue.process_jobs({'send_email': lambda p: p['to']})['completed'] == 3
    assert redis_queue.get_job(ids[0])['result'] == '0@example.com'

    again = cli(tmp_path, 'migrate', '--to', redis_url)
    assert again.returncode == 0 and 'moved 0 job(s)' in again.stdout
    assert len(redis_queue.list_jobs()) == 5


@pytest.mark.slow
def test_migrate_killed_halfway_then_rerun_moves_every_job_exactly_once(redis_url, tmp_path):
    queue, failed, done, later, ids = make_file_queue(tmp_path, pending=3000)
    migrating = subprocess.Popen([sys.executable, '-m', 'dbbasic_queue', 'migrate', '--to',
                                  redis_url], cwd=tmp_path, env=python_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while redis.llen('rq:queue:dbbasic:send_email') < 700:
            assert time.monotonic() < deadline and migrating.poll() is None
            time.sleep(0.01)
        os.kill(migrating.pid, signal.SIGKILL)
    finally:
        migrating.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert migrating.returncode == -signal.SIGKILL
    assert redis.llen('rq:queue:dbbasic:send_email') < 3001  # it really stopped halfway
    rerun = cli(tmp_path, 'migrate', '--to', redis_url)
    assert rerun.returncode == 0, rerun.stderr
    jobs = Queue(redis_url).list_jobs()
    assert sorted(j['id'] for j in jobs) == sorted([failed, later] + ids)
    assert redis.llen('rq:queue:dbbasic:send_email') == 3000
    statuses = {Queue(queue.path).get_job(i)['status'] for i in ids}
    assert statuses == {'migrated'}


def test_migrate_refuses_an_unreachable_redis_with_one_line(tmp_path):
    make_file_queue(tmp_path, pending=1)
    result = cli(tmp_path, 'migrate', '--to', 'redis://127.0.0.1:1/0')
    assert result.returncode == 1 and result.stderr.count('\n') == 1
    assert 'cannot reach Redis at redis://127.0.0.1:1/0' in result.stderr


def test_read_tsv_shim_works_on_redis_too(redis_url, monkeypatch):
    import dbbasic_queue
    monkeypatch.setenv('DBBASIC_QUEUE', redis_url)
    job_id = dbbasic_queue.enqueue('send_email', {'to': 'a'})
    assert [(row[0], row[1], row[3]) for row in dbbasic_queue._read_tsv()] == [
        (job_id, 'send_email', 'pending')]


@pytest.mark.slow
def test_retry_purge_and_check_on_redis(redis_url):
    queue = Queue(redis_url, backoff_base_seconds=0)
    broken = queue.enqueue('report', {}, max_attempts=1)
    done = queue.enqueue('send_email', {})
    queue.process_jobs({'report': lambda p: 1 / 0, 'send_email': lambda p: 'ok'})
    assert queue.get_job(broken)['status'] == 'failed'
    assert queue.retry(failed=True, job_type='report') == [broken]
    job = queue.get_job(broken)
    assert (job['status'], job['attempts'], job['error']) == ('pending', 0, None)
    assert queue.process_jobs({'report': lambda p: 'fixed'})['completed'] == 1
    assert queue.get_job(broken)['result'] == 'fixed'
    assert queue.purge(['completed'], older_than_seconds=3600) == []
    time.sleep(1.1)
    assert sorted(queue.purge(['completed'], older_than_seconds=1, dry_run=True)) == sorted([broken, done])
    assert sorted(queue.purge(['completed'], older_than_seconds=1)) == sorted([broken, done])
    assert queue.get_job(done) is None and queue.list_jobs() == []
    assert queue.check() == []


def test_a_worker_runs_only_our_dispatcher_never_a_function_pushed_by_others(redis_url, tmp_path):
    from rq import Queue as RQQueue
    from rq.job import Job as RQJob
    from rq.serializers import JSONSerializer
    marker = tmp_path / 'pwned'
    pushed = RQQueue('dbbasic:t', connection=Redis.from_url(redis_url),
                     serializer=JSONSerializer).enqueue('os.system', f'touch {marker}')
    queue = Queue(redis_url)
    ours = queue.enqueue('t', {'n': 1})
    assert queue.process_jobs({'t': lambda p: p['n']})['completed'] == 1
    assert not marker.exists() and queue.get_job(ours)['status'] == 'completed'
    job = RQJob.fetch(pushed.id, connection=Redis.from_url(redis_url), serializer=JSONSerializer)
    assert job.get_status() == 'failed'
    assert 'refused' in job.latest_result().exc_string


RQ_SLOW_WORKER = '''
import sys, time
from pathlib import Path
from dbbasic_queue import Queue
queue = Queue(sys.argv[1], lease_seconds=float(sys.argv[3]))
def slow(payload):
    Path(sys.argv[2]).touch()
    time.sleep(payload['seconds'])
    return 'done'
print(queue.process_jobs({'slow': slow}))
'''


@pytest.mark.slow
def test_a_killed_rq_workers_job_is_recovered_once_its_lease_lapses(redis_url, tmp_path):
    # The figure the README documents: lease_seconds after the last heartbeat (60 by
    # default; 4 here to keep the test short), plus the next worker run.
    lease = 4
    queue = Queue(redis_url, lease_seconds=lease, backoff_base_seconds=0)
    job_id = queue.enqueue('slow', {'seconds': 60})
    started = tmp_path / 'started'
    worker = subprocess.Popen([sys.executable, '-c', RQ_SLOW_WORKER, redis_url, started,
                               str(lease)], env=python_env())
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while not started.exists():
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.05)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    killed = time.monotonic()
    while queue.get_job(job_id)['status'] == 'processing':
        assert time.monotonic() - killed < 10 * lease + 10, 'not recovered after the lease'
        queue.process_jobs({'slow': lambda p: 'again'})   # a cron run of this type's worker
        time.sleep(0.25)
    recovered_after = time.monotonic() - killed
    assert lease - 1 <= recovered_after   # never before its lease lapsed
    queue.process_jobs({'slow': lambda p: 'again'})
    job = queue.get_job(job_id)
    assert (job['status'], job['attempts'], job['result']) == ('completed', 2, 'again')


@pytest.mark.slow
def test_a_long_rq_job_keeps_its_claim_through_its_heartbeat(redis_url, tmp_path):
    lease = 2
    queue = Queue(redis_url, lease_seconds=lease, backoff_base_seconds=0)
    job_id = queue.enqueue('slow', {'seconds': 3 * lease})
    started = tmp_path / 'started'
    worker = subprocess.Popen([sys.executable, '-c', RQ_SLOW_WORKER, redis_url, started,
                               str(lease)], env=python_env(), stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
    while not started.exists():
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.05)
    while worker.poll() is None:   # three leases long
        assert time.monotonic() < deadline
        queue.process_jobs({'slow': lambda p: 'stolen'})   # would recover a lapsed claim
        assert queue.get_job(job_id)['status'] in ('processing', 'completed')
        time.sleep(0.25)
    out, _ = worker.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert "'completed': 1" in out
    job = queue.get_job(job_id)
    assert (job['status'], job['attempts']) == ('completed', 1)


def test_a_redis_queue_is_a_queue_that_owns_an_rq_backend(redis_url):
    queue = Queue(redis_url)
    assert isinstance(queue, Queue) and queue.backend.kind == 'rq'


@pytest.mark.slow
def test_max_seconds_stops_a_long_running_rq_worker_idle_or_busy(redis_url):
    """RQ's own stop request sets signal handlers, which a timer thread may not do: the
    limit is a deadline the worker checks before each dequeue, and its idle wait ends there."""
    queue = Queue(redis_url)
    started = time.monotonic()
    assert queue.run_worker({'t': lambda p: None}, max_seconds=1.5)['completed'] == 0
    assert 1.4 <= time.monotonic() - started < 10   # idle: its wait ended at the deadline
    for n in range(40):
        queue.enqueue('t', {'n': n})
    started = time.monotonic()
    summary = queue.run_worker({'t': lambda p: time.sleep(0.1)}, max_seconds=1)
    # busy: it stopped at the deadline, long before the 40 jobs' 4 s of work
    assert 1 <= summary['completed'] < 40 and time.monotonic() - started < 10
