"""The dashboard: see a queue and act on it from a browser. Stdlib only, no JavaScript.

    dbbasic-queue web                        # http://127.0.0.1:8080/
    dbbasic-queue web --read-only --port 9000
    dbbasic-queue web --host 0.0.0.0 --token "$(openssl rand -hex 16)"

Or mount the WSGI application under a prefix of your own app (links follow SCRIPT_NAME):

    from dbbasic_queue.web import application
    dashboard = application(Queue('data/queue.tsv'), token='...')

It reads and acts through the Queue's own methods (stats, find_jobs, history, retry,
cancel_jobs, purge, pause), so it is the same on the file and on RQ.

Safe by default: the CLI binds 127.0.0.1 and refuses any other address without a token;
with a token every request must carry it (Authorization: Bearer, or ?token= once, which
leaves an HttpOnly cookie). GET never changes anything; every action is a POST that must
carry the CSRF token of its form (a double-submit cookie, SameSite=Strict). Every value
is HTML-escaped, and a Content-Security-Policy allows no script at all. A bad request
gets a 4xx page; an unexpected error a 500 page, its traceback only in the log.
"""

from __future__ import annotations

import hmac
import html
import http.cookies
import ipaddress
import json
import logging
import math
import secrets
import socket
import socketserver
import threading
import time
from datetime import datetime
from typing import Callable, Iterable
from urllib.parse import parse_qs, quote, unquote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import InvalidArgumentError, JobNotFound, QueueError
from .job import FINAL_WORDS, STATUS_WORDS
from .queue import PAGE_JOBS, Queue, default_queue
from .validate import parse_duration

log = logging.getLogger('dbbasic_queue')

TOKEN_ENV_VAR = 'DBBASIC_QUEUE_WEB_TOKEN'
TOKEN_COOKIE = 'dbbasic_queue_token'
CSRF_COOKIE = 'dbbasic_queue_csrf'
MAX_FORM_BYTES = 64 * 1024
CHART_WIDTH, CHART_HEIGHT = 560, 120
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [('Content-Security-Policy', CSP), ('X-Content-Type-Options', 'nosniff'),
                    ('X-Frame-Options', 'DENY'), ('Referrer-Policy', 'no-referrer'),
                    ('Cache-Control', 'no-store')]
REASONS = {200: 'OK', 303: 'See Other', 400: 'Bad Request', 401: 'Unauthorized',
           403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
           409: 'Conflict', 413: 'Payload Too Large', 421: 'Misdirected Request',
           500: 'Internal Server Error'}
READ_TIMEOUT_SECONDS = 10   # a client silent this long mid-request is disconnected
MAX_CONNECTIONS = 64        # served at once, a thread each; more wait to be accepted
DONE_MESSAGES = {'retried': 'Retried {n} job(s): they are pending again.',
                 'cancelled': 'Cancelled {n} job(s).', 'purged': 'Purged {n} finished job(s).',
                 'paused': 'Paused {type}: workers leave its jobs pending.',
                 'resumed': 'Resumed {type}.'}
STYLE = b"""body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#234;color:#fff;padding:8px 16px}header a{color:#fff;margin-right:14px}
main{padding:12px 16px;max-width:1200px}h1{font-size:20px}h2{font-size:16px;margin-top:24px}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#eef}.num{text-align:right}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{background:#fff;border:1px solid #ddd;
padding:8px 14px;min-width:90px}.card b{display:block;font-size:22px}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-width:1100px;
white-space:pre-wrap;word-break:break-all}.flash{background:#dfd;border:1px solid #9c9;
padding:6px 10px}.error{background:#fdd;border:1px solid #c99;padding:6px 10px}
form.inline{display:inline}button{cursor:pointer}.muted{color:#777}
.charts{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0}
svg{background:#fff;border:1px solid #ddd}
"""


