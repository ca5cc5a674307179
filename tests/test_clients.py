"""The real clients, unchanged from PyPI: dbbasic-cli, dbbasic-email, dbbasic-admin,
dbbasic-web; and every example, run as a user would run it."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from dbbasic_queue import Queue
from tests.conftest import REPO, SUBPROCESS_TIMEOUT_SECONDS, python_env, spawn, wait_all

needs_dbbasic_web = pytest.mark.skipif(sys.version_info < (3, 10),
                                       reason='dbbasic-web and dbbasic-admin need Python 3.10+')


@pytest.mark.slow
def test_dbbasic_cli_discovers_the_queue_commands(tmp_path):
    dbbasic = shutil.which('dbbasic')
    assert dbbasic, 'dbbasic-cli is a dev dependency'
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    queue.enqueue('send_email', {'to': 'a@example.com'})
    queue.enqueue('report', {})
    run = lambda *args: subprocess.run([dbbasic, *args], cwd=tmp_path, capture_output=True,
                                       text=True, env=python_env(), timeout=SUBPROCESS_TIMEOUT_SECONDS)
    stats = run('queue:stats')
    assert stats.returncode == 0, stats.stderr
    assert 'pending     2' in stats.stdout and 'send_email' in stats.stdout
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"send_email": lambda p: "sent"}\n')
    worker = run('queue:worker', 'handlers:HANDLERS')
    assert worker.returncode == 0 and 'send_email completed' in worker.stderr
    assert run('queue:show', 'ffffffffffffffff').returncode == 1
    help_text = run('help').stdout
    assert 'queue:worker' in help_text and 'queue:stats' in help_text


def test_dbbasic_email_sends_through_the_queue_to_a_real_smtp_sink(tmp_path):
    from aiosmtpd.controller import Controller

    received = []

    class Collect:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return '250 OK'

    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    controller = Controller(Collect(), hostname='127.0.0.1', port=port)
    controller.start()
    try:
        code = textwrap.dedent('''
            import os, sys
            os.environ.update(SMTP_HOST='127.0.0.1', SMTP_PORT=sys.argv[1])
            import dbbasic_email
            from dbbasic_email.cli import queue_command
            from dbbasic_queue import get_job, process_jobs
            job_id = dbbasic_email.send_email('user@example.com', 'Welcome', 'Thanks for signing up!')
            print(process_jobs(dbbasic_email.QUEUE_HANDLERS, max_attempts=3))
            print(get_job(job_id)['status'])
            queue_command([])
        ''')
        result = subprocess.run([sys.executable, '-c', code, str(port)], cwd=tmp_path,
                                capture_output=True, text=True, env=python_env(),
                                timeout=SUBPROCESS_TIMEOUT_SECONDS)
    finally:
        controller.stop()
    assert result.returncode == 0, result.stderr
    assert len(received) == 1 and received[0].rcpt_tos == ['user@example.com']
    assert b'Subject: Welcome' in received[0].content
    lines = result.stdout.splitlines()
    assert "'completed': 1" in lines[0] and lines[1] == 'completed'
    assert 'Total:     1' in result.stdout and 'Completed: 1' in result.stdout


def test_read_tsv_shim_gives_every_job_as_nine_columns(tmp_path, monkeypatch):
    import dbbasic_queue
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(dbbasic_queue.ENV_VAR, raising=False)
    done = dbbasic_queue.enqueue('send_email', {'to': 'a'})
    dbbasic_queue.process_jobs({'send_email': lambda p: 1})
    waiting = dbbasic_queue.enqueue('send_email', {'to': 'b'})
    rows = dbbasic_queue._read_tsv()
    assert all(len(row) == 9 and all(isinstance(v, str) for v in row) for row in rows)
    assert sorted((row[0], row[3]) for row in rows) == sorted([(done, 'completed'), (waiting, 'pending')])


@needs_dbbasic_web
def test_dbbasic_admin_lists_the_queue_files_with_their_rows(tmp_path, monkeypatch):
    from dbbasic_admin.discover import discover_tsv_tables, read_tsv_data
    monkeypatch.chdir(tmp_path)
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    for n in range(3):
        queue.enqueue('send_email', {'to': f'{n}@example.com', 'note': 'tab\there'})
    queue.process_jobs({'send_email': lambda p: None}, max_jobs=1)
    tables = {t['name']: t for t in discover_tsv_tables()}
    assert tables['queue']['rows'] == 2 and tables['queue.done']['rows'] == 1
    assert tables['queue']['columns'][:4] == ['id', 'type', 'payload', 'status']
    rows = read_tsv_data('queue')
    assert [row['status'] for row in rows] == ['pending', 'pending']


@pytest.mark.parametrize('example,expected', [
    ('quickstart.py', 'report    completed'),
    ('report_example.py', 'report: completed  export: completed attempts=2'),
    ('email_example.py', 'status: completed | the SMTP sink received 1 message(s)'),
    ('schedule_example.py', "jobs run in a day: {'build_report': 1, 'cleanup': 6, 'sync_crm': 18}"),
])
def test_each_example_runs(example, expected, tmp_path):
    temp = tmp_path / 'tmp'
    temp.mkdir()
    result = subprocess.run([sys.executable, str(REPO / 'examples' / example)], cwd=tmp_path,
                            capture_output=True, text=True, env=python_env({'TMPDIR': str(temp)}),
                            timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert 'Traceback' not in result.stderr    # a deliberate failure must not read as a crash
    assert not (tmp_path / 'data').exists()  # examples work in their own temp directory ...
    assert list(temp.iterdir()) == []         # ... and remove it


def test_the_cron_worker_example_drains_the_default_queue(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    job_id = queue.enqueue('send_email', {'to': 'a@example.com'})
    result = subprocess.run([sys.executable, str(REPO / 'examples' / 'workers' / 'queue_worker.py')],
                            cwd=tmp_path, capture_output=True, text=True, env=python_env(),
                            timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stderr
    assert f'{job_id} send_email completed' in result.stderr
    assert queue.get_job(job_id)['result']['to'] == 'a@example.com'


@needs_dbbasic_web
def test_dbbasic_web_enqueues_and_its_worker_command_runs_the_job(tmp_path):
    project = tmp_path / 'site'
    (project / 'api').mkdir(parents=True)      # dbbasic-web's sign of a project directory
    data = tmp_path / '_data'                  # its DATA_DIR: beside the project
    run = lambda *args: subprocess.run(args, cwd=project, capture_output=True, text=True,
                                       env=python_env(), timeout=SUBPROCESS_TIMEOUT_SECONDS)
    enqueued = run(sys.executable, '-c', 'from dbbasic_web.jobs import enqueue; '
                   'print(enqueue("write_flatfile", relpath="notes.txt", content="hi"))')
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    worker = subprocess.Popen([shutil.which('dbbasic-web'), 'worker'], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=python_env())
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while not (data / 'notes.txt').exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGINT)
        out, err = worker.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert 'Starting job worker' in out and 'Could not import' not in out, out + err
    assert (data / 'notes.txt').read_text() == 'hi'
    listed = run(shutil.which('dbbasic-queue'), 'list', '--json', '--queue', str(data / 'jobs.tsv'))
    assert listed.returncode == 0, listed.stderr
    [job] = json.loads(listed.stdout)
    assert job['id'] == job_id and job['status'] == 'completed'
    assert job['payload'] == {'task': 'write_flatfile',
                              'args': {'relpath': 'notes.txt', 'content': 'hi'}}


@pytest.mark.slow
def test_push_pop_hands_each_payload_to_exactly_one_of_several_processes(tmp_path):
    from dbbasic.queue import Queue as PushPopQueue
    path = tmp_path / 'jobs.tsv'
    pushed = PushPopQueue(path)
    for n in range(200):
        pushed.push({'n': n})
    Queue(path).enqueue('send_email', {'to': 'a@example.com'})   # not a pushed job: left alone
    popper = """
        import json, sys
        from dbbasic.queue import Queue
        queue, popped = Queue(sys.argv[1]), []
        while (payload := queue.pop()) is not None:
            popped.append(payload['n'])
        print(json.dumps(popped))
    """
    results = wait_all([spawn(popper, path) for _ in range(4)])
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    popped = [n for _, out, _ in results for n in json.loads(out)]
    assert sorted(popped) == list(range(200))
    assert pushed.pop() is None and len(pushed) == 0
    assert Queue(path).stats()['by_type']['send_email']['pending'] == 1
