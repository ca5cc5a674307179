"""Trust under failure: jobs that kill or exit their worker, hand edits, local users, bad
input. Each test reproduces one way a careless or hostile user broke a promise."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbbasic_queue import InvalidJobError, Queue, StorageError, liveness
from dbbasic_queue.lineformat import COLUMNS
from tests.conftest import SUBPROCESS_TIMEOUT_SECONDS, python_env, run_python, spawn, wait_all

# Handlers that log every execution (pid, job id) to an O_APPEND file, one line each.
LOGGING_HANDLERS = '''
import argparse, json, os, sys

def _log(payload):
    with open(os.environ['EXEC_LOG'], 'a') as f:
        f.write(f"{os.getpid()} {payload['n']}\\n")

def fast(payload):
    _log(payload)
    return payload['n']

def exits(payload):
    _log(payload)
    argparse.ArgumentParser().parse_args(['--nope'])

def kills(payload):
    _log(payload)
    os._exit(9)

HANDLERS = {'fast': fast, 'exits': exits, 'kills': kills}
'''


def work(workdir, *args, env=None):
    """One `dbbasic-queue work handlers:HANDLERS` run in workdir, as cron runs it."""
    return subprocess.run([sys.executable, '-m', 'dbbasic_queue', 'work', 'handlers:HANDLERS',
                           *args], cwd=workdir, capture_output=True, text=True,
                          env={**python_env(), **(env or {})}, timeout=SUBPROCESS_TIMEOUT_SECONDS)


def executions(log_path):
    counts = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            n = line.split()[1]
            counts[n] = counts.get(n, 0) + 1
    return counts


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / 'handlers.py').write_text(LOGGING_HANDLERS)
    return tmp_path


# -- A. A job that kills or exits its worker ---------------------------------------------
def test_a_handler_that_calls_sys_exit_fails_its_attempt_and_the_queue_goes_on(workdir):
    queue = Queue(workdir / 'data' / 'queue.tsv')
    bad = queue.enqueue('exits', {'n': 'bad'}, max_attempts=1)
    good = [queue.enqueue('fast', {'n': n}) for n in range(5)]
    env = {'EXEC_LOG': str(workdir / 'exec.log')}
    codes = [work(workdir, env=env).returncode for _ in range(5)]
    assert codes == [0] * 5
    assert [queue.get_job(i)['status'] for i in good] == ['completed'] * 5
    job = queue.get_job(bad)
    assert (job['status'], job['attempts'], job['error']) == ('failed', 1, 'SystemExit: 2')


@pytest.mark.slow
def test_a_job_that_kills_its_worker_is_the_one_charged(workdir):
    queue = Queue(workdir / 'data' / 'queue.tsv')
    fast = [queue.enqueue('fast', {'n': n}, max_attempts=1) for n in range(40)]
    killer = queue.enqueue('kills', {'n': 'killer'}, priority=-1)
    log_path = workdir / 'exec.log'
    for _ in range(6):
        work(workdir, env={'EXEC_LOG': str(log_path)})
    runs = executions(log_path)
    assert [queue.get_job(i)['status'] for i in fast] == ['completed'] * 40
    assert max(runs[str(n)] for n in range(40)) <= 2   # an outcome lost with the worker
    job = queue.get_job(killer)
    assert (job['status'], job['attempts'], runs['killer']) == ('failed', 3, 3)
    assert job['error'].startswith('WorkerLost')
    for job_id, n in zip(fast, range(40)):
        assert queue.get_job(job_id)['attempts'] <= runs[str(n)]
    assert not list((workdir / 'data').glob('.*.running'))   # every journal cleaned up


def test_a_killed_workers_job_runs_at_the_next_process_jobs(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')   # the default backoff: 60 s * 2**n
    job_id = queue.enqueue('slow', {})
    started = tmp_path / 'started'
    worker = spawn('''
import sys, time
from pathlib import Path
from dbbasic_queue import Queue
Queue(sys.argv[1]).process_jobs({'slow': lambda p: (Path(sys.argv[2]).touch(), time.sleep(60))})
''', queue.path, started)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
    while not started.exists():
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    wait_all([worker])
    summary = queue.process_jobs({'slow': lambda p: 'again'})
    assert summary['completed'] == 1
    job = queue.get_job(job_id)
    assert (job['status'], job['attempts'], job['result']) == ('completed', 2, 'again')


# -- B. Hand edits --------------------------------------------------------------------
def rewrite_in_place(path, transform):
    """What `sed ... > f`, `cat > f` or an editor does: same inode, truncated, rewritten,
    holding the queue's lock as a careful person would."""
    with open(path.with_suffix('.lock'), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text()
        with open(path, 'w') as f:
            f.write(transform(text))


@pytest.mark.parametrize('new_payload', ['{"n": 2, "edited": true}', '{"n": 9}', '{}'],
                         ids=['longer', 'same length', 'shorter'])
def test_an_in_place_edit_is_never_reverted_and_leaves_no_fragment(tmp_path, new_payload):
    path = tmp_path / 'data' / 'queue.tsv'
    worker = Queue(path)
    later = time.time() + 3600
    ids = [worker.enqueue('t', {'n': n}, run_at=later) for n in range(5)]
    for _ in range(2):
        assert worker.process_jobs({'t': lambda p: p})['completed'] == 0   # idle, cached
    ino = path.stat().st_ino
    quoted = '"' + new_payload.replace('"', '""') + '"'
    rewrite_in_place(path, lambda text: text.replace('"{""n"": 2}"', quoted))
    assert path.stat().st_ino == ino
    due = Queue(path).enqueue('t', {'n': 'due'})
    assert worker.process_jobs({'t': lambda p: p})['completed'] == 1
    assert worker.get_job(ids[2])['payload'] == json.loads(new_payload)
    assert [worker.get_job(i)['status'] for i in ids] == ['pending'] * 5
    assert worker.get_job(due)['status'] == 'completed'
    assert worker.check() == []
    assert all(len(line.split('\t')) == len(COLUMNS) for line in path.read_text().splitlines())


@pytest.mark.slow
def test_in_place_edits_under_load_lose_nothing(tmp_path):
    path = tmp_path / 'data' / 'queue.tsv'
    Queue(path).enqueue('t', {'n': -1})
    later = time.time() + 3600   # jobs that stay in the file all along, moving every offset
    future = [Queue(path).enqueue('t', {'n': n}, run_at=later) for n in range(300)]
    producer = '''
import sys, time
from dbbasic_queue import Queue
q = Queue(sys.argv[1])
for n in range(int(sys.argv[2]), int(sys.argv[2]) + 1500):
    q.enqueue('t', {'n': n})
    time.sleep(0.01)   # all through the edits
'''
    worker = '''
import os, sys, time
from dbbasic_queue import Queue
q, end = Queue(sys.argv[1]), time.time() + float(sys.argv[3])
def t(payload):
    with open(sys.argv[2], 'a') as f:
        f.write(f"{payload['n']}\\n")
while time.time() < end:
    q.process_jobs({'t': t})
    time.sleep(0.005)
'''
    done_log = tmp_path / 'done.log'
    procs = [spawn(producer, path, start) for start in (0, 100_000)]
    procs += [spawn(worker, path, done_log, 17) for _ in range(2)]
    edits, deadline = 0, time.monotonic() + 15   # the reproduction: 15 s of edits
    while time.monotonic() < deadline:
        time.sleep(0.1 + 0.3 * (edits % 4) / 4)
        # Reformat every payload, one byte longer or shorter each time: every offset moves.
        wide, narrow = '"{""n"":  ', '"{""n"": '
        rewrite_in_place(path, lambda text: text.replace(narrow, wide) if edits % 2 == 0
                         else text.replace(wide, narrow))
        edits += 1
    for returncode, _, err in wait_all(procs):
        assert returncode == 0, err
    last_edit = wide if edits % 2 else narrow
    future_lines = [line for line in path.read_text().splitlines() if line.split('\t')[0] in future]
    assert len(future_lines) == 300 and all(last_edit in line for line in future_lines)
    Queue(path).process_jobs({'t': lambda p: open(done_log, 'a').write(f"{p['n']}\n")})
    done = done_log.read_text().split()
    expected = {str(n) for n in [-1, *range(1500), *range(100_000, 101_500)]}
    assert set(done) == expected and edits >= 30
    assert Queue(path).check() == []


def test_crlf_line_endings_are_read_and_dropped_at_the_next_rewrite(queue):
    ids = [queue.enqueue('t', {'n': n}) for n in range(3)]
    queue.path.write_bytes(queue.path.read_bytes().replace(b'\r\n', b'\n').replace(b'\n', b'\r\n'))
    assert [queue.get_job(i)['payload'] for i in ids] == [{'n': 0}, {'n': 1}, {'n': 2}]
    later = queue.enqueue('t', {'n': 3})
    assert Queue(queue.path, clock=queue._clock).process_jobs({'t': lambda p: p['n']})['completed'] == 4
    assert [queue.get_job(i)['result'] for i in ids + [later]] == [0, 1, 2, 3]
    assert b'\r' not in queue.path.read_bytes() and queue.check() == []


def test_an_append_never_glues_onto_a_line_without_its_newline(queue):
    first = queue.enqueue('t', {'n': 1})
    queue.path.write_bytes(queue.path.read_bytes().rstrip(b'\n'))   # an editor's last line
    second = queue.enqueue('t', {'n': 2})
    assert [queue.get_job(i)['payload'] for i in (first, second)] == [{'n': 1}, {'n': 2}]
    assert queue.process_jobs({'t': lambda p: p['n']})['completed'] == 2


def test_a_last_line_without_newline_survives_a_rewrite(queue):
    keep = queue.enqueue('t', {'n': 1}, run_at=queue._clock() + 3600)
    run = queue.enqueue('u', {})
    queue.path.write_bytes(queue.path.read_bytes() + b'hand typed, no newline')
    assert queue.process_jobs({'u': lambda p: 'ok'})['completed'] == 1
    assert queue.get_job(run)['status'] == 'completed' and queue.get_job(keep)
    assert queue.path.read_bytes().endswith(b'\nhand typed, no newline\n')


def test_bytes_that_are_not_utf8_survive_every_path_and_check_reports_them(queue):
    job_id = queue.enqueue('t', {'name': 'Rene'})
    raw = queue.path.read_bytes().replace(b'Rene', b'Ren\xe9')   # Latin-1, typed by hand
    queue.path.write_bytes(raw)
    seen = []
    assert queue.process_jobs({'t': seen.append}) == {'completed': 1, 'retried': 0,
                                                       'failed': 0, 'recovered': 0}
    assert seen == [{'name': 'Ren\udce9'}]
    archived = queue.archive_path.read_bytes()
    assert b'Ren\xe9' in archived and queue.get_job(job_id)['status'] == 'completed'
    problems = queue.check()
    assert len(problems) == 1 and 'not valid UTF-8' in problems[0]


def dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    return proc.pid


def test_the_next_rewrite_removes_temp_files_of_dead_rewrites(queue):
    queue.enqueue('t', {})
    data = queue.path.parent
    pid = dead_pid()
    dead = [data / f'.queue.tsv.{liveness.HOST}.{pid}.0a0b0c0d.tmp',
            data / f'.queue.tsv.{pid}.0a0b0c0d.tmp',                  # 2.0.0's names
            data / f'.queue.done.tsv.{liveness.HOST}.{pid}.0a0b0c0d.tmp']
    alive = [data / f'.queue.tsv.{liveness.HOST}.{os.getpid()}.0a0b0c0d.tmp',
             data / f'.queue.tsv.elsewhere.{pid}.0a0b0c0d.tmp']       # another host's
    for path in dead + alive:
        path.write_text('a copy of the file')
    assert len(queue.check()) == 3
    queue.process_jobs({'t': lambda p: None})
    assert [p.exists() for p in dead + alive] == [False] * 3 + [True] * 2
    for path in alive:
        path.unlink()
    assert queue.check() == []


# -- C. Local users and files ---------------------------------------------------------
@pytest.mark.parametrize('name', ['queue.lock', 'queue.rewrite.lock', 'queue.tsv',
                                  'queue.done.tsv'])
def test_queue_files_are_never_opened_through_a_symlink(tmp_path, name):
    data = tmp_path / 'data'
    data.mkdir()
    target = tmp_path / 'elsewhere' / 'nologin'
    target.parent.mkdir()
    (data / name).symlink_to(target)
    queue = Queue(data / 'queue.tsv')
    with pytest.raises(StorageError, match=f'{name}: it is a symbolic link'):
        job_id = queue.enqueue('t', {'n': 1})
        queue.process_jobs({'t': lambda p: None})
        queue.get_job(job_id)
    assert not target.exists()


def test_no_message_echoes_a_file_that_is_not_a_queue(tmp_path):
    secret = tmp_path / 'shadow'
    secret.write_text('root:$6$secrethash:19000:0:99999:7:::\n')
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'queue.tsv').symlink_to(secret)
    result = subprocess.run([sys.executable, '-m', 'dbbasic_queue', 'check'], cwd=tmp_path,
                            capture_output=True, text=True, env=python_env(),
                            timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert result.returncode != 0 and 'symbolic link' in result.stderr
    (data / 'queue.tsv').unlink()
    (data / 'queue.tsv').write_text(secret.read_text())     # a copy, not a link
    for command in (['check'], ['list'], ['stats'], ['enqueue', 't', '{}']):
        result = subprocess.run([sys.executable, '-m', 'dbbasic_queue', *command], cwd=tmp_path,
                                capture_output=True, text=True, env=python_env(),
                                timeout=SUBPROCESS_TIMEOUT_SECONDS)
        assert 'secrethash' not in result.stdout + result.stderr, command
        assert 'not a dbbasic-queue file' in result.stderr


def test_files_are_created_honouring_the_umask(tmp_path):
    code = '''
import os, sys
os.umask(0o077)
from dbbasic_queue import Queue
q = Queue(sys.argv[1])
q.process_jobs({'t': lambda p: None}) if q.enqueue('t', {'token': 'secret'}) else None
'''
    assert run_python(code, tmp_path / 'data' / 'queue.tsv').returncode == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / 'data').iterdir()}
    assert modes['queue.tsv'] == modes['queue.done.tsv'] == modes['queue.lock'] == 0o600
    assert modes['queue.rewrite.lock'] == 0o600