class HTTPError(Exception):
    """A request that gets a 4xx page with this one-line message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def application(queue: Queue | None = None, *, token: str | None = None,
                read_only: bool = False) -> Callable[..., Iterable[bytes]]:
    """The dashboard of queue (default: the default queue) as a WSGI application."""
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise InvalidArgumentError('token must be a non-empty str or None')
    return Dashboard(queue if queue is not None else default_queue(), token, read_only)


class Request:
    """What a handler needs of one WSGI request."""

    def __init__(self, environ):
        self.environ = environ
        self.method = environ.get('REQUEST_METHOD', 'GET')
        self.path = environ.get('PATH_INFO') or '/'
        self.prefix = environ.get('SCRIPT_NAME', '').rstrip('/')
        self.query = parse_qs(environ.get('QUERY_STRING', ''), keep_blank_values=True)
        cookies = http.cookies.SimpleCookie()
        try:
            cookies.load(environ.get('HTTP_COOKIE', ''))
        except http.cookies.CookieError:
            pass     # a malformed Cookie header counts as none: the checks below refuse
        self.cookies = {name: morsel.value for name, morsel in cookies.items()}
        self.form: dict[str, list[str]] = {}
        # The CSRF token its forms carry: the browser's cookie, else a new one to set.
        self.csrf = self.cookies.get(CSRF_COOKIE) or secrets.token_hex(16)
        self.set_token = False          # True: the response stores the token in a cookie

    def arg(self, name, source=None):
        values = (self.query if source is None else source).get(name) or ['']
        return values[0].strip()

    def read_form(self):
        try:
            length = int(self.environ.get('CONTENT_LENGTH') or 0)
        except ValueError:
            raise HTTPError(400, 'bad Content-Length') from None
        if length > MAX_FORM_BYTES:
            raise HTTPError(413, f'a form holds at most {MAX_FORM_BYTES} bytes')
        body = self.environ['wsgi.input'].read(length) if length else b''
        self.form = parse_qs(body.decode('utf-8', 'replace'), keep_blank_values=True)

    def url(self, path, **params):
        query = urlencode({k: v for k, v in params.items() if v not in (None, '')}, doseq=True)
        return f'{self.prefix}{path}' + (f'?{query}' if query else '')


class Response:
    def __init__(self, status=200, body=b'', content_type='text/html; charset=utf-8',
                 location=None):
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = [('Location', location)] if location else []


class Dashboard:
    """The WSGI application (see the module docstring)."""

    def __init__(self, queue, token, read_only):
        self.queue, self.token, self.read_only = queue, token, read_only

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self._authorized(request) or self._route(request)
        except HTTPError as exc:
            response = self._error_page(request, exc.status, str(exc))
        except JobNotFound as exc:
            response = self._error_page(request, 404, str(exc))
        except InvalidArgumentError as exc:
            response = self._error_page(request, 400, str(exc))
        except QueueError as exc:
            log.error('dashboard: %s %s: %s', request.method, request.path, exc)
            response = self._error_page(request, 500, str(exc))
        except Exception:
            log.exception('dashboard: %s %s failed', request.method, request.path)
            response = self._error_page(request, 500, 'unexpected error: see the log')
        headers = [('Content-Type', response.content_type),
                   ('Content-Length', str(len(response.body))), *SECURITY_HEADERS,
                   *response.headers]
        path = request.prefix or '/'
        if request.cookies.get(CSRF_COOKIE) != request.csrf:
            headers.append(('Set-Cookie', f'{CSRF_COOKIE}={request.csrf}; Path={path}; '
                                          f'HttpOnly; SameSite=Strict'))
        if request.set_token:
            headers.append(('Set-Cookie', f'{TOKEN_COOKIE}={quote(self.token or "")}; '
                                          f'Path={path}; HttpOnly; SameSite=Strict'))
        start_response(f'{response.status} {REASONS.get(response.status, "")}', headers)
        return [b''] if request.method == 'HEAD' else [response.body]

    # -- access ---------------------------------------------------------------------------
    def _authorized(self, request):
        """None if the request may go on; a redirect that stores a ?token= as a cookie.
        Without a token, only a request to a loopback name may: a web page the user
        visits could otherwise reach 127.0.0.1 by a name of its own (DNS rebinding)."""
        if self.token is None:
            host = request.environ.get('HTTP_HOST')
            if host is not None and not is_loopback(host_name(host)):
                raise HTTPError(421, 'without a token this dashboard answers only to '
                                     '127.0.0.1, localhost or [::1]')
            return None
        given = request.environ.get('HTTP_AUTHORIZATION', '')
        candidates = [given[7:].strip() if given.startswith('Bearer ') else '',
                      unquote(request.cookies.get(TOKEN_COOKIE, '')), request.arg('token')]
        if not any(c and hmac.compare_digest(c.encode(), self.token.encode())
                   for c in candidates):
            raise HTTPError(401, 'this dashboard needs its token: open it with ?token=... '
                                 'or send Authorization: Bearer ...')
        if request.arg('token') and request.method == 'GET':
            request.set_token = True
            rest = {k: v for k, v in request.query.items() if k != 'token'}
            # The path as a path of ours: '//host' would send the browser to another site.
            path = '/' + quote(request.path, safe='/').lstrip('/')
            return Response(303, location=request.url(path, **rest))
        return None

    def _check_csrf(self, request):
        sent, expected = request.arg('csrf', request.form), request.cookies.get(CSRF_COOKIE, '')
        if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HTTPError(403, 'this action lacks its form\'s CSRF token: reload the page '
                                 'and try again')

    # -- routing --------------------------------------------------------------------------
    def _route(self, request):
        parts = [part for part in request.path.split('/') if part]
        if request.method in ('GET', 'HEAD'):
            if not parts:
                return self._page(request, 'Overview', self._overview(request))
            if parts == ['style.css']:
                return Response(body=STYLE, content_type='text/css; charset=utf-8')
            if parts == ['jobs']:
                return self._page(request, 'Jobs', self._list(request))
            if len(parts) == 2 and parts[0] == 'jobs':
                return self._page(request, f'Job {parts[1]}', self._job(request, parts[1]))
            raise HTTPError(404, f'no page {request.path}')
        if request.method != 'POST':
            raise HTTPError(405, f'{request.method} is not allowed here')
        if self.read_only:
            raise HTTPError(403, 'this dashboard is read-only')
        request.read_form()
        self._check_csrf(request)
        return self._act(request, parts)

    def _act(self, request, parts):
        queue, form = self.queue, request.form
        job_type = request.arg('type', form) or None
        if len(parts) == 3 and parts[0] == 'jobs' and parts[2] in ('retry', 'cancel'):
            job_id = parts[1]
            if parts[2] == 'retry':
                count = len(queue.retry(job_id))
            else:
                if not queue.cancel_job(job_id):
                    job = queue.get_job(job_id)
                    if job is None:
                        raise JobNotFound(job_id)
                    raise HTTPError(409, f'job {job_id} is {job["status"]}: only pending jobs '
                                         f'can be cancelled')
                count = 1
            done = 'retried' if parts[2] == 'retry' else 'cancelled'
            return _redirect(request, f'/jobs/{quote(job_id, safe="")}', done, count)
        if parts == ['retry-failed']:
            return _redirect(request, '/', 'retried', len(queue.retry(failed=True,
                                                                      job_type=job_type)))
        if parts == ['cancel-pending']:
            return _redirect(request, '/', 'cancelled', len(queue.cancel_jobs(job_type)))
        if parts == ['purge']:
            statuses = [s for s in form.get('status', []) if s]
            older = request.arg('older_than', form)
            purged = queue.purge(statuses, parse_duration(older) if older else None)
            return _redirect(request, '/', 'purged', len(purged))
        if parts in (['pause'], ['resume']):
            if job_type is None:
                raise HTTPError(400, f'{parts[0]} needs a job type')
            (queue.pause if parts == ['pause'] else queue.resume)(job_type)
            return _redirect(request, '/', 'paused' if parts == ['pause'] else 'resumed',
                             job_type=job_type)
        raise HTTPError(404, f'no action {request.path}')

    # -- pages ----------------------------------------------------------------------------
    def _overview(self, request):
        queue = self.queue
        history = queue.history()
        stats, claims = queue.stats(), queue.claims()
        now = time.time()
        cards = ''.join(
            f'<a class="card" href="{e(request.url("/jobs", status=status))}">'
            f'{e(status)}<b id="count-{e(status)}">{count:,}</b></a>'
            for status, count in stats['by_status'].items())
        oldest, next_due = stats['oldest_pending_seconds'], stats['next_due_at']
        facts = (f'<p>{stats["total"]:,} jobs. Oldest pending: '
                 f'{e(_age(oldest)) if oldest is not None else "none"}. Next due: '
                 f'{e(_when(next_due, now)) if next_due is not None else "none"}.</p>')
        types = self._types_table(request, stats)
        workers = _table(['worker', 'job', 'type', 'running for', ''], [
            [e(claim['worker'] or '?'), _job_link(request, claim['id']), e(claim['type']),
             e(_age(claim['running_seconds'])) if claim['running_seconds'] is not None else '-',
             '' if claim['alive'] else 'gone: its job comes back at the next run']
            for claim in claims]) if claims else '<p class="muted">No job is running.</p>'
        charts = ''.join([
            _bar_chart('Finished per minute, last hour', history['minutes']),
            _bar_chart('Finished per hour, last day', history['hours']),
            _line_chart('Queue depth, last hour', history['minutes']),
            _line_chart('Queue depth, last day', history['hours'])])
        paused = (f'<p>Paused: {e(", ".join(stats["paused"]))}</p>' if stats['paused'] else '')
        return (f'<h1>Overview</h1><div class="cards">{cards}</div>{facts}{paused}'
                f'<h2>By type</h2>{types}<h2>Workers holding jobs</h2>{workers}'
                f'<h2>History</h2><div class="charts">{charts}</div>'
                f'{self._purge_form(request)}')

    def _types_table(self, request, stats):
        if not stats['by_type']:
            return '<p class="muted">No jobs yet.</p>'
        words = [w for w in STATUS_WORDS if w != 'migrated']
        rows = []
        for job_type, counts in stats['by_type'].items():
            cells = [f'<a href="{e(request.url("/jobs", type=job_type))}">{e(job_type)}</a>']
            cells += [f'<a href="{e(request.url("/jobs", type=job_type, status=w))}">'
                      f'{counts[w]:,}</a>' for w in words]
            actions = ''
            if not self.read_only:
                paused = job_type in stats['paused']
                actions = self._form(request, '/resume' if paused else '/pause',
                                     'resume' if paused else 'pause', type=job_type)
                if counts['failed']:
                    actions += self._form(request, '/retry-failed', 'retry failed', type=job_type)
                if counts['pending']:
                    actions += self._form(request, '/cancel-pending', 'cancel pending',
                                          type=job_type)
            rows.append(cells + [actions])
        return _table(['type', *words, ''], rows, numeric=range(1, len(words) + 1))

    def _purge_form(self, request):
        if self.read_only:
            return ''
        boxes = ''.join(f'<label><input type="checkbox" name="status" value="{e(w)}"'
                        f'{" checked" if w in ("completed", "cancelled") else ""}> {e(w)}</label> '
                        for w in FINAL_WORDS)
        return (f'<h2>Purge finished jobs</h2><form method="post" action="'
                f'{e(request.url("/purge"))}">{self._csrf_field(request)}{boxes}: finished '
                f'more than <input name="older_than" value="7d" size="6"> ago '
                f'<button>purge</button></form>')

    def _list(self, request):
        status, job_type, text = (request.arg('status') or None, request.arg('type') or None,
                                  request.arg('q') or None)
        page_text = request.arg('page') or '1'
        if not page_text.isdigit() or int(page_text) < 1:
            raise HTTPError(400, f'bad page number {page_text!r}: pages are 1, 2, 3, ...')
        page = int(page_text)
        total, jobs = self.queue.find_jobs(status, job_type, text,
                                           offset=(page - 1) * PAGE_JOBS, limit=PAGE_JOBS)
        pages = max(1, math.ceil(total / PAGE_JOBS))
        if page > pages:
            raise HTTPError(404, f'no page {page}: there are {pages}')
        options = ''.join(f'<option{" selected" if w == status else ""}>{e(w)}</option>'
                          for w in STATUS_WORDS)
        filters = (f'<form method="get" action="{e(request.url("/jobs"))}">'
                   f'<select name="status"><option value="">any status</option>{options}</select> '
                   f'type <input name="type" value="{e(job_type or "")}" size="14"> '
                   f'text in payload or error <input name="q" value="{e(text or "")}" size="20"> '
                   f'<button>filter</button></form>')
        rows = [[_job_link(request, job['id']), e(job['type']), e(job['status']),
                 e(_stamp(job['created_at'])), e(_stamp(job['finished_at']) if job['finished_at']
                                                 else _stamp(job['run_at'])),
                 str(job['attempts']), e(_short(json.dumps(job['payload'], ensure_ascii=False))),
                 e(_short(job['error'] or ''))] for job in jobs]
        first = (page - 1) * PAGE_JOBS + 1
        nav = [f'jobs {first:,}-{first + len(jobs) - 1:,} of {total:,}' if jobs else 'no jobs']
        params = {'status': status, 'type': job_type, 'q': text}
        if page > 1:
            nav.append(f'<a rel="prev" href="{e(request.url("/jobs", **params, page=page - 1))}">'
                       f'newer</a>')
        if page < pages:
            nav.append(f'<a rel="next" href="{e(request.url("/jobs", **params, page=page + 1))}">'
                       f'older</a>')
        table = _table(['id', 'type', 'status', 'created', 'finished / due', 'attempts',
                        'payload', 'error'], rows, numeric=[5]) if rows else ''
        return (f'<h1>Jobs</h1>{filters}<p id="page-nav">{" · ".join(nav)}</p>{table}')

    def _job(self, request, job_id):
        found = self.queue.find_job(job_id)
        if found is None:
            raise JobNotFound(job_id)
        job, full = found.to_dict(), found.to_dict(full=True)
        rows = [[e(name), e(_field_text(name, value))] for name, value in full.items()
                if name not in ('payload', 'result', 'error')]
        actions = ''
        if not self.read_only:
            path = f'/jobs/{quote(job_id, safe="")}'
            if job['status'] in ('failed', 'cancelled'):
                actions += self._form(request, f'{path}/retry', 'retry')
            if job['status'] == 'pending':
                actions += self._form(request, f'{path}/cancel', 'cancel')
        error = f'<h2>Error</h2><pre id="error">{e(job["error"])}</pre>' if job['error'] else ''
        return (f'<h1>Job {e(job_id)}</h1><p>{actions}</p>{_table(["field", "value"], rows)}'
                f'<h2>Payload</h2><pre id="payload">{e(_pretty(job["payload"]))}</pre>{error}'
                f'<h2>Result</h2><pre id="result">{e(_pretty(job["result"]))}</pre>')

    # -- pieces ---------------------------------------------------------------------------
    def _form(self, request, path, label, **fields):
        hidden = ''.join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">'
                         for k, v in fields.items())
        return (f'<form class="inline" method="post" action="{e(request.url(path))}">'
                f'{self._csrf_field(request)}{hidden}<button>{e(label)}</button></form> ')

    @staticmethod
    def _csrf_field(request):
        return f'<input type="hidden" name="csrf" value="{e(request.csrf)}">'

    def _page(self, request, title, body):
        done = request.arg('done')
        flash = ''
        if done in DONE_MESSAGES:
            message = DONE_MESSAGES[done].format(n=request.arg('n') or '0',
                                                 type=request.arg('type'))
            flash = f'<p class="flash" id="flash">{e(message)}</p>'
        nav = ''.join(f'<a href="{e(request.url("/jobs", status=w))}">{e(w)}</a>'
                      for w in ('pending', 'processing', 'failed', 'completed'))
        mode = ' (read-only)' if self.read_only else ''
        html_text = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                     f'<title>{e(title)} - dbbasic-queue</title>'
                     f'<link rel="stylesheet" href="{e(request.url("/style.css"))}"></head><body>'
                     f'<header><a href="{e(request.url("/"))}"><b>dbbasic-queue</b></a>{nav}'
                     f'<span class="muted">{e(str(self.queue.path))}{mode}</span></header>'
                     f'<main>{flash}{body}</main></body></html>')
        return Response(body=html_text.encode('utf-8', 'surrogateescape'))

    def _error_page(self, request, status, message):
        if status >= 500:
            log.warning('dashboard: %s %s: %d %s', request.method, request.path, status, message)
        body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<title>{status} {e(REASONS.get(status, ""))}</title></head><body>'
                f'<h1>{status} {e(REASONS.get(status, ""))}</h1>'
                f'<p class="error" id="message">{e(message)}</p>'
                f'<p><a href="{e((request.prefix or "") + "/")}">overview</a></p></body></html>')
        return Response(status, body.encode('utf-8', 'surrogateescape'))


def _redirect(request, path, done, n=None, **params):
    return Response(303, location=request.url(path, done=done, n=n, **params))


def e(value):
    """A value as HTML text: every <, >, &, " and ' escaped."""
    return html.escape(str(value), quote=True)


