"""The dashboard over real HTTP on 127.0.0.1 (issue 14): pages, actions on both backends,
CSRF, tokens, read-only, escaping, error pages, the CLI's bind rule, a WSGI prefix."""

import http.client
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults


from dbbasic_queue import Queue
from dbbasic_queue.web import CSP, application, make_dashboard_server
from tests.conftest import SUBPROCESS_TIMEOUT_SECONDS, free_port, python_env

XSS = ['<script>alert(1)</script>', '"><img src=x onerror=alert(1)>']


@contextmanager
def serving(queue, **options):
    server = make_dashboard_server(queue, '127.0.0.1', 0, **options)
    # A short poll: shutdown() waits for it (the default 0.5 s cost each test that much).
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Client(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=SUBPROCESS_TIMEOUT_SECONDS)


class Client:
    """HTTP/1.1 to the dashboard, keeping its cookies like a browser; no redirect followed."""

    def __init__(self, port):
        self.port, self.cookies = port, {}

    def request(self, method, path, form=None, headers=None):
        connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=30)
        headers = dict(headers or {})
        if self.cookies:
            headers['Cookie'] = '; '.join(f'{k}={v}' for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form, doseq=True)
            headers['Content-Type'] = 'application/x-www-form-urlencoded'
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        for name, value in response.getheaders():
            if name.lower() == 'set-cookie':
                key, _, rest = value.partition('=')
                self.cookies[key] = rest.split(';')[0]
        connection.close()
        return response.status, dict(response.getheaders()), text

    def get(self, path, **kwargs):
        return self.request('GET', path, **kwargs)

    def post(self, path, form, csrf=True):
        """POST a form as the page's own form would: with the CSRF token of that page."""
        if csrf:
            form = {**form, 'csrf': self.csrf()}
        return self.request('POST', path, form=form)

    def csrf(self):
        status, _, page = self.get('/')
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert status == 200 and found, page[:300]
        return found.group(1)


def prepared_queue(location):
    """Two pending, one processing-free failed job, one completed, types a and b."""
    queue = Queue(location, backoff_base_seconds=0)
    ids = {'pending': queue.enqueue('a', {'n': 1}), 'other': queue.enqueue('b', {'n': 2}),
           'failed': queue.enqueue('a', {'n': 3, 'fail': True}),
           'done': queue.enqueue('b', {'n': 4})}

    def run(payload):
        if payload.get('fail'):
            raise ValueError('smtp said <b>no</b>')
        return {'ok': payload['n']}

    queue.process_jobs({'a': run, 'b': run}, max_attempts=1, max_jobs=4)
    ids['pending'] = queue.enqueue('a', {'n': 5})
    ids['other'] = queue.enqueue('b', {'n': 6})
    return queue, ids


def counts_in(page):
    return {status: int(n.replace(',', '')) for status, n in
            re.findall(r'id="count-(\w+)">([\d,]+)<', page)}


# -- pages -----------------------------------------------------------------------------------
def test_the_overview_shows_counts_types_history_and_a_strict_policy(backend):
    queue, _ = prepared_queue(backend)
    with serving(queue) as client:
        status, headers, page = client.get('/')
    assert status == 200
    assert counts_in(page) == {'pending': 2, 'processing': 0, 'completed': 3, 'failed': 1,
                               'cancelled': 0, 'migrated': 0}
    assert headers['Content-Security-Policy'] == CSP and "script-src" not in CSP
    assert "default-src 'none'" in CSP and headers['X-Frame-Options'] == 'DENY'
    assert page.count('<svg') == 4 and 'Finished per minute, last hour' in page
    assert '>retry failed</button>' in page and '>pause</button>' in page
    assert '<script' not in page


def test_lists_filter_by_status_type_and_text_newest_first_in_pages(backend, monkeypatch):
    monkeypatch.setattr('dbbasic_queue.web.PAGE_JOBS', 2)
    queue, ids = prepared_queue(backend)
    with serving(queue) as client:
        _, _, failed = client.get('/jobs?status=failed')
        _, _, by_type = client.get('/jobs?type=a')
        _, _, by_text = client.get('/jobs?q=SMTP+SAID')
        _, _, first = client.get('/jobs')
        _, _, second = client.get('/jobs?page=2')
        assert client.get('/jobs?page=x')[0] == 400
        assert client.get('/jobs?page=0')[0] == 400
        status, _, beyond = client.get('/jobs?page=9')
        assert status == 404 and 'no page 9: there are 3' in beyond
        assert client.get('/jobs?status=sleeping')[0] == 400
    assert ids['failed'] in failed and 'jobs 1-1 of 1' in failed
    assert 'jobs 1-2 of 3' in by_type
    assert ids['failed'] in by_text and 'jobs 1-1 of 1' in by_text
    assert 'jobs 1-2 of 6' in first and 'jobs 3-4 of 6' in second
    # pending first, newest first: the last enqueued leads
    assert first.index(ids['other']) < first.index(ids['pending'])
    assert 'rel="next"' in first and 'rel="prev"' in second


