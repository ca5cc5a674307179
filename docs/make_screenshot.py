"""Makes docs/dashboard.png, the README's screenshot: a day of a demo queue, served by
the dashboard and shot by headless Chromium (apt-get install chromium chromium-driver;
pip install selenium).

    python docs/make_screenshot.py [docs/dashboard.png]
"""

import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from dbbasic_queue import Queue
from dbbasic_queue.web import make_dashboard_server

TYPES = {'send_email': 0.03, 'build_report': 0.15, 'resize_image': 0.01}   # type: failure rate


def demo_queue(path):
    """A day of jobs, enqueued and worked every 5 minutes on an injected clock."""
    rng = random.Random(14)
    now = [time.time() - 86400]
    queue = Queue(path, clock=lambda: now[0], backoff_base_seconds=0)

    def handler(job_type):
        def run(payload):
            if rng.random() < TYPES[job_type]:
                raise ConnectionError(f'{job_type}: upstream did not answer')
            return {'ok': True}
        return run

    handlers = {job_type: handler(job_type) for job_type in TYPES}
    while now[0] < time.time() - 300:
        busy = 1 + 3 * (9 <= time.localtime(now[0]).tm_hour <= 18)
        queue.enqueue_many((job_type, {'user': rng.randrange(10_000)})
                           for job_type in TYPES for _ in range(rng.randrange(5 * busy)))
        queue.process_jobs(handlers, max_attempts=2)
        now[0] += 300
    for n in range(40):
        queue.enqueue('send_email', {'to': f'user{n}@example.com'})
    queue.pause('resize_image')
    queue.enqueue('resize_image', {'image': 'cat.png'})
    return Queue(path)


def main(target):
    with tempfile.TemporaryDirectory() as directory:
        queue = demo_queue(Path(directory) / 'queue.tsv')
        slow = threading.Event()
        queue.enqueue('build_report', {'month': '2026-11'})
        worker = threading.Thread(target=queue.process_jobs, args=(
            {'build_report': lambda payload: slow.wait(30)},), kwargs={'max_jobs': 1})
        worker.start()
        server = make_dashboard_server(queue, '127.0.0.1', 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        options = webdriver.ChromeOptions()
        options.binary_location = '/usr/bin/chromium'
        for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
                     '--disable-background-networking', '--window-size=1280,1050',
                     f'--user-data-dir={directory}/profile'):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service('/usr/bin/chromedriver'), options=options)
        try:
            time.sleep(2)        # the report has been running a little while
            driver.get(f'http://127.0.0.1:{server.server_address[1]}/')
            driver.save_screenshot(target)
        finally:
            driver.quit()
            slow.set()
            worker.join()
            server.shutdown()
    print(f'wrote {target}')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name('dashboard.png')))
