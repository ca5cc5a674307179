"""The command line: `dbbasic-queue`, `python -m dbbasic_queue`, and dbbasic-cli's
`dbbasic queue:<command>` (see COMMANDS).

Exit codes: 0 ok, 1 not found or problems found, 2 bad usage or input. Errors are one
line on stderr, never a traceback. Logs go to stderr, one line per job.
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
import time
from datetime import datetime

from .errors import QueueError
from .queue import DEFAULT_PATH, ENV_VAR, Queue, is_redis_url
from .validate import check_limit

log = logging.getLogger('dbbasic_queue')

PROG = 'dbbasic-queue'
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
PROGRESS_MIN_JOBS = 1000         # show a progress line instead of per-job lines above this
PROGRESS_INTERVAL_SECONDS = 0.2
DURATION_UNITS_SECONDS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}
DURATION_PATTERN = re.compile(r'(\d+(?:\.\d+)?)([smhdw]?)')
STATUSES = ('pending', 'processing', 'completed', 'failed', 'cancelled', 'migrated')


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit 2."""


class NotFound(Exception):
    """A job id that is not in the queue: one line on stderr, exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f'{message} (see {self.prog} --help)')


# -- parsing helpers ---------------------------------------------------------------
def parse_duration(text):
    """'90', '90s', '15m', '2h', '7d', '1w', '1h30m' -> seconds."""
    text = text.strip().lower()
    parts = DURATION_PATTERN.findall(text)
    if not text or ''.join(n + u for n, u in parts) != text:
        raise UsageError(f'bad duration {text!r}: use e.g. 90s, 15m, 2h, 7d or 1h30m')
    return sum(float(n) * DURATION_UNITS_SECONDS[u or 's'] for n, u in parts)


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


def load_handlers(spec):
    """'package.module:ATTR' -> the handlers dict (ATTR may be a callable returning one)."""
    module_name, _, attr = spec.partition(':')
    if not module_name or not attr:
        raise UsageError(f'handlers must be given as MODULE:ATTR, got {spec!r}')
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f'cannot import {module_name}: {type(exc).__name__}: {exc}') from None
    finally:
        sys.path.pop(0)
    try:
        handlers = getattr(module, attr)
    except AttributeError:
        raise UsageError(f'{module_name} has no attribute {attr!r}') from None
    if callable(handlers) and not hasattr(handlers, 'items'):
        handlers = handlers()
    if not hasattr(handlers, 'items') or not all(callable(h) for h in handlers.values()):
        raise UsageError(f'{spec} is not a dict of job type -> function')
    return handlers


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
    handlers = load_handlers(args.handlers)
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
                totals = queue.run_worker(handlers, args.max_attempts, timeout=timeout, **limits)
                break
            summary = queue.process_jobs(handlers, args.max_attempts, timeout=timeout, **limits)
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
    text = sys.stdin.read() if args.payload == '-' else args.payload
    try:
        payload = json.loads(text) if text is not None else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f'payload is not valid JSON: {exc}') from None
    run_at = None
    if args.at is not None:
        run_at = parse_time(args.at)
    elif args.delay is not None:
        run_at = time.time() + parse_duration(args.delay)
    job_id = queue.enqueue(args.type, payload, run_at=run_at, priority=args.priority,
                           unique_key=args.unique_key, max_attempts=args.max_attempts,
                           timeout=None if args.timeout is None else parse_duration(args.timeout))
    if args.json:
        print_json({'id': job_id})
    else:
        print(job_id)
    return EXIT_OK


def cmd_stats(queue, args):
    stats = queue.stats()
    if args.json:
        print_json(stats)
        return EXIT_OK
    print_table([[status, stats['by_status'][status]] for status in STATUSES]
                + [['total', stats['total']]], ['status', 'jobs'])
    if stats['by_type']:
        print()
        print_table([[job_type] + [counts[s] for s in STATUSES]
                     for job_type, counts in sorted(stats['by_type'].items())],
                    ['type'] + list(STATUSES))
    print()
    oldest = stats['oldest_pending_seconds']
    print(f"oldest pending: {'-' if oldest is None else ago(oldest)}")
    print(f"next due:       {when(stats['next_due_at'])}")
    print(f"workers active: {len(stats['workers'])}"
          + (f" ({', '.join(stats['workers'])})" if stats['workers'] else ''))
    return EXIT_OK


def cmd_list(queue, args):
    jobs = queue.list_jobs(status=args.status, job_type=args.type, limit=args.limit)
    if args.json:
        print_json(jobs)
        return EXIT_OK
    print_table([[j['id'], j['type'], j['status'], j['priority'], j['attempts'],
                  when(j['run_at']), short(j['error'] or '', 30), short(j['payload'])]
                 for j in jobs],
                ['id', 'type', 'status', 'priority', 'attempts', 'run_at', 'error', 'payload'])
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
    from .rq_backend import migrate, raise_if_unavailable
    raise_if_unavailable(args.to)
    live = [w for w in queue.stats()['workers']]
    if live and not args.dry_run:
        raise UsageError(f'workers are still running on {queue.path} ({", ".join(live)}): '
                         f'stop them (and their cron lines) first')
    moved = migrate(queue, Queue(args.to), dry_run=args.dry_run)
    if args.json:
        print_json({'dry_run': args.dry_run, 'jobs': [{'id': j.id, 'type': j.type,
                                                        'status': j.status.value} for j in moved]})
        return EXIT_OK
    print_table([[j.id, j.type, j.status.value, j.attempts] for j in moved],
                ['id', 'type', 'status', 'attempts'])
    verb = 'would move' if args.dry_run else 'moved'
    print(f'{verb} {len(moved)} job(s) to {args.to}')
    return EXIT_OK


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


def cmd_check(queue, args):
    problems = queue.check()
    if args.json:
        print_json({'problems': problems})
    else:
        print('\n'.join(problems) if problems else f'{queue.path}: no problems')
    return EXIT_PROBLEM if problems else EXIT_OK


def build_parser():
    parser = _Parser(prog=PROG, description='A job queue in one TSV file.')
    parser.add_argument('--queue', metavar='PATH',
                        help=f'the queue file (default: ${ENV_VAR}, else {DEFAULT_PATH})')
    parser.add_argument('--json', action='store_true', help='print JSON instead of columns')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    commands.required = True

    work = commands.add_parser('work', help='run due jobs (drain and exit: the cron way)')
    work.add_argument('handlers', metavar='MODULE:ATTR', help='a dict of type -> function')
    work.add_argument('--loop', action='store_true', help='keep polling instead of exiting')
    work.add_argument('--sleep', type=float, default=1.0, metavar='S', help='seconds between polls')
    work.add_argument('--max-jobs', type=int, metavar='N')
    work.add_argument('--max-seconds', type=float, metavar='S')
    work.add_argument('--max-attempts', type=int, default=3, metavar='N',
                      help='for jobs enqueued without their own (default 3)')
    work.add_argument('--timeout', metavar='DURATION',
                      help='for jobs enqueued without their own: interrupt handlers after this')
    work.set_defaults(run=cmd_work)

    enqueue = commands.add_parser('enqueue', help='add a job, print its id')
    enqueue.add_argument('type')
    enqueue.add_argument('payload', nargs='?', metavar='JSON', help="the payload; '-' reads stdin")
    when_group = enqueue.add_mutually_exclusive_group()
    when_group.add_argument('--at', metavar='TIME', help='Unix seconds or ISO 8601')
    when_group.add_argument('--in', dest='delay', metavar='DURATION', help='e.g. 90s, 15m, 2h, 7d')
    enqueue.add_argument('--priority', type=int, default=0, metavar='N', help='higher runs first')
    enqueue.add_argument('--unique-key', metavar='KEY',
                         help='while a job with this key is pending or running, print its id')
    enqueue.add_argument('--timeout', metavar='DURATION', help='interrupt the handler after this')
    enqueue.add_argument('--max-attempts', type=int, metavar='N', help="this job's attempt limit")
    enqueue.set_defaults(run=cmd_enqueue)

    commands.add_parser('stats', help='counts per status and type, workers').set_defaults(run=cmd_stats)

    listing = commands.add_parser('list', help='list jobs')
    listing.add_argument('--status', choices=STATUSES)
    listing.add_argument('--type')
    listing.add_argument('--limit', type=int, default=50, metavar='N')
    listing.set_defaults(run=cmd_list)

    show = commands.add_parser('show', help='one job in full')
    show.add_argument('id')
    show.set_defaults(run=cmd_show)

    retry = commands.add_parser('retry', help='make failed or cancelled jobs pending again')
    retry.add_argument('id', nargs='?')
    retry.add_argument('--failed', action='store_true', help='every failed job')
    retry.add_argument('--type', help='with --failed: only this type')
    retry.set_defaults(run=cmd_retry)

    cancel = commands.add_parser('cancel', help='cancel a pending job')
    cancel.add_argument('id')
    cancel.set_defaults(run=cmd_cancel)

    purge = commands.add_parser('purge', help='delete old finished jobs from the archive')
    purge.add_argument('--status', nargs='+', required=True,
                       choices=('completed', 'failed', 'cancelled', 'migrated'))
    purge.add_argument('--older-than', metavar='DURATION', help='finished longer ago than this, e.g. 7d')
    purge.add_argument('--keep', type=int, metavar='N',
                       help='all but the newest N of these statuses (with --older-than: either)')
    purge.add_argument('--dry-run', action='store_true')
    purge.set_defaults(run=cmd_purge)

    commands.add_parser('check', help='find problems; exit 1 if any').set_defaults(run=cmd_check)

    commands.add_parser('edit', help='edit the queue file in $VISUAL/$EDITOR, safely (like '
                        'crontab -e)').set_defaults(run=cmd_edit)

    migrate = commands.add_parser('migrate', help='move pending and failed jobs into Redis (RQ)')
    migrate.add_argument('--to', required=True, metavar='redis://HOST:PORT/DB')
    migrate.add_argument('--dry-run', action='store_true')
    migrate.set_defaults(run=cmd_migrate)
    return parser


def configure_logging():
    """stderr, one line per record, fit for `>> /var/log/queue.log 2>&1`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def main(argv=None):
    """Run one command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        args.log_handler = configure_logging()
        location = args.queue or os.environ.get(ENV_VAR) or DEFAULT_PATH
        try:
            queue = Queue(location)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return args.run(queue, args)
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
        return _fail(f'unexpected {type(exc).__name__}: {exc}', EXIT_PROBLEM)


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
    'queue:worker': _dbbasic_command('work', 'Run due jobs: queue:worker MODULE:ATTR [--loop]'),
    **{f'queue:{name}': _dbbasic_command(name, help_text) for name, help_text in [
        ('work', 'Run due jobs: queue:work MODULE:ATTR [--loop]'),
        ('stats', 'Show queue counts per status and type'),
        ('enqueue', 'Add a job: queue:enqueue TYPE [JSON]'),
        ('list', 'List jobs: queue:list [--status S] [--type T]'),
        ('show', 'Show one job: queue:show ID'),
        ('retry', 'Retry a job or every failed job: queue:retry ID | --failed'),
        ('cancel', 'Cancel a pending job: queue:cancel ID'),
        ('purge', 'Delete old finished jobs: queue:purge --status S --older-than 7d | --keep N'),
        ('check', 'Find problems in the queue files'),
        ('edit', 'Edit the queue file in $EDITOR, checked and merged: queue:edit'),
        ('migrate', 'Move pending and failed jobs into Redis: queue:migrate --to redis://...'),
    ]},
}

if __name__ == '__main__':
    sys.exit(main())