def _table(headers, rows, numeric=()):
    head = ''.join(f'<th>{e(h)}</th>' for h in headers)
    body = ''.join('<tr>' + ''.join(
        f'<td class="num">{cell}</td>' if i in numeric else f'<td>{cell}</td>'
        for i, cell in enumerate(row)) + '</tr>' for row in rows)
    return f'<table><tr>{head}</tr>{body}</table>'


def _job_link(request, job_id):
    return f'<a href="{e(request.url("/jobs/" + quote(job_id, safe="")))}">{e(job_id)}</a>'


def _short(text, width=60):
    return text if len(text) <= width else text[:width - 1] + '…'


def _pretty(value):
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _stamp(seconds):
    if not seconds:
        return '-'
    try:
        return datetime.fromtimestamp(seconds).strftime('%Y-%m-%d %H:%M:%S')
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def _field_text(name, value):
    if value is None:
        return '-'
    if name in ('created_at', 'run_at', 'claimed_at', 'finished_at'):
        return f'{_stamp(value)} ({value})'
    return str(value)


def _age(seconds):
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return f'{seconds / size:.1f}{unit}'
    return f'{seconds:.0f}s'


def _when(seconds, now):
    delta = seconds - now
    return _stamp(seconds) + (f' (in {_age(delta)})' if delta > 0 else ' (due now)')