def test_a_job_page_shows_every_field_formatted_and_unknown_ids_are_404(backend):
    queue, ids = prepared_queue(backend)
    with serving(queue) as client:
        status, _, page = client.get(f'/jobs/{ids["failed"]}')
        missing = client.get('/jobs/0123456789abcdef')
    assert status == 200
    assert '&quot;fail&quot;: true' in page and 'id="payload"' in page
    assert 'ValueError: smtp said &lt;b&gt;no&lt;/b&gt;' in page
    assert '>retry</button>' in page and '>cancel</button>' not in page
    assert missing[0] == 404 and 'no job 0123456789abcdef' in missing[2]
    assert 'Traceback' not in missing[2]


def test_every_value_is_escaped(backend):
    queue = Queue(backend)
    job_type = '<b>hi</b>'
    ids = [queue.enqueue(job_type, {'text': text}) for text in XSS]
    with serving(queue) as client:
        pages = [client.get('/')[2], client.get('/jobs')[2], client.get(f'/jobs/{ids[0]}')[2],
                 client.get(f'/jobs/{ids[1]}')[2], client.get('/jobs?q=%3Cscript')[2]]
    for page in pages:
        assert '<script>alert' not in page and '<img src=x' not in page
        assert '<b>hi</b>' not in page
    assert '&lt;b&gt;hi&lt;/b&gt;' in pages[0]
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in pages[2]
    assert '&quot;&gt;&lt;img src=x onerror=alert(1)&gt;' in pages[3]
    assert 'jobs 1-1 of 1' in pages[4]


# -- actions ---------------------------------------------------------------------------------
def test_actions_are_posts_with_the_forms_csrf_token_and_change_the_queue(backend):
    queue, ids = prepared_queue(backend)
    with serving(queue) as client:
        status, headers, _ = client.post(f'/jobs/{ids["failed"]}/retry', {})
        assert status == 303 and '/jobs/' in headers['Location'] and 'done=retried' in headers['Location']
        assert queue.get_job(ids['failed'])['status'] == 'pending'
        assert client.post(f'/jobs/{ids["pending"]}/cancel', {})[0] == 303
        assert queue.get_job(ids['pending'])['status'] == 'cancelled'
        status, _, page = client.post(f'/jobs/{ids["pending"]}/cancel', {})
        assert status == 409 and 'is cancelled: only pending jobs can be cancelled' in page
        assert client.post('/cancel-pending', {'type': 'a'})[0] == 303
        assert queue.get_job(ids['failed'])['status'] == 'cancelled'
        assert client.post('/pause', {'type': 'b'})[0] == 303
        assert queue.paused_types() == ['b']
        assert client.post('/resume', {'type': 'b'})[0] == 303
        assert queue.paused_types() == []
        before = len(queue.jobs())
        status, headers, _ = client.post('/purge', {'status': ['completed'], 'older_than': '0s'})
        assert status == 303 and 'done=purged&n=3' in headers['Location']
        assert len(queue.jobs()) == before - 3
        _, _, flash = client.get('/?done=purged&n=3')
        assert 'Purged 3 finished job(s).' in flash


def test_retry_all_failed_of_a_type(backend):
    queue, ids = prepared_queue(backend)
    with serving(queue) as client:
        status, headers, _ = client.post('/retry-failed', {'type': 'a'})
    assert status == 303 and 'done=retried&n=1' in headers['Location']
    assert queue.get_job(ids['failed'])['status'] == 'pending'


def test_an_action_without_its_csrf_token_or_by_get_changes_nothing(queue_path):
    queue, ids = prepared_queue(queue_path)
    with serving(queue) as client:
        no_token = client.post(f'/jobs/{ids["failed"]}/retry', {}, csrf=False)
        client.get('/')                                    # the browser has the cookie now
        wrong = client.request('POST', f'/jobs/{ids["failed"]}/retry', form={'csrf': 'f00d'})
        by_get = client.get(f'/jobs/{ids["failed"]}/retry')
        other_site = Client(client.port).post(f'/jobs/{ids["failed"]}/retry',
                                              {'csrf': client.cookies['dbbasic_queue_csrf']},
                                              csrf=False)  # its token, without its cookie
    assert no_token[0] == wrong[0] == other_site[0] == 403 and 'CSRF' in wrong[2]
    assert by_get[0] == 404
    assert queue.get_job(ids['failed'])['status'] == 'failed'


