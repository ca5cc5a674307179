"""The command line: `dbbasic-queue`, `python -m dbbasic_queue`, and dbbasic-cli's
`dbbasic queue:<command>` (see COMMANDS).

Exit codes: 0 ok, 1 not found or problems found, 2 bad usage or input. Errors are one
line on stderr, never a traceback. Logs go to stderr, one line per job. The options
--queue, --json, -v, -q and --log-level go before or after the command.
"""

import argparse
import importlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

from .errors import QueueError, error_text
from .job import FINAL_WORDS, STATUS_WORDS
from .queue import DEFAULT_PATH, ENV_VAR, MAX_ATTEMPTS, MODE_ENV_VAR, Queue, is_redis_url
from .schedule import check_schedule
from .storage import make_directory
from .schedule import removed as schedules_removed
from .validate import check_handlers, check_limit, parse_duration
from .version import __version__

try:
    import tomllib
except ImportError:     # Python < 3.11: the one setting we read is found by a pattern
    tomllib = None  # type: ignore[assignment]

log = logging.getLogger('dbbasic_queue')

PROG = 'dbbasic-queue'
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
PROGRESS_MIN_JOBS = 1000         # show a progress line instead of per-job lines above this
PROGRESS_INTERVAL_SECONDS = 0.2
HANDLERS_ENV_VAR = 'DBBASIC_QUEUE_HANDLERS'   # MODULE:ATTR when `work` is given none
SCHEDULE_ENV_VAR = 'DBBASIC_QUEUE_SCHEDULE'   # MODULE:ATTR when `work` is given no --schedule
NEXT_RUNS = 3                   # `schedule` shows each entry's next runs
CONFIG_TABLE = 'dbbasic-queue'               # [tool.dbbasic-queue] in pyproject.toml
LOG_LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR')
LIST_LIMIT = 50
CRON_MARGIN_SECONDS = 5         # a cron run stops this long before the next one starts
WEB_POLL_SECONDS = 0.2          # how soon `web` notices SIGTERM or Ctrl-C
CRONTAB_MARK = '# dbbasic-queue worker of'   # ends the line crontab prints: --merge finds it
HOW_TO_CONFIGURE = (f'no handlers given: run `{PROG} work MODULE:ATTR`, or set '
                    f'{HANDLERS_ENV_VAR}=app.jobs:HANDLERS, or add to pyproject.toml: '
                    f'[tool.{CONFIG_TABLE}] handlers = "app.jobs:HANDLERS"')


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit 2."""


class NotFound(Exception):
    """A job id that is not in the queue: one line on stderr, exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f'{message} (see {self.prog} --help)')


