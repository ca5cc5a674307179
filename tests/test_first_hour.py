"""The first hour and cron (issue: first hour): what a new user trips on, run as the user
runs it: real subprocesses of the command line, dbbasic-cli, cron's empty environment."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import dbbasic_queue
from dbbasic_queue import Queue
from dbbasic_queue.cli import HOW_TO_CONFIGURE, build_parser
from tests.conftest import REPO, SUBPROCESS_TIMEOUT_SECONDS, python_env
from tests.test_cli import HANDLERS, cli


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.delenv('DBBASIC_QUEUE', raising=False)
    monkeypatch.delenv('DBBASIC_QUEUE_HANDLERS', raising=False)
    (tmp_path / 'handlers.py').write_text(HANDLERS)
    return tmp_path


def queue_in(workdir, name='queue.tsv'):
    return Queue(workdir / 'data' / name)


def dbbasic(workdir, *args, env=None):
    """dbbasic-cli 1.0.0's `dbbasic` command, as its README shows it."""
    return subprocess.run([shutil.which('dbbasic'), *args], cwd=workdir, capture_output=True,
                          text=True, env=python_env(env), timeout=SUBPROCESS_TIMEOUT_SECONDS)


# -- 4, 5: options where rq and click users type them -------------------------------------
@pytest.mark.slow
def test_global_options_work_after_the_command_too(workdir):
    queue_in(workdir).enqueue('send_email', {'to': 'a@example.com'})
    queue_in(workdir, 'x.tsv').enqueue('report', {})
    assert json.loads(cli(workdir, 'stats', '--json', check_code=0).stdout)['total'] == 1
    assert json.loads(cli(workdir, '--json', 'stats', check_code=0).stdout)['total'] == 1
    assert json.loads(cli(workdir, 'list', '--json', '--status', 'failed', check_code=0).stdout) == []
    other = cli(workdir, 'stats', '--queue', 'data/x.tsv', '--json', check_code=0).stdout
    assert json.loads(other)['by_type'] == {'report': json.loads(other)['by_type']['report']}
    through_dbbasic_cli = dbbasic(workdir, 'queue:stats', '--json')
    assert through_dbbasic_cli.returncode == 0, through_dbbasic_cli.stderr
    assert json.loads(through_dbbasic_cli.stdout)['by_status']['pending'] == 1


def test_version_the_worker_alias_and_burst(workdir):
    version = cli(workdir, '--version', check_code=0).stdout.strip()
    assert version == f'dbbasic-queue {dbbasic_queue.__version__}'
    job_id = queue_in(workdir).enqueue('send_email', {'to': 'a@example.com'})
    cli(workdir, 'worker', 'handlers:HANDLERS', '--burst', check_code=0)
    assert queue_in(workdir).get_job(job_id)['status'] == 'completed'


# -- 6: `work` with no MODULE:ATTR --------------------------------------------------------
def test_work_without_handlers_says_in_one_line_how_to_configure_them(workdir):
    result = cli(workdir, 'work', check_code=2)
    assert result.stderr == f'dbbasic-queue: error: {HOW_TO_CONFIGURE}\n'
    assert 'DBBASIC_QUEUE_HANDLERS' in result.stderr and '[tool.dbbasic-queue]' in result.stderr


def test_work_finds_the_handlers_in_the_environment(workdir):
    job_id = queue_in(workdir).enqueue('send_email', {'to': 'a@example.com'})
    cli(workdir, 'work', env={'DBBASIC_QUEUE_HANDLERS': 'handlers:HANDLERS'}, check_code=0)
    assert queue_in(workdir).get_job(job_id)['status'] == 'completed'


def test_dbbasic_queue_worker_with_no_arguments_uses_the_projects_pyproject(workdir):
    (workdir / 'pyproject.toml').write_text(
        '[project]\nname = "app"\n\n[tool.dbbasic-queue]\n'
        'handlers = "handlers:HANDLERS"   # the jobs of this app\n\n[tool.other]\nx = 1\n')
    first = queue_in(workdir).enqueue('send_email', {'to': 'a@example.com'})
    result = dbbasic(workdir, 'queue:worker')
    assert result.returncode == 0, result.stderr
    assert queue_in(workdir).get_job(first)['status'] == 'completed'
    # From a subdirectory of the project: found upward, imported from the project.
    (workdir / 'sub').mkdir()
    second = queue_in(workdir).enqueue('send_email', {'to': 'b@example.com'})
    cli(workdir / 'sub', '--queue', str(workdir / 'data' / 'queue.tsv'), 'work', check_code=0)
    assert queue_in(workdir).get_job(second)['status'] == 'completed'