# -- charts: server-drawn SVG, colours as attributes (the CSP allows no inline style) ------
def _bar_chart(title, buckets):
    peak = max([b['completed'] + b['failed'] for b in buckets] + [1])
    width = CHART_WIDTH / len(buckets)
    bars = []
    for i, bucket in enumerate(buckets):
        x, base = i * width, CHART_HEIGHT
        for key, colour in (('completed', '#4a4'), ('failed', '#c33')):
            height = bucket[key] / peak * (CHART_HEIGHT - 10)
            if height:
                bars.append(f'<rect x="{x:.1f}" y="{base - height:.1f}" width="{width * 0.8:.1f}" '
                            f'height="{height:.1f}" fill="{colour}"><title>'
                            f'{e(_label(bucket))}: {bucket[key]} {key}</title></rect>')
                base -= height
    return _svg(title, f'{peak:,} a bar at most', ''.join(bars), buckets,
                legend='green: completed, red: failed')


def _line_chart(title, buckets):
    peak = max([b['depth'] for b in buckets] + [1])
    width = CHART_WIDTH / len(buckets)
    points = ' '.join(f'{(i + 0.4) * width:.1f},{CHART_HEIGHT - b["depth"] / peak * (CHART_HEIGHT - 10):.1f}'
                      for i, b in enumerate(buckets))
    line = f'<polyline points="{points}" fill="none" stroke="#36c" stroke-width="2"/>'
    last = buckets[-1]['depth'] if buckets else 0
    return _svg(title, f'{peak:,} at most, {last:,} now', line, buckets)