# -- parsing helpers ---------------------------------------------------------------
def parse_time(text):
    """Unix seconds, or an ISO 8601 date/time (local time unless it has an offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace('Z', '+00:00')).timestamp()
    except ValueError:
        raise UsageError(f'bad time {text!r}: use Unix seconds or ISO 8601, '
                         f'e.g. 2026-12-01T09:00') from None


def resolve_handlers(spec):
    """(MODULE:ATTR, the directory it is imported from): spec if given, else
    $DBBASIC_QUEUE_HANDLERS, else [tool.dbbasic-queue] handlers in the nearest
    pyproject.toml (from the current directory up; imported from that file's directory).
    Neither: a UsageError saying how to configure one."""
    found = (spec, os.getcwd()) if spec else configured('handlers', HANDLERS_ENV_VAR)
    if found[0] is None:
        raise UsageError(HOW_TO_CONFIGURE)
    return found


def resolve_schedule(spec):
    """As resolve_handlers, for the schedule ($DBBASIC_QUEUE_SCHEDULE, [tool.dbbasic-queue]
    schedule); (None, None) when none is configured: a schedule is optional."""
    return (spec, os.getcwd()) if spec else configured('schedule', SCHEDULE_ENV_VAR)


def configured(key, env_var):
    """(MODULE:ATTR, directory) from $env_var, else from key in [tool.dbbasic-queue] of
    the nearest pyproject.toml; (None, None) if neither has it."""
    if os.environ.get(env_var):
        return os.environ[env_var], os.getcwd()
    here = Path.cwd()
    for folder in (here, *here.parents):
        pyproject = folder / 'pyproject.toml'
        if pyproject.is_file():
            value = _configured_value(pyproject, key)
            return (value, str(folder)) if value else (None, None)
    return None, None


def _configured_value(pyproject, key):
    try:
        text = pyproject.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f'cannot read {pyproject}: {exc}') from None
    if tomllib is None:
        table = re.search(r'^\[tool\.(?:"dbbasic-queue"|dbbasic-queue)\][^\S\n]*$(.*?)(?=^\[|\Z)',
                          text, re.M | re.S)
        found = table and re.search(rf'^{key}\s*=\s*["\']([^"\'\n]*)["\']', table.group(1), re.M)
        return found.group(1) if found else None
    try:
        value = tomllib.loads(text).get('tool', {}).get(CONFIG_TABLE, {}).get(key)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f'{pyproject}: {exc}') from None
    if value is not None and not isinstance(value, str):
        raise UsageError(f'{pyproject}: [tool.{CONFIG_TABLE}] {key} must be a string '
                         f'like "app.jobs:{key.upper()}"')
    return value


def load_attr(spec, directory=None, what='handlers'):
    """'package.module:ATTR' -> that object (called, if ATTR is a function), imported
    with directory (default: the current one) first on sys.path."""
    module_name, _, attr = spec.partition(':')
    if not module_name or not attr:
        raise UsageError(f'{what} must be given as MODULE:ATTR, got {spec!r}')
    sys.path.insert(0, directory or os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f'cannot import {module_name}: {error_text(exc)}') from None
    finally:
        sys.path.pop(0)
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise UsageError(f'{module_name} has no attribute {attr!r}') from None
    if callable(value) and not hasattr(value, 'items'):
        value = value()
    return value


def load_handlers(spec, directory=None):
    """The handlers dict at spec (ATTR may be a function returning one)."""
    handlers = load_attr(spec, directory)
    if not hasattr(handlers, 'items') or not all(callable(h) for h in handlers.values()):
        raise UsageError(f'{spec} is not a dict of job type -> function')
    return handlers


def load_schedule(spec, directory=None, handlers=None):
    """The checked entries of the schedule at spec (check_schedule's errors: exit 2)."""
    return check_schedule(load_attr(spec, directory, 'schedule'), handlers)


def where(queue):
    """The queue's location for a log line: an absolute path, or the URL without a password."""
    if queue.backend.kind == 'file':
        return os.path.abspath(queue.path)
    return re.sub(r'//[^@/]*@', '//***@', str(queue.path))


def missing_queue(queue):
    """The absolute path of a file queue that does not exist (yet), else None."""
    if queue.backend.kind == 'file' and not os.path.exists(queue.path):
        return os.path.abspath(queue.path)
    return None


def note_if_missing(queue):
    missing = missing_queue(queue)
    if missing:
        print(f'{PROG}: no queue at {missing} (nothing was enqueued there yet)', file=sys.stderr)


# -- output ------------------------------------------------------------------------
def print_json(value):
    print(json.dumps(value, ensure_ascii=False, indent=2))


def print_table(rows, headers):
    """Aligned columns, the header first."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows + [headers]) for i in range(len(headers))]
    for row in [headers] + rows:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def when(seconds, now=None):
    """'2026-11-27 23:50:01 (in 5m)' in local time, or '-'."""
    if not seconds:
        return '-'
    now = time.time() if now is None else now
    delta = seconds - now
    try:
        stamp = datetime.fromtimestamp(seconds).strftime('%Y-%m-%d %H:%M:%S')
    except (OverflowError, OSError, ValueError):   # a hand edit beyond the calendar
        return str(seconds)
    return f'{stamp} ({"in " if delta > 0 else ""}{ago(abs(delta))}{"" if delta > 0 else " ago"})'


def ago(seconds):
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return f'{seconds / size:.0f}{unit}'
    return f'{seconds:.0f}s'


def short(value, width=40):
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= width else text[:width - 1] + '…'


# -- commands ----------------------------------------------------------------------
def cmd_work(queue, args):
    check_limit('max_seconds', args.max_seconds)   # before the loop does arithmetic with it
    check_limit('max_jobs', args.max_jobs)           # ... and before the first log line
    spec, directory = resolve_handlers(args.handlers)
    handlers = load_handlers(spec, directory)
    check_handlers(handlers, args.max_attempts)
    schedule_spec, schedule_directory = resolve_schedule(args.schedule)
    schedule = (load_schedule(schedule_spec, schedule_directory, handlers)
                if schedule_spec else None)
    log.info('working %s%s with %s (%s)%s', where(queue),
             ' (no such file yet)' if missing_queue(queue) else '', spec,
             ', '.join(sorted(handlers)) or 'no job types',
             f' and the schedule {schedule_spec} ({len(schedule)} entries)' if schedule else '')
    timeout = None if args.timeout is None else parse_duration(args.timeout)
    limits = {'max_jobs': args.max_jobs, 'max_seconds': args.max_seconds}
    stop = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    started, totals = time.monotonic(), {}
    progress = _Progress(queue, handlers, args.log_handler) if sys.stderr.isatty() else None
    try:
        while not stop:
            if args.max_seconds is not None:
                limits['max_seconds'] = max(0.0, args.max_seconds - (time.monotonic() - started))
            if args.loop and queue.backend.long_running_worker:
                # On RQ, --loop is RQ's own long-running worker (it blocks on Redis).
                totals = queue.run_worker(handlers, args.max_attempts, timeout=timeout,
                                          schedule=schedule, **limits)
                break
            summary = queue.process_jobs(handlers, args.max_attempts, timeout=timeout,
                                         schedule=schedule, **limits)
            for key, count in summary.items():
                totals[key] = totals.get(key, 0) + count
            if args.max_jobs is not None:
                limits['max_jobs'] = max(0, args.max_jobs - totals.get('completed', 0)
                                         - totals.get('retried', 0) - totals.get('failed', 0))
            if (not args.loop or stop or limits['max_jobs'] == 0
                    or (args.max_seconds is not None and limits['max_seconds'] <= 0)):
                break
            time.sleep(args.sleep)
    except KeyboardInterrupt:
        log.warning('interrupted: unstarted jobs were given back')
    finally:
        signal.signal(signal.SIGTERM, previous)
        if progress:
            progress.close()
    if args.json:
        print_json(totals)
    return EXIT_OK


class _Progress(logging.Handler):
    """On a terminal with a large backlog: one updating line (done/due, rate)."""

    def __init__(self, queue, handlers, log_handler):
        super().__init__()
        counts = queue.stats()['by_type']
        self.due = sum(counts.get(t, {}).get('pending', 0) for t in handlers)
        self.done, self.started, self.shown = 0, time.monotonic(), 0.0
        if self.due >= PROGRESS_MIN_JOBS:
            log_handler.addFilter(lambda record: record.levelno > logging.INFO)
            log.addHandler(self)

    def emit(self, record):
        if record.levelno != logging.INFO:
            return
        self.done += 1
        now = time.monotonic()
        if now - self.shown >= PROGRESS_INTERVAL_SECONDS or self.done == self.due:
            self.shown = now
            rate = self.done / max(now - self.started, 1e-9)
            sys.stderr.write(f'\r{self.done:,}/{self.due:,} jobs  {rate:,.0f}/s ')
            sys.stderr.flush()

    def close(self):
        if self in log.handlers:
            log.removeHandler(self)
            sys.stderr.write('\n')
        super().close()


def cmd_enqueue(queue, args):
    run_at = None
    if args.at is not None:
        run_at = parse_time(args.at)
    elif args.delay is not None:
        run_at = time.time() + parse_duration(args.delay)
    options = {'run_at': run_at, 'priority': args.priority, 'unique_key': args.unique_key,
               'max_attempts': args.max_attempts,
               'timeout': None if args.timeout is None else parse_duration(args.timeout)}
    if args.jsonl is not None:
        return _enqueue_lines(queue, args, options)
    text = sys.stdin.read() if args.payload == '-' else args.payload
    try:
        payload = json.loads(text) if text is not None else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f'payload is not valid JSON: {exc}') from None
    job_id = queue.enqueue(args.type, payload, **options)
    if args.json:
        print_json({'id': job_id})
    else:
        print(job_id)
    return EXIT_OK


def _enqueue_lines(queue, args, options):
    """enqueue TYPE --jsonl FILE: one job per line of JSON, all or none."""
    if args.payload is not None:
        raise UsageError('give a JSON payload or --jsonl, not both')
    if args.unique_key is not None:
        raise UsageError('--unique-key names one job; it cannot go with --jsonl')
    payloads = []
    with (nullcontext(sys.stdin) if args.jsonl == '-'
          else open(args.jsonl, encoding='utf-8')) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    payloads.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UsageError(f'line {number} is not valid JSON: {exc}; nothing was '
                                     f'enqueued') from None
    ids = queue.enqueue_many({'type': args.type, 'payload': payload, **options}
                             for payload in payloads)
    if args.json:
        print_json({'ids': ids})
    elif ids:
        print('\n'.join(ids))
    return EXIT_OK


def cmd_stats(queue, args):
    note_if_missing(queue)
    stats = queue.stats()
    if args.json:
        print_json(stats)
        return EXIT_OK
    print_table([[status, stats['by_status'][status]] for status in STATUS_WORDS]
                + [['total', stats['total']]], ['status', 'jobs'])
    if stats['by_type']:
        print()
        print_table([[job_type] + [counts[s] for s in STATUS_WORDS]
                     for job_type, counts in sorted(stats['by_type'].items())],
                    ['type'] + list(STATUS_WORDS))
    print()
    oldest = stats['oldest_pending_seconds']
    print(f"oldest pending: {'-' if oldest is None else ago(oldest)}")
    print(f"next due:       {when(stats['next_due_at'])}")
    print(f"workers active: {len(stats['workers'])}"
          + (f" ({', '.join(stats['workers'])})" if stats['workers'] else ''))
    print(f"paused:         {', '.join(stats['paused']) or '-'}")
    if stats['migrated_to']:
        pending = stats['by_status']['pending']
        print(f"migrated to:    {stats['migrated_to']}"
              + (f" ({pending} pending job(s) enqueued here since: run migrate again)"
                 if pending else ''))
    return EXIT_OK


def cmd_list(queue, args):
    if args.limit < 0:
        raise UsageError(f'--limit must be >= 0 (0: all), got {args.limit}')
    note_if_missing(queue)
    jobs = queue.list_jobs(status=args.status, job_type=args.type)
    shown = jobs[:args.limit] if args.limit else jobs
    if args.json:
        print_json(shown)
    else:
        print_table([[j['id'], j['type'], j['status'], j['priority'], j['attempts'],
                      when(j['run_at']), short(j['error'] or '', 30), short(j['payload'])]
                     for j in shown],
                    ['id', 'type', 'status', 'priority', 'attempts', 'run_at', 'error', 'payload'])
    if len(shown) < len(jobs):
        sys.stdout.flush()   # the table first, then the note, when both go to a terminal
        print(f'showing {len(shown)} of {len(jobs)}; --limit 0 for all', file=sys.stderr)
    return EXIT_OK


def cmd_show(queue, args):
    job = queue.find_job(args.id)
    if job is None:
        raise NotFound(f'no job {args.id} in {queue.path}')
    view = job.to_dict(full=True)
    if args.json:
        print_json(view)
        return EXIT_OK
    for key in ('id', 'type', 'status', 'attempts', 'max_attempts', 'priority', 'timeout',
                'unique_key', 'error', 'worker'):
        print(f'{key + ":":13} {view[key] if view[key] is not None else "-"}')
    for key in ('created_at', 'run_at', 'claimed_at', 'finished_at'):
        print(f'{key + ":":13} {when(view[key])}')
    print(f'{"payload:":13} {json.dumps(view["payload"], ensure_ascii=False, indent=2)}')
    print(f'{"result:":13} {json.dumps(view["result"], ensure_ascii=False, indent=2)}')
    return EXIT_OK


def cmd_retry(queue, args):
    if (args.id is None) == (not args.failed):
        raise UsageError('give either a job ID or --failed')
    try:
        ids = queue.retry(args.id, failed=args.failed, job_type=args.type)
    except KeyError:
        raise NotFound(f'no job {args.id} in {queue.path}') from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json({'retried': ids})
    else:
        print('\n'.join(ids) if ids else 'no failed jobs to retry')
    return EXIT_OK


def cmd_cancel(queue, args):
    if args.all == (args.id is not None):
        raise UsageError('give either a job ID or --all')
    if args.type is not None and not args.all:
        raise UsageError('--type goes with --all')
    if args.all:
        ids = queue.cancel_jobs(args.type)
        if args.json:
            print_json({'cancelled': ids})
        else:
            print(f'cancelled {len(ids)} pending job(s)' + (f' of type {args.type}' if args.type else ''))
        return EXIT_OK
    if queue.cancel_job(args.id):
        print_json({'cancelled': args.id}) if args.json else print(f'cancelled {args.id}')
        return EXIT_OK
    job = queue.find_job(args.id)
    if job is None:
        raise NotFound(f'no job {args.id} in {queue.path}')
    raise NotFound(f'job {args.id} is {job.status.value}: only pending jobs can be cancelled')


def cmd_purge(queue, args):
    if args.older_than is None and args.keep is None:
        raise UsageError('give --older-than, --keep, or both')
    try:
        older_than = None if args.older_than is None else parse_duration(args.older_than)
        ids = queue.purge(args.status, older_than, dry_run=args.dry_run, keep=args.keep)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    verb = 'would purge' if args.dry_run else 'purged'
    if args.json:
        print_json({'dry_run': args.dry_run, 'ids': ids})
    else:
        limits = ([f'older than {args.older_than}'] if args.older_than else []) + (
            [f'beyond the newest {args.keep}'] if args.keep is not None else [])
        print(f'{verb} {len(ids)} job(s): {", ".join(args.status)} {" or ".join(limits)}')
    return EXIT_OK


def cmd_migrate(queue, args):
    if queue.backend.kind != 'file':
        raise UsageError('migrate moves a file queue into Redis: give --queue a .tsv file')
    if not is_redis_url(args.to):
        raise UsageError(f'--to must be a redis:// URL, got {args.to!r}')
    from .rq_backend import migrate, migrate_schedule, raise_if_unavailable
    raise_if_unavailable(args.to)
    live = [w for w in queue.stats()['workers']]
    if live and not args.dry_run:
        raise UsageError(f'workers are still running on {queue.path} ({", ".join(live)}): '
                         f'stop them (and their cron lines) first')
    target = Queue(args.to)
    moved = migrate(queue, target, dry_run=args.dry_run)
    schedule_state = migrate_schedule(queue, target, dry_run=args.dry_run)
    if args.json:
        print_json({'dry_run': args.dry_run, 'jobs': [{'id': j.id, 'type': j.type,
                                                        'status': j.status.value} for j in moved],
                    'schedule': [record.name for record in schedule_state]})
        return EXIT_OK
    print_table([[j.id, j.type, j.status.value, j.attempts] for j in moved],
                ['id', 'type', 'status', 'attempts'])
    verb = 'would move' if args.dry_run else 'moved'
    print(f'{verb} {len(moved)} job(s) to {args.to}')
    if not args.dry_run:
        _print_next_steps(args.to)
    if schedule_state:
        print(f'{"would copy" if args.dry_run else "copied"} the state of '
              f'{len(schedule_state)} recurring job(s): '
              f'{", ".join(record.name for record in schedule_state)}')
    return EXIT_OK


def _print_next_steps(url):
    """What still points at the file after a migrate, and the commands that move it."""
    try:
        spec = resolve_handlers(None)[0]
    except UsageError:
        spec = 'MODULE:ATTR'
    print(f'next: 1. set {ENV_VAR}={url} for every app process and restart them (until '
          f'then they enqueue into the file: `{PROG} check` reports such jobs, and migrate '
          f'run again moves them);\n'
          f'      2. replace the worker\'s cron line (the one `{PROG} crontab` printed):\n'
          f'         crontab -l | {ENV_VAR}={shlex.quote(url)} {PROG} crontab {spec} --merge '
          f'| crontab -')


def cmd_edit(queue, args):
    """Like crontab -e: edit a copy, check it, merge it with what changed meanwhile."""
    if queue.backend.kind != 'file':
        raise UsageError('edit works on a file queue: give --queue a .tsv file')
    original = queue.read_for_edit()
    editor = shlex.split(os.environ.get('VISUAL') or os.environ.get('EDITOR') or 'vi')
    fd, copy = tempfile.mkstemp(prefix='dbbasic-queue-edit-', suffix='.tsv')
    with os.fdopen(fd, 'w', encoding='utf-8', errors='surrogateescape') as f:
        f.write(original)
    while True:
        try:
            code = subprocess.call(editor + [copy])
        except OSError as exc:
            raise UsageError(f'cannot run the editor {editor[0]!r} ($VISUAL, $EDITOR): '
                             f'{exc.strerror}') from None
        if code != 0:
            return _abandon_edit(copy, f'the editor exited with {code}')
        with open(copy, encoding='utf-8', errors='surrogateescape') as f:
            edited = f.read()
        problems = queue.check_edit(edited)
        if not problems:
            break
        for problem in problems:
            print(f'{PROG}: {problem}', file=sys.stderr)
        if not _ask('(e)dit again or (a)bort? ', 'ea').startswith('e'):
            return _abandon_edit(copy, 'aborted')
    if edited == original:
        os.unlink(copy)
        print('no changes')
        return EXIT_OK
    try:
        changed = queue.save_edit(original, edited)
    except QueueError:
        print(f'{PROG}: your version is kept in {copy}', file=sys.stderr)
        raise
    os.unlink(copy)
    print(f'saved {queue.path}: {changed} line(s) changed')
    return EXIT_OK


def _ask(prompt, answers):
    """One answer from the person at the terminal; '' when there is none (not a tty)."""
    if not sys.stdin.isatty():
        return ''
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer if answer[:1] in answers else ''


def _abandon_edit(copy, why):
    os.unlink(copy)
    print(f'{PROG}: {why}: nothing was saved', file=sys.stderr)
    return EXIT_PROBLEM


def cmd_pause(queue, args):
    queue.pause(args.type)
    print_json({'paused': queue.paused_types()}) if args.json else print(
        f'paused {args.type}: workers leave its jobs pending until `{PROG} resume {args.type}`')
    return EXIT_OK


def cmd_resume(queue, args):
    queue.resume(args.type)
    print_json({'paused': queue.paused_types()}) if args.json else print(f'resumed {args.type}')
    return EXIT_OK


def cmd_crontab(queue, args):
    """The crontab line for this installation, checked now rather than at 3 a.m.: the
    queue named as the app names it, the queue's mode carried, the line marked so that
    --merge replaces it in a crontab instead of adding it again."""
    spec, directory = resolve_handlers(args.handlers)
    handlers = load_handlers(spec, directory)
    if args.schedule:
        load_schedule(args.schedule, directory, handlers)
    schedule, interval_seconds = cron_schedule(args.every)
    on_file = queue.backend.kind == 'file'
    log_path = os.path.abspath(args.log or (Path(queue.path).with_suffix('.log') if on_file
                                            else os.path.join(directory, 'queue.log')))
    settings, queue_option = _queue_named_as_the_app_does(queue, args)
    mode = os.environ.get(MODE_ENV_VAR) or _shared_mode(queue)
    umask = ''
    if mode:
        settings.append(f'{MODE_ENV_VAR}={mode}')
        umask = f'umask {0o666 & ~int(mode, 8):03o} && '   # the log the shell creates, too
    command = this_program() + queue_option + [
        'work', spec, '--max-seconds', f'{interval_seconds - CRON_MARGIN_SECONDS:g}']
    if args.schedule:
        command += ['--schedule', args.schedule]
    _prepare_log(log_path, queue)
    line = (f'{schedule} cd {shlex.quote(directory)} && {umask}'
            f'{"".join(shlex.quote(s) + " " for s in settings)}{shlex.join(command)} '
            f'>> {shlex.quote(log_path)} 2>&1 {CRONTAB_MARK} {directory} {spec}')
    line = line.replace('%', '\\%')   # cron reads a bare % as a newline
    if not args.merge:
        print(line)
        return EXIT_OK
    print(merged_crontab(sys.stdin.read(), line, line[line.index(CRONTAB_MARK):]), end='')
    return EXIT_OK


def _queue_named_as_the_app_does(queue, args):
    """(environment settings, --queue option) for the crontab line: --queue where this
    command was given one, $DBBASIC_QUEUE where it came from there, else nothing (the
    default path, under the directory the line changes to): change the app's setting,
    run crontab --merge again, and the worker follows."""
    if args.queue:
        return [], ['--queue', str(queue.path) if is_redis_url(queue.path)
                    else os.path.abspath(queue.path)]
    if os.environ.get(ENV_VAR):
        return [f'{ENV_VAR}={os.environ[ENV_VAR]}'], []
    return [], []


def _shared_mode(queue):
    """The mode of a file queue's lock where it shares the queue with a group ('660'),
    else None."""
    return queue.backend.shared_mode() if queue.backend.kind == 'file' else None


def _prepare_log(log_path, queue):
    """Cron's shell opens the log before the worker starts, and says nothing when it
    cannot: make the queue's directory where the log goes there (as the queue would),
    and say now what would fail then."""
    directory = os.path.dirname(log_path)
    if queue.backend.kind == 'file' and Path(directory) == Path(queue.path).parent.absolute():
        make_directory(directory, queue.backend.file_mode)
    target = log_path if os.path.exists(log_path) else directory
    if not os.path.isdir(directory) or not os.access(target, os.W_OK):
        print(f'{PROG}: warning: you cannot write {target}: under cron the redirect to '
              f'{log_path} would fail before the worker starts, with no word of it; make '
              f'it writable (chmod g+w, see `{PROG} check`) or give --log FILE',
              file=sys.stderr)


def merged_crontab(crontab, line, mark):
    """crontab's text with line in place of the one ending in mark (the first; later
    copies dropped), or added at its end: installing twice leaves one line."""
    lines, placed = [], False
    for old in crontab.splitlines():
        if old.endswith(mark):
            if not placed:
                lines.append(line)
                placed = True
            continue
        lines.append(old)
    if not placed:
        lines.append(line)
    return ''.join(text + '\n' for text in lines)


def cron_schedule(every):
    """'1m' -> ('* * * * *', 60); whole minutes dividing an hour, hours dividing a day, 1d."""
    seconds = parse_duration(every)
    minutes = seconds / 60
    if minutes == 1:
        return '* * * * *', seconds
    if minutes.is_integer() and minutes < 60 and 60 % minutes == 0:
        return f'*/{minutes:.0f} * * * *', seconds
    hours = minutes / 60
    if hours.is_integer() and hours < 24 and 24 % hours == 0:
        return '0 * * * *' if hours == 1 else f'0 */{hours:.0f} * * *', seconds
    if hours == 24:
        return '0 0 * * *', seconds
    raise UsageError(f'--every {every}: use whole minutes that divide an hour (1m, 5m, 15m), '
                     f'hours that divide a day (1h, 6h), or 1d')


def this_program():
    """The absolute command that runs this installation's dbbasic-queue: the console
    script beside this Python (a venv's bin/), else this Python with -m."""
    script = Path(sys.executable).parent / PROG
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, '-m', 'dbbasic_queue']


def cmd_schedule(queue, args):
    """Each entry of a schedule: its last enqueued slot and its next runs."""
    spec, directory = resolve_schedule(args.schedule)
    if not spec:
        raise UsageError(f'no schedule given: run `{PROG} schedule MODULE:ATTR`, or set '
                         f'{SCHEDULE_ENV_VAR}, or add to pyproject.toml: [tool.{CONFIG_TABLE}] '
                         f'schedule = "app.jobs:SCHEDULE"')
    entries = load_schedule(spec, directory)
    records, now = queue.schedule_records(), time.time()
    rows = []
    for entry in entries:
        record = records.get(entry.name)
        known = record is not None and record.schedule == entry.schedule
        rows.append({'name': entry.name, 'schedule': entry.schedule, 'type': entry.job_type,
                     'catch_up': entry.catch_up,
                     'last_slot': record.last_slot if known and record.job_id else None,
                     'last_job_id': record.job_id if known and record.job_id else None,
                     'next_runs': entry.next_runs(max(now, record.last_slot) if known else now,
                                                  NEXT_RUNS)})
    gone = [record.name for record in schedules_removed(entries, records)]
    if args.json:
        print_json({'entries': rows, 'removed': gone})
        return EXIT_OK
    print_table([[row['name'], row['schedule'], row['type'],
                  slot_text(row['last_slot'], entry) if row['last_slot'] else '-',
                  ', '.join(slot_text(run, entry) for run in row['next_runs'])]
                 for row, entry in zip(rows, entries)],
                ['name', 'schedule', 'type', 'last enqueued', f'next {NEXT_RUNS} runs'])
    for name in gone:
        print(f'{name}: stored state with no entry in this schedule (ignored)')
    return EXIT_OK


def slot_text(slot, entry):
    """A slot in the entry's zone (local time for every()), to the minute."""
    return datetime.fromtimestamp(slot, entry.zone()).strftime('%Y-%m-%d %H:%M %Z').rstrip()


def cmd_web(queue, args):
    """The dashboard, until Ctrl-C or SIGTERM."""
    from .web import TOKEN_ENV_VAR, make_dashboard_server
    token = args.token or os.environ.get(TOKEN_ENV_VAR) or None
    server = make_dashboard_server(queue, args.host, args.port, token=token,
                                   read_only=args.read_only)
    host, port = server.server_address[:2]
    log.info('dashboard of %s on http://%s:%d/%s%s', where(queue), host, port,
             '?token=...' if token else '', ' (read-only)' if args.read_only else '')
    # Served from a thread, stopped by the main one: a KeyboardInterrupt raised wherever
    # the signal lands (inside Thread.start, say) could leave the server half-stopped.
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGTERM, signal.SIGINT)}
    serving = threading.Thread(target=server.serve_forever, args=(WEB_POLL_SECONDS,),
                               name='dbbasic-queue web', daemon=True)
    serving.start()
    try:
        while serving.is_alive() and not stop.wait(WEB_POLL_SECONDS):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.shutdown()
        server.server_close()
    return EXIT_OK


