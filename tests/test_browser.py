"""The dashboard in a real browser (issue 14): headless Debian Chromium driven by
Selenium through chromium-driver, against the dashboard served on 127.0.0.1.

Skipped where Chromium is not installed (`apt-get install chromium chromium-driver`), unless
DBBASIC_QUEUE_REQUIRE_BROWSER is set, as .ci/run sets it: there a missing browser fails."""

import os
import shutil
import tempfile

import pytest

from dbbasic_queue import Queue
from tests.test_web import XSS, prepared_queue, serving

CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
PAGE_LOAD_SECONDS = 30


@pytest.fixture(scope='module')
def browser():
    missing = None
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        missing = f'needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver'
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing = missing or "needs selenium: pip install -e '.[dev]'"
    if missing:
        if os.environ.get('DBBASIC_QUEUE_REQUIRE_BROWSER'):
            pytest.fail(missing)
        pytest.skip(missing)
    profile = tempfile.mkdtemp(prefix='dbbasic-queue-chromium-')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root in a container, without the network: no sandbox, no background traffic.
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic',
                 '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--window-size=1280,1000',
                 f'--user-data-dir={profile}'):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(browser, client, path):
    browser.delete_all_cookies()
    browser.get(f'http://127.0.0.1:{client.port}{path}')
    return browser


def by_id(browser, element_id):
    from selenium.webdriver.common.by import By
    return browser.find_element(By.ID, element_id)


def after_click(browser, element_id):
    """The element with this id on the page a click leads to (once it has loaded)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(browser, PAGE_LOAD_SECONDS).until(
        expected_conditions.presence_of_element_located((By.ID, element_id)))


def button(browser, label):
    from selenium.webdriver.common.by import By
    return browser.find_element(By.XPATH, f'//button[text()="{label}"]')


def no_alert(browser):
    from selenium.common.exceptions import NoAlertPresentException
    try:
        browser.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


@pytest.mark.slow
def test_the_overview_shows_the_counts_of_a_prepared_queue(browser, queue_path):
    queue, _ = prepared_queue(queue_path)
    with serving(queue) as client:
        open_page(browser, client, '/')
        counts = {status: by_id(browser, f'count-{status}').text
                  for status in ('pending', 'processing', 'completed', 'failed', 'cancelled')}
        charts = browser.execute_script('return document.querySelectorAll("svg").length')
    assert counts == {'pending': '2', 'processing': '0', 'completed': '3', 'failed': '1',
                      'cancelled': '0'}
    assert browser.title == 'Overview - dbbasic-queue' and charts == 4


@pytest.mark.slow
def test_clicking_retry_on_a_failed_job_makes_it_pending(browser, queue_path):
    queue, ids = prepared_queue(queue_path)
    with serving(queue) as client:
        open_page(browser, client, f'/jobs/{ids["failed"]}')
        button(browser, 'retry').click()
        flash = after_click(browser, 'flash').text
    assert flash == 'Retried 1 job(s): they are pending again.'
    assert queue.get_job(ids['failed'])['status'] == 'pending'      # through the library


@pytest.mark.slow
def test_xss_payloads_show_as_text_and_run_no_script(browser, queue_path):
    queue = Queue(queue_path)
    ids = [queue.enqueue('<b>hi</b>', {'text': text}) for text in XSS]
    with serving(queue) as client:
        for path in ['/', '/jobs', f'/jobs/{ids[0]}', f'/jobs/{ids[1]}']:
            open_page(browser, client, path)
            assert no_alert(browser), path
            elements = browser.execute_script(
                'return [document.scripts.length, document.images.length, '
                '[...document.querySelectorAll("b")].filter(b => b.textContent === "hi").length]')
            assert elements == [0, 0, 0], path           # no script, no img, no <b> from data
        shown = [by_id(open_page(browser, client, f'/jobs/{i}'), 'payload').text for i in ids]
    assert XSS[0] in shown[0] and XSS[1].replace('"', '\\"') in shown[1]


def test_an_action_without_its_csrf_token_is_refused(browser, queue_path):
    queue, ids = prepared_queue(queue_path)
    with serving(queue) as client:
        open_page(browser, client, f'/jobs/{ids["failed"]}')
        # What a forged form lacks: the page's token (removed here by the test's driver).
        browser.execute_script('document.querySelectorAll("input[name=csrf]")'
                               '.forEach(input => input.remove())')
        button(browser, 'retry').click()
        message = after_click(browser, 'message').text
        title = browser.title
    assert title.startswith('403') and 'CSRF token' in message
    assert queue.get_job(ids['failed'])['status'] == 'failed'