# -- 7: list's limit, and pipes that close early -----------------------------------------
def test_list_says_when_it_stops_at_its_limit_and_limit_0_shows_all(workdir):
    queue = queue_in(workdir)
    for n in range(67):
        queue.enqueue('send_email', {'n': n})
    limited = cli(workdir, 'list', check_code=0)
    assert len(limited.stdout.splitlines()) == 1 + 50
    assert limited.stderr == 'showing 50 of 67; --limit 0 for all\n'
    everything = cli(workdir, 'list', '--limit', '0', check_code=0)
    assert len(everything.stdout.splitlines()) == 1 + 67 and everything.stderr == ''
    assert len(json.loads(cli(workdir, 'list', '--limit', '0', '--json').stdout)) == 67


@pytest.mark.parametrize('command', [['list', '--limit', '0'], ['stats']])
def test_a_reader_that_stops_early_gets_a_quiet_exit_0(workdir, command):
    queue = queue_in(workdir)
    for n in range(3000):   # far more output than a pipe holds
        queue.enqueue(f'type_{n}', {'n': n})
    proc = subprocess.Popen([sys.executable, '-m', 'dbbasic_queue', *command], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env())
    proc.stdout.readline()
    proc.stdout.readline()
    proc.stdout.close()          # `| head -2`
    try:
        err = proc.stderr.read()
        assert proc.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert err == b''


# -- 8: help -------------------------------------------------------------------------------
def test_every_command_and_option_has_a_help_line_and_shows_its_default():
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == 'command']
    assert {choice.dest for choice in commands._choices_actions} >= {
        'work', 'enqueue', 'stats', 'list', 'show', 'retry', 'cancel', 'pause', 'resume',
        'purge', 'check', 'edit', 'crontab', 'migrate'}
    assert all(choice.help for choice in commands._choices_actions)
    for name, sub in [('', parser)] + sorted(commands.choices.items()):
        text = sub.format_help()
        for action in sub._actions:
            if action.dest in ('help', 'command'):
                continue
            assert action.help, f'{name} {action.option_strings or action.dest} has no help'
            shown = action.default not in (None, False, argparse_suppress()) and action.option_strings
            if shown:
                assert f'(default: {action.default})' in ' '.join(text.split()), (name, action.dest)


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


# -- 9: cancel --all, pause and resume ------------------------------------------------------
def test_cancel_all_of_a_type_or_every_pending_job(backend):
    queue = Queue(backend)
    mails = [queue.enqueue('send_email', {'n': n}) for n in range(3)]
    report = queue.enqueue('report', {})
    assert sorted(queue.cancel_jobs('send_email')) == sorted(mails)
    assert [queue.get_job(i)['status'] for i in mails] == ['cancelled'] * 3
    assert queue.get_job(report)['status'] == 'pending'
    assert queue.cancel_jobs() == [report] and queue.cancel_jobs() == []
    assert queue.process_jobs({'send_email': print, 'report': print})['completed'] == 0


def test_cancel_all_on_the_command_line(workdir):
    queue = queue_in(workdir)
    ids = [queue.enqueue(t, {}) for t in ('send_email', 'send_email', 'report')]
    assert cli(workdir, 'cancel', '--all', '--type', 'send_email', check_code=0).stdout == \
        'cancelled 2 pending job(s) of type send_email\n'
    assert json.loads(cli(workdir, 'cancel', '--all', '--json', check_code=0).stdout) == \
        {'cancelled': [ids[2]]}
    assert 'give either a job ID or --all' in cli(workdir, 'cancel', check_code=2).stderr


def test_a_paused_type_stays_pending_until_resumed(backend):
    queue = Queue(backend)
    mail, report = queue.enqueue('send_email', {}), queue.enqueue('report', {})
    queue.pause('send_email')
    handlers = {'send_email': lambda p: 'sent', 'report': lambda p: 'built'}
    assert Queue(backend).process_jobs(handlers)['completed'] == 1   # another process's view
    assert queue.get_job(mail)['status'] == 'pending'
    assert queue.get_job(report)['status'] == 'completed'
    assert Queue(backend).stats()['paused'] == ['send_email']
    Queue(backend).resume('send_email')
    assert queue.process_jobs(handlers)['completed'] == 1
    assert queue.get_job(mail)['status'] == 'completed' and queue.stats()['paused'] == []