def cmd_check(queue, args):
    missing = missing_queue(queue)
    if missing:
        raise NotFound(f'no queue at {missing}')
    problems = queue.check()
    if args.json:
        print_json({'problems': problems})
    else:
        print('\n'.join(problems) if problems else f'{queue.path}: no problems')
    return EXIT_PROBLEM if problems else EXIT_OK


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, when it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ''
        default = action.default
        if (action.option_strings and '%(default)' not in text and default is not None
                and default is not False and default is not argparse.SUPPRESS):
            text += ' (default: %(default)s)'
        return text


def _add_global_options(parser, suppress):
    """--queue, --json and the log level. The copies after the command default to
    SUPPRESS, so they never overwrite what was given before it."""
    def default(value):
        return argparse.SUPPRESS if suppress else value
    parser.add_argument('--queue', metavar='PATH', default=default(None),
                        help=f'the queue: a .tsv path or a redis:// URL '
                             f'(default: ${ENV_VAR}, else {DEFAULT_PATH})')
    parser.add_argument('--json', action='store_true', default=default(False),
                        help='print JSON instead of columns')
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument('-v', '--verbose', dest='log_level', action='store_const', const='DEBUG',
                       default=default(None), help='log debug lines too')
    noise.add_argument('-q', '--quiet', dest='log_level', action='store_const', const='WARNING',
                       default=default(None), help='log warnings and errors only')
    noise.add_argument('--log-level', dest='log_level', type=str.upper, choices=LOG_LEVELS,
                       default=default(None), help='the lowest level logged (default: INFO)')