def _svg(title, scale, content, buckets, legend=''):
    first = e(_label(buckets[0])) if buckets else ''
    last = 'now'
    return (f'<figure><figcaption>{e(title)} <span class="muted">({e(scale)}'
            f'{"; " + e(legend) if legend else ""})</span></figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" '
            f'height="{CHART_HEIGHT + 16}" role="img" aria-label="{e(title)}">{content}'
            f'<text x="0" y="{CHART_HEIGHT + 13}" font-size="11" fill="#555">{first}</text>'
            f'<text x="{CHART_WIDTH}" y="{CHART_HEIGHT + 13}" font-size="11" fill="#555" '
            f'text-anchor="end">{last}</text></svg></figure>')


def _label(bucket):
    return datetime.fromtimestamp(bucket['start']).strftime('%H:%M')


# -- serving -------------------------------------------------------------------------------
class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, at most MAX_CONNECTIONS at once: the next connection is
    accepted once one ends (each ends within READ_TIMEOUT_SECONDS of silence)."""
    daemon_threads = True

    def server_activate(self):
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().server_activate()

    def process_request(self, request, client_address):
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(WSGIRequestHandler):
    def setup(self):
        self.timeout = READ_TIMEOUT_SECONDS   # read at each connection: set on its socket
        super().setup()

    def handle(self):
        try:
            super().handle()
        except socket.timeout:   # TimeoutError from 3.10 on; not yet one on 3.9
            log.info('dashboard: %s sent no whole request in %g s: disconnected',
                     self.address_string(), READ_TIMEOUT_SECONDS)

    def log_message(self, format, *args):   # noqa: A002 (the stdlib's name)
        log.info('dashboard: %s %s', self.address_string(), format % args)


def host_name(host):
    """The name of a Host header's value: 'localhost:8080' -> 'localhost',
    '[::1]:8080' -> '::1'."""
    if host.startswith('['):
        return host[1:].split(']', 1)[0]
    return host.rsplit(':', 1)[0] if host.count(':') == 1 else host


def is_loopback(host):
    if host.lower() == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_dashboard_server(queue, host='127.0.0.1', port=8080, *, token=None, read_only=False):
    """A threaded HTTP server of the dashboard (call serve_forever). Refuses a host that
    is not loopback without a token: InvalidArgumentError. It counts the queue once before
    it serves (stats: the hot file from its index, or whole when it has no summary; the
    archive whole), which is what every page counts from, so that its first page is as
    fast as the next ones, which read only what changed."""
    if not is_loopback(host) and not token:
        raise InvalidArgumentError(f'refusing to serve the dashboard on {host} without a '
                                   f'token: anyone who reaches it could read payloads and '
                                   f'retry or cancel jobs; give --token (or '
                                   f'{TOKEN_ENV_VAR}), or bind 127.0.0.1')
    started = time.perf_counter()
    total = queue.stats()['total']
    log.info('dashboard: read %s jobs in %.0f ms', f'{total:,}',
             (time.perf_counter() - started) * 1000)
    return make_server(host, port, application(queue, token=token, read_only=read_only),
                       server_class=_Server, handler_class=_Handler)