@pytest.mark.slow
def test_pause_is_plain_text_beside_the_queue_and_shown_by_stats(workdir):
    queue_in(workdir).enqueue('send_email', {'to': 'a@example.com'})
    cli(workdir, 'pause', 'send_email', check_code=0)
    cli(workdir, 'pause', 'report', check_code=0)
    assert (workdir / 'data' / 'queue.paused').read_text() == 'report\nsend_email\n'
    cli(workdir, 'work', 'handlers:HANDLERS', check_code=0)
    assert 'paused:         report, send_email' in cli(workdir, 'stats', check_code=0).stdout
    assert queue_in(workdir).stats()['by_status']['pending'] == 1
    cli(workdir, 'resume', 'send_email', check_code=0)
    cli(workdir, 'work', 'handlers:HANDLERS', check_code=0)
    assert queue_in(workdir).stats()['by_status']['completed'] == 1
    assert (workdir / 'data' / 'queue.paused').read_text() == 'report\n'
    assert 'job_type must be one line' in cli(workdir, 'pause', 'a\tb', check_code=2).stderr


# -- 10: logging ----------------------------------------------------------------------------
def test_work_logs_a_line_per_job_and_takes_quiet_verbose_and_a_level(workdir):
    for _ in range(2):
        queue_in(workdir).enqueue('send_email', {'to': 'a@example.com'})
    assert cli(workdir, 'work', 'handlers:HANDLERS', check_code=0).stderr.count(' completed ') == 2
    queue_in(workdir).enqueue('send_email', {'to': 'a@example.com'})
    assert cli(workdir, 'work', 'handlers:HANDLERS', '-q', check_code=0).stderr == ''
    queue_in(workdir).enqueue('broken', {})
    quiet = cli(workdir, 'work', '--log-level', 'error', 'handlers:HANDLERS', check_code=0)
    assert 'ERROR job' in quiet.stderr and ' INFO ' not in quiet.stderr
    assert ' INFO working ' in cli(workdir, 'work', 'handlers:HANDLERS', '-v', check_code=0).stderr
    assert cli(workdir, 'work', '-v', '-q', check_code=2).stderr.count('\n') == 1


