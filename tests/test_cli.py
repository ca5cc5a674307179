"""The dbbasic-queue command line, run as a real subprocess: output and exit codes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dbbasic_queue import Queue
from tests.conftest import SUBPROCESS_TIMEOUT_SECONDS, python_env

HANDLERS = '''
import time
from pathlib import Path

def send(payload):
    return {'sent_to': payload['to']}

def broken(payload):
    raise RuntimeError('always broken')

def slow(payload):
    Path('started').write_text('yes')
    time.sleep(payload.get('seconds', 1))
    return 'slow done'

HANDLERS = {'send_email': send, 'broken': broken, 'slow': slow}

def make_handlers():
    return {'send_email': send}
'''


def cli(tmp_path, *args, stdin=None, env=None, check_code=None):
    result = subprocess.run([sys.executable, '-m', 'dbbasic_queue', *args], cwd=tmp_path,
                            input=stdin, capture_output=True, text=True,
                            env={**python_env(), **(env or {})}, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert 'Traceback' not in result.stderr or args[0] == 'work', result.stderr
    if check_code is not None:
        assert result.returncode == check_code, (result.stdout, result.stderr)
    return result


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.delenv('DBBASIC_QUEUE', raising=False)
    (tmp_path / 'handlers.py').write_text(HANDLERS)
    return tmp_path


def queue_in(workdir):
    return Queue(workdir / 'data' / 'queue.tsv')


def test_enqueue_prints_the_new_id_and_reads_json_from_an_argument_or_stdin(workdir):
    first = cli(workdir, 'enqueue', 'send_email', '{"to": "a@example.com"}', check_code=0).stdout.strip()
    second = cli(workdir, 'enqueue', 'send_email', '-', stdin='{"to": "b@example.com"}',
                 check_code=0).stdout.strip()
    queue = queue_in(workdir)
    assert queue.get_job(first)['payload'] == {'to': 'a@example.com'}
    assert queue.get_job(second)['payload'] == {'to': 'b@example.com'}


def test_enqueue_schedules_with_in_and_at(workdir):
    later = cli(workdir, 'enqueue', 'send_email', '{}', '--in', '2h', check_code=0).stdout.strip()
    at = cli(workdir, 'enqueue', 'send_email', '{}', '--at', '2030-01-02T03:04:05+00:00',
             check_code=0).stdout.strip()
    queue = queue_in(workdir)
    assert abs(queue.get_job(later)['run_at'] - (time.time() + 7200)) < 60
    assert queue.get_job(at)['run_at'] == 1893553445


@pytest.mark.parametrize('args,message', [
    (['enqueue', 'send_email', '{not json'], 'payload is not valid JSON'),
    (['enqueue', 'send_email', '{}', '--in', 'soon'], "bad duration 'soon'"),
    (['enqueue', 'send_email', '{}', '--at', 'tuesday'], "bad time 'tuesday'"),
    (['enqueue', 'bad\ttype', '{}'], 'job_type must be one line without tabs'),
    (['enqueue', 'send_email', '[NaN]'], 'payload must be JSON-serializable'),
    (['frobnicate'], "invalid choice: 'frobnicate'"),
    (['work', 'no_such_module:HANDLERS'], "cannot import no_such_module"),
    (['work', 'handlers:NOPE'], "handlers has no attribute 'NOPE'"),
    (['work', 'handlers'], 'handlers must be given as MODULE:ATTR'),
    (['work', 'handlers:HANDLERS', '--max-jobs', '-1'], 'max_jobs must be a finite number >= 0 or None, got -1'),
    (['work', 'handlers:HANDLERS', '--max-seconds', 'nan'], 'max_seconds must be a finite number >= 0'),
    (['enqueue', 'send_email', '{}', '--at', '99999999999999999999'], 'outside the times a job can have'),
    (['enqueue', 'send_email', '{}', '--in', '99999999999999999999s'], 'outside the times a job can have'),
    (['enqueue', 'send_email', '{}', '--timeout', '99999999999s'], 'timeout must be at most 316224000 seconds'),
    (['work', 'handlers:HANDLERS', '--max-attempts', '0'], 'max_attempts must be an int >= 1, got 0'),
    (['purge', '--status', 'completed', '--older-than', 'a while'], "bad duration 'a while'"),
    (['purge', '--status', 'completed'], 'give --older-than, --keep, or both'),
    (['purge', '--status', 'completed', '--keep', '-1'], 'keep must be an int >= 0 or None, got -1'),
])
def test_bad_input_is_one_line_on_stderr_exit_2_and_writes_nothing(workdir, args, message):
    result = cli(workdir, *args, check_code=2)
    assert result.stderr.count('\n') == 1 and message in result.stderr
    assert result.stderr.startswith('dbbasic-queue: error: ')
    assert not (workdir / 'data' / 'queue.tsv').exists()


def test_work_drains_due_jobs_with_one_log_line_per_job_and_exits_0(workdir):
    ids = [cli(workdir, 'enqueue', 'send_email', json.dumps({'to': f'{n}@example.com'}),
               check_code=0).stdout.strip() for n in range(3)]
    result = cli(workdir, 'work', 'handlers:HANDLERS', check_code=0)
    working, *lines = result.stderr.splitlines()
    assert (f"INFO working {workdir / 'data' / 'queue.tsv'} with handlers:HANDLERS "
            f"(broken, send_email, slow)") in working
    assert len(lines) == 3
    for job_id, line in zip(ids, lines):
        assert f'INFO {job_id} send_email completed' in line and 'attempt 1/3' in line
    assert queue_in(workdir).get_job(ids[0])['result'] == {'sent_to': '0@example.com'}


@pytest.mark.slow
def test_work_accepts_a_callable_returning_handlers_and_limits(workdir):
    for _ in range(5):
        cli(workdir, 'enqueue', 'send_email', '{"to": "x"}', check_code=0)
    cli(workdir, 'work', 'handlers:make_handlers', '--max-jobs', '2', check_code=0)
    assert cli(workdir, '--json', 'stats').stdout.count('"completed": 2') == 2  # total + type
    cli(workdir, 'work', 'handlers:make_handlers', '--max-attempts', '1', check_code=0)
    assert json.loads(cli(workdir, '--json', 'stats').stdout)['by_status']['completed'] == 5


@pytest.mark.slow
def test_work_loop_runs_until_max_seconds(workdir):
    started = time.monotonic()
    cli(workdir, 'work', 'handlers:HANDLERS', '--loop', '--sleep', '0.1', '--max-seconds', '1',
        check_code=0)
    assert 0.9 <= time.monotonic() - started < 10


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_work_on_a_signal_finishes_the_job_gives_back_the_rest_and_exits_0(workdir, signum):
    slow = cli(workdir, 'enqueue', 'slow', '{"seconds": 1}', check_code=0).stdout.strip()
    waiting = cli(workdir, 'enqueue', 'slow', '{"seconds": 0}', check_code=0).stdout.strip()
    worker = subprocess.Popen([sys.executable, '-m', 'dbbasic_queue', 'work', 'handlers:HANDLERS',
                               '--loop'], cwd=workdir, env=python_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while not (workdir / 'started').exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        worker.send_signal(signum)
        _, err = worker.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    queue = queue_in(workdir)
    assert queue.get_job(slow)['result'] == 'slow done'
    assert queue.get_job(waiting)['status'] == 'pending'
    assert queue.get_job(waiting)['attempts'] == 0


@pytest.mark.slow
def test_stats_list_and_show(workdir):
    done = cli(workdir, 'enqueue', 'send_email', '{"to": "a@example.com"}', check_code=0).stdout.strip()
    failed = cli(workdir, 'enqueue', 'broken', '{}', check_code=0).stdout.strip()
    later = cli(workdir, 'enqueue', 'send_email', '{"to": "later"}', '--in', '1d', check_code=0).stdout.strip()
    cli(workdir, 'work', 'handlers:HANDLERS', '--max-attempts', '1', check_code=0)

    stats = cli(workdir, 'stats', check_code=0).stdout
    assert 'completed   1' in stats and 'failed      1' in stats and 'pending     1' in stats
    assert 'send_email' in stats and 'next due:' in stats and 'workers active: 0' in stats
    as_json = json.loads(cli(workdir, '--json', 'stats', check_code=0).stdout)
    assert as_json['by_type']['broken']['failed'] == 1 and as_json['total'] == 3

    listed = cli(workdir, 'list', '--status', 'failed', check_code=0).stdout.splitlines()
    assert listed[0].split() == ['id', 'type', 'status', 'priority', 'attempts', 'run_at', 'error',
                                 'payload']
    assert len(listed) == 2 and failed in listed[1] and 'RuntimeError: always broken' in listed[1]
    jobs = json.loads(cli(workdir, '--json', 'list', '--type', 'send_email', check_code=0).stdout)
    assert {job['id'] for job in jobs} == {done, later}

    shown = cli(workdir, 'show', done, check_code=0).stdout
    assert 'status:       completed' in shown and '"sent_to": "a@example.com"' in shown
    assert 'finished_at:  20' in shown and 'ago)' in shown
    assert json.loads(cli(workdir, '--json', 'show', later).stdout)['finished_at'] is None
    missing = cli(workdir, 'show', 'ffffffffffffffff', check_code=1)
    assert missing.stderr == 'dbbasic-queue: error: no job ffffffffffffffff in data/queue.tsv\n'


@pytest.mark.slow
def test_retry_one_job_or_every_failed_job_of_a_type(workdir):
    broken = [cli(workdir, 'enqueue', 'broken', '{}', check_code=0).stdout.strip() for _ in range(2)]
    ok = cli(workdir, 'enqueue', 'send_email', '{"to": "x"}', check_code=0).stdout.strip()
    cli(workdir, 'work', 'handlers:HANDLERS', '--max-attempts', '1', check_code=0)
    assert cli(workdir, 'retry', broken[0], check_code=0).stdout.strip() == broken[0]
    job = queue_in(workdir).get_job(broken[0])
    assert (job['status'], job['attempts']) == ('pending', 0)
    assert cli(workdir, 'retry', '--failed', '--type', 'broken', check_code=0).stdout.split() == [broken[1]]
    assert cli(workdir, 'retry', '--failed', check_code=0).stdout.strip() == 'no failed jobs to retry'
    assert 'only failed and cancelled' in cli(workdir, 'retry', ok, check_code=2).stderr
    cli(workdir, 'retry', 'ffffffffffffffff', check_code=1)
    cli(workdir, 'retry', check_code=2)
    queue = queue_in(workdir)
    assert all(queue.archive_path.read_text().count(i) == 0 for i in broken)


def test_cancel(workdir):
    job_id = cli(workdir, 'enqueue', 'send_email', '{}', check_code=0).stdout.strip()
    assert cli(workdir, 'cancel', job_id, check_code=0).stdout.strip() == f'cancelled {job_id}'
    again = cli(workdir, 'cancel', job_id, check_code=1)
    assert 'is cancelled: only pending jobs can be cancelled' in again.stderr
    cli(workdir, 'cancel', 'ffffffffffffffff', check_code=1)


@pytest.mark.slow
def test_purge_removes_old_finished_jobs_and_dry_run_only_lists(workdir):
    for _ in range(2):
        cli(workdir, 'enqueue', 'send_email', '{"to": "x"}', check_code=0)
    cli(workdir, 'enqueue', 'broken', '{}', check_code=0)
    cli(workdir, 'work', 'handlers:HANDLERS', '--max-attempts', '1', check_code=0)
    time.sleep(1.1)
    assert 'purged 0 job(s)' in cli(workdir, 'purge', '--status', 'completed', '--older-than', '1h',
                                    check_code=0).stdout
    dry = cli(workdir, 'purge', '--status', 'completed', '--older-than', '1s', '--dry-run', check_code=0)
    assert dry.stdout.startswith('would purge 2 job(s)')
    assert json.loads(cli(workdir, '--json', 'stats').stdout)['by_status']['completed'] == 2
    cli(workdir, 'purge', '--status', 'completed', '--older-than', '1s', check_code=0)
    counts = json.loads(cli(workdir, '--json', 'stats').stdout)['by_status']
    assert counts['completed'] == 0 and counts['failed'] == 1  # failed kept unless named


@pytest.mark.slow
def test_purge_keep_leaves_only_the_newest_n(workdir):
    for n in range(3):
        cli(workdir, 'enqueue', 'send_email', json.dumps({'to': str(n)}), check_code=0)
        cli(workdir, 'work', 'handlers:HANDLERS', check_code=0)
    result = cli(workdir, 'purge', '--status', 'completed', '--keep', '1', check_code=0)
    assert result.stdout.startswith('purged 2 job(s): completed beyond the newest 1')
    jobs = json.loads(cli(workdir, '--json', 'list').stdout)
    assert [job['payload'] for job in jobs] == [{'to': '2'}]


def test_check_reports_problems_with_exit_1(workdir):
    cli(workdir, 'enqueue', 'send_email', '{}', check_code=0)
    assert cli(workdir, 'check', check_code=0).stdout.strip() == 'data/queue.tsv: no problems'
    with open(workdir / 'data' / 'queue.tsv', 'a') as f:
        f.write('garbage line\n')
    problems = cli(workdir, 'check', check_code=1).stdout
    assert "queue.tsv:3: not a job: 'garbage line'" in problems


def test_the_queue_flag_beats_the_environment_variable(workdir):
    env = {'DBBASIC_QUEUE': str(workdir / 'env' / 'q.tsv')}
    cli(workdir, 'enqueue', 't', '{}', env=env, check_code=0)
    cli(workdir, '--queue', 'flag/q.tsv', 'enqueue', 't', '{}', env=env, check_code=0)
    assert (workdir / 'env' / 'q.tsv').exists() and (workdir / 'flag' / 'q.tsv').exists()
    assert not (workdir / 'data').exists()


def test_an_unreadable_queue_is_one_line_and_exit_1(workdir):
    (workdir / 'data').mkdir()
    (workdir / 'data' / 'queue.tsv').mkdir()  # a directory where the file should be
    result = cli(workdir, 'stats', check_code=1)
    assert result.stderr.count('\n') == 1 and 'Is a directory' in result.stderr


def test_the_console_script_is_installed(workdir):
    result = subprocess.run(['dbbasic-queue', '--help'], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert result.returncode == 0 and 'work' in result.stdout and 'purge' in result.stdout


@pytest.mark.slow
def test_enqueue_options_are_stored_shown_and_validated(workdir):
    first = cli(workdir, 'enqueue', 'slow', '{"seconds": 5}', '--priority', '7', '--unique-key',
                'nightly', '--timeout', '1s', '--max-attempts', '1', check_code=0).stdout.strip()
    again = cli(workdir, 'enqueue', 'slow', '{}', '--unique-key', 'nightly', check_code=0).stdout.strip()
    assert again == first
    shown = cli(workdir, 'show', first, check_code=0).stdout
    for expected in ('priority:     7', 'unique_key:   nightly', 'timeout:      1',
                     'max_attempts: 1'):
        assert expected in shown
    assert '7' in cli(workdir, 'list', check_code=0).stdout.splitlines()[1].split()
    cli(workdir, 'work', 'handlers:HANDLERS', check_code=0)
    job = queue_in(workdir).get_job(first)
    assert job['status'] == 'failed' and job['error'].startswith('TimeoutError')
    for bad, message in [(['--priority', 'high'], "invalid int value: 'high'"),
                         (['--unique-key', ''], 'unique_key must be a non-empty'),
                         (['--timeout', '-3'], "bad duration '-3'"),
                         (['--max-attempts', '0'], 'max_attempts must be an int >= 1')]:
        result = cli(workdir, 'enqueue', 'slow', '{}', *bad, check_code=2)
        assert message in result.stderr and result.stderr.count('\n') == 1


@pytest.mark.slow
def test_work_timeout_is_the_default_for_jobs_without_one(workdir):
    job_id = cli(workdir, 'enqueue', 'slow', '{"seconds": 60}', check_code=0).stdout.strip()
    started = time.monotonic()
    cli(workdir, 'work', 'handlers:HANDLERS', '--timeout', '0.5s', '--max-attempts', '1',
        check_code=0)
    assert time.monotonic() - started < 30   # interrupted, not slept out (a hang detector)
    assert queue_in(workdir).get_job(job_id)['error'].startswith('TimeoutError')


def test_work_on_a_terminal_shows_progress_instead_of_a_line_per_job(workdir):
    import pty
    queue = queue_in(workdir)
    for n in range(1200):
        queue.enqueue('send_email', {'to': f'{n}@example.com'})
    controller, terminal = pty.openpty()
    worker = subprocess.Popen([sys.executable, '-m', 'dbbasic_queue', 'work', 'handlers:HANDLERS'],
                              cwd=workdir, env=python_env(), stdout=subprocess.DEVNULL,
                              stderr=terminal)
    os.close(terminal)
    output = b''
    try:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the worker exited
                break
            if not chunk:
                break
            output += chunk
    finally:
        worker.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS)
        os.close(controller)
    text = output.decode()
    assert worker.returncode == 0
    assert '1,200/1,200 jobs' in text and '/s' in text
    assert 'send_email completed' not in text