AS_USERS = '''
import json, os, sys
from dbbasic.tsv import TSV               # everything imported as root: the interpreter and
from dbbasic_queue import Queue, StorageError   # its library may be unreadable to others
path, steps = sys.argv[1], json.loads(sys.argv[2])


def as_user(uid, gid, step):
    pid = os.fork()
    if pid == 0:
        os.setgroups([gid]); os.setgid(gid); os.setuid(uid); os.umask(0o022)
        queue = Queue(path)
        try:
            if step == 'enqueue':
                print(queue.enqueue('t', {'by': uid}), flush=True)
            else:
                print(queue.process_jobs({'t': lambda p: p['by']})['completed'], flush=True)
        except StorageError as exc:
            print('StorageError:', exc, flush=True)
        os._exit(0)
    os.waitpid(pid, 0)


for uid, gid, step in steps:
    as_user(uid, gid, step)
'''


def run_as_users(path, steps, env=None):
    """Each (uid, gid, step) in a forked child that became that user, in order; their
    output lines. Real users, so the kernel's permission checks are the real ones."""
    for parent in [path.parent, *path.parent.parents][:-1]:
        if parent.exists() and parent != Path('/'):
            os.chmod(parent, os.stat(parent).st_mode | 0o011)   # traversable, not listable
    result = run_python(AS_USERS, path, json.dumps(steps), env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to become other users')
def test_an_unwritable_queue_is_a_storage_error_naming_the_file(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv', file_mode=0o600)
    queue.enqueue('t', {})
    [line] = run_as_users(queue.path, [[54321, 54321, 'enqueue']])
    assert line.startswith(f'StorageError: cannot read {queue.path}: Permission denied')


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to become other users')
def test_file_mode_shares_a_queue_with_a_group_end_to_end(tmp_path):
    # Two real users in one group: the one who creates the queue (umask 022) and another
    # who enqueues and works it. uid/gid numbers need no /etc/passwd entry.
    group, owner, member = 47000, 47001, 47002
    shared = tmp_path / 'shared'
    shared.mkdir()
    os.chown(shared, owner, group)
    os.chmod(shared, 0o770)
    path = shared / 'queue.tsv'
    first, second, worked = run_as_users(
        path, [[owner, group, 'enqueue'], [member, group, 'enqueue'], [member, group, 'work']],
        env={'DBBASIC_QUEUE_MODE': '660'})
    assert worked == '2'
    queue = Queue(path)
    assert [queue.get_job(i)['result'] for i in (first, second)] == [owner, member]
    for name in ('queue.tsv', 'queue.done.tsv', 'queue.lock', 'queue.rewrite.lock'):
        assert (shared / name).stat().st_mode & 0o777 == 0o660, name


# -- D. Bad input accepted, failing later ------------------------------------------------
@pytest.mark.parametrize('options', [
    {'run_at': 99999999999999999999}, {'run_at': -1e300}, {'delay': 1e300},
    {'timeout': 1e300}, {'unique_key': 'key\udc80'},
], ids=['run_at far future', 'run_at far past', 'delay', 'timeout', 'surrogate unique_key'])
def test_values_that_cannot_be_stored_or_used_are_refused_at_enqueue(queue, options):
    with pytest.raises(InvalidJobError):
        queue.enqueue('t', {}, **options)
    assert not queue.path.exists()


def test_a_job_type_with_a_lone_surrogate_is_refused(queue):
    with pytest.raises(InvalidJobError, match='lone surrogate'):
        queue.enqueue('t\udc80', {})


def test_list_and_show_survive_a_hand_edited_time_out_of_range(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    job_id = queue.enqueue('t', {})
    text = queue.path.read_text().split('\n')
    fields = text[1].split('\t')
    fields[5] = '99999999999999999999'
    text[1] = '\t'.join(fields)
    queue.path.write_text('\n'.join(text))
    for command in (['list'], ['show', job_id], ['stats']):
        result = subprocess.run([sys.executable, '-m', 'dbbasic_queue', *command], cwd=tmp_path,
                                capture_output=True, text=True, env=python_env(),
                                timeout=SUBPROCESS_TIMEOUT_SECONDS)
        assert result.returncode == 0 and 'Overflow' not in result.stderr, result.stderr


# -- B5. dbbasic-queue edit -------------------------------------------------------------
EDITOR = '''
import os, sys
from pathlib import Path
from dbbasic_queue import Queue
copy = Path(sys.argv[-1])
count = Path(os.environ['EDIT_COUNT'])
count.write_text(str(int(count.read_text() or 0) + 1) if count.exists() else '1')
queue = Queue(os.environ['QUEUE_PATH'])
for step in os.environ['EDIT_STEPS'].split(';')[int(count.read_text()) - 1].split(','):
    if step == 'change':       # the person changes job 1's payload
        copy.write_text(copy.read_text().replace('{""n"": 1}', '{""n"": 100}'))
    elif step == 'break':      # ... or types a line that is not a job
        copy.write_text(copy.read_text() + 'oops\\n')
    elif step == 'fix':
        copy.write_text(copy.read_text().replace('oops\\n', ''))
    elif step == 'enqueue':    # meanwhile a producer adds a job (takes the lock)
        queue.enqueue('t', {'n': 'new'})
    elif step == 'work':       # meanwhile a worker runs and archives every due job
        queue.process_jobs({'t': lambda p: p})
'''


def edit(tmp_path, steps, answers=None):
    """`dbbasic-queue edit` with an editor that does steps (one ';'-separated group per
    editor run); answers are typed at a real terminal (a pty) when it asks."""
    import pty
    editor = tmp_path / 'editor.py'
    editor.write_text(EDITOR)
    env = python_env({'VISUAL': f'{sys.executable} {editor}', 'EDIT_STEPS': steps,
                      'EDIT_COUNT': str(tmp_path / 'count'),
                      'QUEUE_PATH': str(tmp_path / 'data' / 'queue.tsv')})
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, '-m', 'dbbasic_queue', 'edit'], cwd=tmp_path,
                                env=env, stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if answers:
            os.write(master, answers.encode())
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    finally:
        os.close(master)
        os.close(slave)
    return proc.returncode, out, err


@pytest.fixture
def edited_queue(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    later = time.time() + 3600
    return queue, [queue.enqueue('t', {'n': n}, run_at=later) for n in range(3)]


def test_edit_saves_a_valid_change(tmp_path, edited_queue):
    queue, ids = edited_queue
    code, out, err = edit(tmp_path, 'change')
    assert code == 0 and 'saved' in out and '1 line(s) changed' in out, err
    assert [queue.get_job(i)['payload']['n'] for i in ids] == [0, 100, 2]


@pytest.mark.slow
def test_edit_names_bad_lines_and_aborts_or_edits_again(tmp_path, edited_queue):
    queue, ids = edited_queue
    before = queue.path.read_bytes()
    code, out, err = edit(tmp_path, 'change,break', answers='a\n')
    assert code == 1 and "line 5: not a job" in err and 'nothing was saved' in err
    assert queue.path.read_bytes() == before
    (tmp_path / 'count').unlink()
    code, out, err = edit(tmp_path, 'change,break;fix', answers='e\n')
    assert code == 0, err
    assert queue.get_job(ids[1])['payload'] == {'n': 100} and queue.check() == []


def test_edit_keeps_jobs_appended_while_the_editor_was_open(tmp_path, edited_queue):
    queue, ids = edited_queue
    code, out, err = edit(tmp_path, 'change,enqueue')   # deadlocks if edit held the lock
    assert code == 0, err
    jobs = queue.list_jobs()
    assert sorted(str(job['payload']['n']) for job in jobs) == ['0', '100', '2', 'new']


def test_edit_refuses_to_overwrite_what_a_worker_changed_meanwhile(tmp_path, edited_queue):
    queue, ids = edited_queue
    queue.enqueue('t', {'n': 1})   # never: the worker below runs this one; edit changes it too
    code, out, err = edit(tmp_path, 'change,work')
    assert code == 1 and 'by a worker while you edited it' in err and 'nothing was saved' in err
    kept = Path(err.split('your version is kept in ')[1].split()[0])
    assert '{""n"": 100}' in kept.read_text()
    kept.unlink()
    assert [job['status'] for job in queue.list_jobs(status='completed')] == ['completed']
    assert [queue.get_job(i)['payload']['n'] for i in ids] == [0, 1, 2]