def build_parser():
    parser = _Parser(prog=PROG, description='A job queue in one TSV file.',
                     formatter_class=_HelpFormatter)
    parser.add_argument('--version', action='version', version=f'{PROG} {__version__}')
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    commands.required = True

    def command(name, help_text, run, **kwargs):
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=_HelpFormatter, **kwargs)
        _add_global_options(sub, suppress=True)
        sub.set_defaults(run=run)
        return sub

    work = command('work', 'run due jobs (drain and exit: the cron way)', cmd_work,
                   aliases=['worker'])
    work.add_argument('handlers', metavar='MODULE:ATTR', nargs='?',
                      help=f'a dict of type -> function (default: ${HANDLERS_ENV_VAR}, else '
                           f'[tool.{CONFIG_TABLE}] handlers in pyproject.toml)')
    work.add_argument('--schedule', metavar='MODULE:ATTR',
                      help=f'a list of cron()/every() entries to enqueue when due (default: '
                           f'${SCHEDULE_ENV_VAR}, else [tool.{CONFIG_TABLE}] schedule)')
    work.add_argument('--loop', action='store_true', help='keep polling instead of exiting')
    work.add_argument('--burst', action='store_true',
                      help="drain and exit (rq's flag; already what work does without --loop)")
    work.add_argument('--sleep', type=float, default=1.0, metavar='S',
                      help='with --loop: seconds between polls')
    work.add_argument('--max-jobs', type=int, metavar='N', help='stop after N jobs')
    work.add_argument('--max-seconds', type=float, metavar='S',
                      help='stop starting jobs after S seconds')
    work.add_argument('--max-attempts', type=int, default=MAX_ATTEMPTS, metavar='N',
                      help='for jobs enqueued without their own')
    work.add_argument('--timeout', metavar='DURATION',
                      help='for jobs enqueued without their own: interrupt handlers after this')

    enqueue = command('enqueue', 'add a job, print its id', cmd_enqueue)
    enqueue.add_argument('type', help='the job type (a key of the handlers dict)')
    enqueue.add_argument('payload', nargs='?', metavar='JSON',
                         help="the payload, a JSON value; '-' reads stdin (default: {})")
    when_group = enqueue.add_mutually_exclusive_group()
    when_group.add_argument('--at', metavar='TIME', help='run at: Unix seconds or ISO 8601')
    when_group.add_argument('--in', dest='delay', metavar='DURATION',
                            help='run after: e.g. 90s, 15m, 2h, 7d')
    enqueue.add_argument('--priority', type=int, default=0, metavar='N', help='higher runs first')
    enqueue.add_argument('--unique-key', metavar='KEY',
                         help='while a job with this key is pending or running, print its id')
    enqueue.add_argument('--timeout', metavar='DURATION', help='interrupt the handler after this')
    enqueue.add_argument('--max-attempts', type=int, metavar='N', help="this job's attempt limit")
    enqueue.add_argument('--jsonl', metavar='FILE',
                         help="one job per line of FILE, each a JSON payload ('-': stdin); "
                              'all are added or none')

    command('stats', 'counts per status and type, workers, paused types', cmd_stats)

    listing = command('list', 'list jobs: the hot file\'s, then the archive\'s, in file order', cmd_list)
    listing.add_argument('--status', choices=STATUS_WORDS, help='only jobs with this status')
    listing.add_argument('--type', help='only jobs of this type')
    listing.add_argument('--limit', type=int, default=LIST_LIMIT, metavar='N',
                         help='show at most N jobs; 0 for all')

    command('show', 'one job in full', cmd_show).add_argument('id', help='the job id')

    retry = command('retry', 'make failed or cancelled jobs pending again', cmd_retry)
    retry.add_argument('id', nargs='?', help='one job id')
    retry.add_argument('--failed', action='store_true', help='every failed job')
    retry.add_argument('--type', help='with --failed: only this type')

    cancel = command('cancel', 'cancel a pending job, or every pending job', cmd_cancel)
    cancel.add_argument('id', nargs='?', help='one job id')
    cancel.add_argument('--all', action='store_true', help="every pending job (rq's empty)")
    cancel.add_argument('--type', help='with --all: only this type')

    for name, run, verb in (('pause', cmd_pause, 'leave jobs of TYPE pending until resumed'),
                            ('resume', cmd_resume, 'run jobs of a paused TYPE again')):
        command(name, verb, run).add_argument('type', metavar='TYPE', help='a job type')

    purge = command('purge', 'delete old finished jobs from the archive', cmd_purge)
    purge.add_argument('--status', nargs='+', required=True,
                       choices=FINAL_WORDS,
                       help='the statuses to delete (failed jobs stay unless named)')
    purge.add_argument('--older-than', metavar='DURATION',
                       help='finished longer ago than this, e.g. 7d')
    purge.add_argument('--keep', type=int, metavar='N',
                       help='all but the newest N of these statuses (with --older-than: either)')
    purge.add_argument('--dry-run', action='store_true', help='only list what would go')

    command('check', 'find problems; exit 1 if any (or if there is no queue)', cmd_check)
    web = command('web', 'serve the dashboard: the queue in a browser', cmd_web)
    web.add_argument('--host', default='127.0.0.1',
                     help='the address to listen on; any but loopback needs --token')
    web.add_argument('--port', type=int, default=8080, help='the port (0: any free one)')
    web.add_argument('--token', metavar='TOKEN',
                     help='every request must carry it (default: $DBBASIC_QUEUE_WEB_TOKEN)')
    web.add_argument('--read-only', action='store_true', help='no actions: look, do not touch')
    schedule = command('schedule', 'list the recurring jobs of a schedule: the last slot '
                       'each enqueued and its next runs', cmd_schedule)
    schedule.add_argument('schedule', metavar='MODULE:ATTR', nargs='?',
                          help=f'a list of cron()/every() entries (default: ${SCHEDULE_ENV_VAR}, '
                               f'else [tool.{CONFIG_TABLE}] schedule in pyproject.toml)')
    command('edit', 'edit the queue file in $VISUAL/$EDITOR, safely (like crontab -e)', cmd_edit)

    crontab = command('crontab', 'print the crontab line that runs the worker of this '
                      'installation, from this directory', cmd_crontab)
    crontab.add_argument('handlers', metavar='MODULE:ATTR', nargs='?',
                         help='as for work (default: the configured handlers)')
    crontab.add_argument('--schedule', metavar='MODULE:ATTR',
                         help='the schedule the worker enqueues, as for work')
    crontab.add_argument('--every', default='1m', metavar='DURATION',
                         help='how often cron starts it: 1m, 5m, 15m, 1h, 1d ...')
    crontab.add_argument('--log', metavar='FILE',
                         help="where its output goes (default: the queue's path with .log)")
    crontab.add_argument('--merge', action='store_true',
                         help='read a crontab on stdin and print it with this line in place '
                              'of the one printed before (or added): crontab -l | '
                              f'{PROG} crontab --merge | crontab -')

    migrate = command('migrate', 'move pending and failed jobs into Redis (RQ)', cmd_migrate)
    migrate.add_argument('--to', required=True, metavar='redis://HOST:PORT/DB',
                         help='the Redis to move them to')
    migrate.add_argument('--dry-run', action='store_true', help='only list what would move')
    return parser