# -- 11: the wrong working directory ---------------------------------------------------------
def test_a_directory_without_a_queue_is_named_not_silent(workdir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp('elsewhere')
    (elsewhere / 'handlers.py').write_text(HANDLERS)
    missing = elsewhere / 'data' / 'queue.tsv'
    work = cli(elsewhere, 'work', 'handlers:HANDLERS', check_code=0)
    assert f'working {missing} (no such file yet) with handlers:HANDLERS' in work.stderr
    check = cli(elsewhere, 'check', check_code=1)
    assert check.stderr == f'dbbasic-queue: error: no queue at {missing}\n'
    for command in ('stats', 'list'):
        result = cli(elsewhere, command, check_code=0)
        assert f'no queue at {missing}' in result.stderr
    assert not missing.exists()


# -- 12: cron's PATH and environment ---------------------------------------------------------
def test_crontab_prints_a_line_that_works_in_crons_empty_environment(workdir):
    job_id = queue_in(workdir).enqueue('send_email', {'to': 'a@example.com'})
    line = cli(workdir, 'crontab', 'handlers:HANDLERS', check_code=0).stdout.strip()
    log_path = workdir / 'data' / 'queue.log'
    script = os.path.join(os.path.dirname(sys.executable), 'dbbasic-queue')
    # The queue as the app names it: here the default, under the directory it changes to.
    assert line == (f'* * * * * cd {workdir} && {script} work handlers:HANDLERS '
                    f'--max-seconds 55 >> {log_path} 2>&1 # dbbasic-queue worker of '
                    f'{workdir} handlers:HANDLERS')
    command = line.split(' ', 5)[5]
    ran = subprocess.run(['env', '-i', 'sh', '-c', command], cwd='/', capture_output=True,
                         text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert ran.returncode == 0, ran.stderr + log_path.read_text()
    assert queue_in(workdir).get_job(job_id)['status'] == 'completed'
    assert f'{job_id} send_email completed' in log_path.read_text()


@pytest.mark.parametrize('every,schedule,seconds', [
    ('5m', '*/5 * * * *', '295'), ('1h', '0 * * * *', '3595'), ('6h', '0 */6 * * *', '21595'),
    ('1d', '0 0 * * *', '86395')])
def test_crontab_every(workdir, every, schedule, seconds):
    line = cli(workdir, 'crontab', 'handlers:HANDLERS', '--every', every, check_code=0).stdout
    assert line.startswith(schedule + ' cd ') and f'--max-seconds {seconds} ' in line


def test_crontab_refuses_what_cron_cannot_do_and_handlers_that_do_not_import(workdir):
    assert 'whole minutes that divide an hour' in cli(
        workdir, 'crontab', 'handlers:HANDLERS', '--every', '7m', check_code=2).stderr
    assert 'cannot import nope' in cli(workdir, 'crontab', 'nope:H', check_code=2).stderr
    assert cli(workdir, 'crontab', check_code=2).stderr == f'dbbasic-queue: error: {HOW_TO_CONFIGURE}\n'


# -- 14: the on_failure hook ---------------------------------------------------------------------
def test_on_failure_gets_every_failed_attempt_and_its_own_errors_never_break_the_run(
        backend, caplog):
    queue = Queue(backend, backoff_base_seconds=0)
    seen = []

    def on_failure(job, exc):
        seen.append((job['id'], job['status'], job['attempts'], job['error'], exc))
        raise RuntimeError('the alerting service is down')

    def flaky(payload):
        raise ValueError(f"bad input {payload['n']}")

    broken = queue.enqueue('flaky', {'n': 1}, max_attempts=2)
    fine = queue.enqueue('fine', {})
    handlers = {'flaky': flaky, 'fine': lambda p: 'ok'}
    with caplog.at_level(logging.ERROR, logger='dbbasic_queue'):
        queue.process_jobs(handlers, on_failure=on_failure)
        queue.process_jobs(handlers, on_failure=on_failure)   # the retry (backoff 0)
    assert [(i, status, attempts, error) for i, status, attempts, error, _ in seen] == [
        (broken, 'pending', 1, 'ValueError: bad input 1'),
        (broken, 'failed', 2, 'ValueError: bad input 1')]
    assert all(isinstance(exc, ValueError) and str(exc) == 'bad input 1' for *_, exc in seen)
    assert queue.get_job(fine)['status'] == 'completed'
    assert 'the on_failure hook raised' in caplog.text
    with pytest.raises(dbbasic_queue.InvalidArgumentError):
        queue.process_jobs(handlers, on_failure='not callable')


def test_on_failure_gets_a_timeout_as_a_timeout_error(queue):
    seen = []
    queue.enqueue('slow', {}, timeout=0.2, max_attempts=1)
    queue.process_jobs({'slow': lambda p: __import__('time').sleep(5)},
                       on_failure=lambda job, exc: seen.append((job['status'], exc)))
    [(status, exc)] = seen
    assert status == 'failed' and isinstance(exc, TimeoutError)


# -- 13: the README's examples run as written ---------------------------------------------------
README = (REPO / 'README.md').read_text()


def readme_block(first_line):
    """The README's fenced code block that begins with first_line."""
    for block in re.findall(r'```\w*\n(.*?)```', README, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f'no block starting {first_line!r} in the README')


def test_the_quick_start_worker_is_the_example_that_the_tests_run_and_names_its_handlers():
    block = readme_block('# workers/queue_worker.py')
    assert block in (REPO / 'examples' / 'workers' / 'queue_worker.py').read_text()
    assert 'HANDLERS = ' in block and 'logging.basicConfig(level=logging.INFO' in block
    assert 'workers.queue_worker:HANDLERS' in readme_block('$ cd /app && dbbasic-queue crontab')


def test_the_transcripts_handlers_module_gives_the_transcripts_outcomes(workdir):
    (workdir / 'handlers.py').write_text(readme_block('# handlers.py'))
    mail = cli(workdir, 'enqueue', 'send_email', '{"to": "user@example.com"}').stdout.strip()
    report = cli(workdir, 'enqueue', 'build_report', '-', '--max-attempts', '1',
                 stdin='{"month": "2026-11"}').stdout.strip()
    cli(workdir, 'work', 'handlers:HANDLERS', check_code=0)
    assert queue_in(workdir).get_job(mail)['status'] == 'completed'
    failed = json.loads(cli(workdir, 'list', '--status', 'failed', '--json').stdout)
    assert [(j['id'], j['error']) for j in failed] == [(report, 'RuntimeError: warehouse is down')]


# -- 3: type hints a checker sees ------------------------------------------------------------
@pytest.mark.slow
def test_the_public_api_is_typed_for_a_type_checker(tmp_path):
    snippet = tmp_path / 'app.py'
    snippet.write_text(textwrap.dedent('''
        from dbbasic_queue import JobDict, Queue, enqueue, get_job
        job_id: str = enqueue('send_email', {'to': 'a@example.com'})
        job = get_job(job_id)
        if job is not None:
            status: str = job['status']
        wrong: int = Queue('data/queue.tsv').get_job(job_id)
        enqueue(42, {})
    '''))
    result = subprocess.run([sys.executable, '-m', 'mypy', '--no-incremental', str(snippet)],
                            cwd=REPO, capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_SECONDS * 3)
    errors = [line for line in result.stdout.splitlines() if ': error:' in line]
    assert len(errors) == 2, result.stdout
    assert 'JobDict' in errors[0] and 'variable has type "int"' in errors[0]
    assert 'Argument 1 to "enqueue" has incompatible type "int"' in errors[1]
    assert (REPO / 'dbbasic_queue' / 'py.typed').exists()