def test_read_only_shows_no_actions_and_refuses_posts(queue_path):
    queue, ids = prepared_queue(queue_path)
    with serving(queue, read_only=True) as client:
        pages = [client.get('/')[2], client.get(f'/jobs/{ids["failed"]}')[2]]
        status, _, page = client.post(f'/jobs/{ids["failed"]}/retry', {}, csrf=False)
    assert all('<form class="inline" method="post"' not in p and 'method="post"' not in p
               for p in pages)
    assert status == 403 and 'read-only' in page
    assert queue.get_job(ids['failed'])['status'] == 'failed'


# -- access ----------------------------------------------------------------------------------
def test_with_a_token_every_request_must_carry_it(queue_path):
    queue, _ = prepared_queue(queue_path)
    with serving(queue, token='s3cret') as client:
        assert client.get('/')[0] == 401
        assert client.get('/style.css')[0] == 401
        assert client.get('/?token=wrong')[0] == 401
        assert client.get('/', headers={'Authorization': 'Bearer s3cret'})[0] == 200
        status, headers, _ = client.get('/jobs?status=failed&token=s3cret')
        assert status == 303 and headers['Location'] == '/jobs?status=failed'   # not in history
        assert client.get('/jobs?status=failed')[0] == 200     # the cookie carries it now
        assert 'HttpOnly' in headers['Set-Cookie'] and 'SameSite=Strict' in headers['Set-Cookie']
        elsewhere = client.get('//evil.example/x%0d%0aSet-Cookie:%20a=b?token=s3cret')
        assert elsewhere[0] == 303                             # stays on this site, one header
        assert elsewhere[1]['Location'] == '/evil.example/x%0D%0ASet-Cookie%3A%20a%3Db'


def test_a_storage_error_is_a_500_page_without_a_traceback(tmp_path):
    queue_path = tmp_path / 'data' / 'queue.tsv'
    queue = Queue(queue_path)
    queue.enqueue('a', {})
    with serving(queue) as client:
        queue_path.unlink()
        queue_path.mkdir()                         # a directory where the file should be
        status, _, page = client.get('/')
    assert status == 500 and 'queue.tsv: Is a directory' in page and 'Traceback' not in page


def test_the_wsgi_application_follows_its_mount_prefix(queue_path):
    queue, ids = prepared_queue(queue_path)
    environ = {'SCRIPT_NAME': '/admin/queue', 'PATH_INFO': '/'}
    setup_testing_defaults(environ)
    seen = {}
    body = b''.join(application(queue)(environ, lambda status, headers: seen.update(
        status=status, headers=headers)))
    assert seen['status'].startswith('200')
    assert b'href="/admin/queue/jobs?status=pending"' in body
    assert b'action="/admin/queue/purge"' in body
    cookie = dict(seen['headers'])['Set-Cookie']
    assert 'Path=/admin/queue;' in cookie