def configure_logging(level='INFO'):
    """stderr, one line per record, fit for `>> /var/log/queue.log 2>&1`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    return handler


def main(argv=None):
    """Run one command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        args.log_handler = configure_logging(args.log_level or 'INFO')
        location = args.queue or os.environ.get(ENV_VAR) or DEFAULT_PATH
        try:
            queue = Queue(location)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return args.run(queue, args)
    except BrokenPipeError:
        # `list | head`: the reader has gone, as with any Unix tool; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except NotFound as exc:
        return _fail(str(exc), EXIT_PROBLEM)
    except (QueueError, OSError) as exc:
        return _fail(str(exc), EXIT_USAGE if isinstance(exc, ValueError) else EXIT_PROBLEM)
    except ValueError as exc:  # an option the library refused, e.g. --max-jobs -1
        return _fail(str(exc), EXIT_USAGE)
    except Exception as exc:
        log.debug('unexpected error', exc_info=True)
        return _fail(f'unexpected {error_text(exc)}', EXIT_PROBLEM)


def _fail(message, code):
    print(f'{PROG}: error: {message}', file=sys.stderr)
    return code


def _dbbasic_command(name, help_text):
    def command(args):
        code = main([name] + list(args))
        if code:
            raise SystemExit(code)
    command.__name__ = f'queue_{name}'
    command.__doc__ = help_text
    return command