# -- the command line ------------------------------------------------------------------------
def test_web_refuses_a_non_loopback_address_without_a_token(tmp_path):
    done = subprocess.run([sys.executable, '-m', 'dbbasic_queue', 'web', '--host', '0.0.0.0',
                           '--port', str(free_port())], cwd=tmp_path, env=python_env(),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert done.returncode == 2
    assert 'refusing to serve the dashboard on 0.0.0.0 without a token' in done.stderr
    assert done.stderr.count('\n') == 1 and 'Traceback' not in done.stderr


def test_web_serves_until_sigterm(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, '-m', 'dbbasic_queue', 'web', '--port', str(port),
                               '--read-only'], cwd=tmp_path, env=python_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while True:
            try:
                status, _, page = Client(port).get('/')
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert status == 200 and '(read-only)' in page
    assert server.returncode == 0, err
    assert f'on http://127.0.0.1:{port}/ (read-only)' in err and 'Traceback' not in err


def test_the_overview_counts_each_file_once(tmp_path, monkeypatch):
    # Its counts and its charts come from the same Tallies: a first render reads the hot
    # file once, not once for stats and once for the charts (bytes read by the process;
    # the searches for claims map the file, and are not counted).
    from dbbasic_queue import storage
    monkeypatch.setattr(storage, 'MAP_MIN_BYTES', 0)
    queue = Queue(tmp_path / 'queue.tsv')
    queue.enqueue_many({'type': 't', 'payload': {'n': n, 'to': 'x' * 100},
                        'run_at': 2_000_000_000} for n in range(8000))
    environ = {'PATH_INFO': '/'}
    setup_testing_defaults(environ)
    before = bytes_read_by_this_process()
    body = b''.join(application(queue)(environ, lambda status, headers: None))
    read = bytes_read_by_this_process() - before
    assert b'8,000' in body
    assert read < 1.5 * queue.path.stat().st_size


def bytes_read_by_this_process():
    with open('/proc/self/io') as io:
        return int(next(line for line in io if line.startswith('rchar:')).split()[1])


def test_the_files_fast_lists_and_counts_agree_with_the_exact_way(queue_path, clock):
    """find_jobs and history on the file read lines by pattern (and stats by tally); the
    generic Backend code reads every Job. Both must give the same pages and counts."""
    from dbbasic_queue.backend import Backend
    queue = Queue(queue_path, clock=clock, backoff_base_seconds=0)
    for n in range(120):
        queue.enqueue(('a', 'b', 'Cc')[n % 3], {'n': n, 'say': 'Hello "World"' if n % 7 else 'x'})
        clock.advance(7)
    queue.process_jobs({'a': lambda p: 1 / (p['n'] % 2), 'b': print}, max_attempts=1,
                       max_jobs=60)
    queue.cancel_job(queue.find_jobs('pending', 'Cc')[1][0]['id'])
    backend = queue.backend
    assert backend.inspection.tallies()[0] is not None      # the fast way is taken
    for status in (None, 'pending', 'failed', 'completed', 'cancelled'):
        for job_type in (None, 'a', 'Cc'):   # a capital: text is matched on the lines as they are
            for text in (None, 'hello "world"', 'ZERO', '"n": 1'):
                for offset, limit in ((0, 50), (10, 7), (200, 5)):
                    fast = backend.page_jobs(status, job_type, text, offset, limit)
                    exact = Backend.page_jobs(backend, status, job_type, text, offset, limit)
                    assert fast[0] == exact[0], (status, job_type, text)
                    assert [j.id for j in fast[1]] == [j.id for j in exact[1]], (status, job_type, text)
    assert backend.minute_counts() == Backend.minute_counts(backend)


def test_the_overview_names_the_running_job_its_worker_and_the_oldest_pending_age(queue_path):
    queue = Queue(queue_path)
    waiting = queue.enqueue('later', {}, delay=3600)
    running = queue.enqueue('export', {'table': 'orders'})
    started, release = threading.Event(), threading.Event()

    def export(payload):
        started.set()
        release.wait(SUBPROCESS_TIMEOUT_SECONDS)

    worker = threading.Thread(target=queue.process_jobs, args=({'export': export},))
    worker.start()
    try:
        assert started.wait(SUBPROCESS_TIMEOUT_SECONDS)
        with serving(queue) as client:
            _, _, page = client.get('/')
    finally:
        release.set()
        worker.join(SUBPROCESS_TIMEOUT_SECONDS)
    workers = page[page.index('Workers holding jobs'):page.index('History')]
    assert running in workers and '>export<' in workers and queue.claims() == []
    assert 'Oldest pending: ' in page and 'Next due: ' in page and '(in 60.0m)' in page
    assert waiting not in workers


def test_history_counts_finished_jobs_per_minute_and_hour_and_the_depth(queue_path, clock):
    queue = Queue(queue_path, clock=clock, backoff_base_seconds=0)
    clock.now = 1_800_000_000.0 - 1_800_000_000.0 % 3600     # on the hour
    for minute in range(3):                                    # 2 a minute; one of them fails
        queue.enqueue('t', {'fail': False})
        queue.enqueue('t', {'fail': True})
        queue.process_jobs({'t': lambda p: 1 / (not p['fail'])}, max_attempts=1)
        clock.advance(60)
    queue.enqueue('t', {'fail': False})                        # still pending: depth 1
    history = queue.history()
    minutes = history['minutes']
    assert len(minutes) == 60 and len(history['hours']) == 24
    assert [(b['completed'], b['failed']) for b in minutes[-4:]] == [(1, 1)] * 3 + [(0, 0)]
    assert minutes[-1]['start'] == clock.now - clock.now % 60
    assert [b['depth'] for b in minutes[-5:]] == [0, 0, 0, 0, 1]
    assert (history['hours'][-1]['completed'], history['hours'][-1]['failed']) == (3, 3)