# dbbasic-cli discovers this: `dbbasic queue:worker`, `dbbasic queue:stats`, ...
COMMANDS = {
    'queue:worker': _dbbasic_command('work', 'Run due jobs: queue:worker [MODULE:ATTR] [--loop]'),
    **{f'queue:{name}': _dbbasic_command(name, help_text) for name, help_text in [
        ('work', 'Run due jobs: queue:work [MODULE:ATTR] [--loop]'),
        ('stats', 'Show queue counts per status and type'),
        ('enqueue', 'Add a job: queue:enqueue TYPE [JSON]'),
        ('list', 'List jobs: queue:list [--status S] [--type T]'),
        ('show', 'Show one job: queue:show ID'),
        ('retry', 'Retry a job or every failed job: queue:retry ID | --failed'),
        ('cancel', 'Cancel a pending job: queue:cancel ID | --all [--type T]'),
        ('pause', 'Leave jobs of a type pending: queue:pause TYPE'),
        ('resume', 'Run jobs of a paused type again: queue:resume TYPE'),
        ('crontab', 'Print the crontab line for this installation: queue:crontab [MODULE:ATTR]'),
        ('purge', 'Delete old finished jobs: queue:purge --status S --older-than 7d | --keep N'),
        ('check', 'Find problems in the queue files'),
        ('web', 'Serve the dashboard: queue:web [--host H] [--port N] [--token T] [--read-only]'),
        ('schedule', 'List recurring jobs and their next runs: queue:schedule [MODULE:ATTR]'),
        ('edit', 'Edit the queue file in $EDITOR, checked and merged: queue:edit'),
        ('migrate', 'Move pending and failed jobs into Redis: queue:migrate --to redis://...'),
    ]},
}

if __name__ == '__main__':
    sys.exit(main())
