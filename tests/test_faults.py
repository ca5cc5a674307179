"""Faults, round 3: nothing a handler, a cache file or a client does may stop the queue,
fake a completion or stall a worker. Each test reproduces one finding."""

import asyncio
import concurrent.futures
import datetime

import pytest

from dbbasic_queue import Queue

ZERO = {'completed': 0, 'retried': 0, 'failed': 0, 'recovered': 0}


class StrFails(Exception):
    def __str__(self):
        raise ValueError('str fails')


class ReprFails:
    def __repr__(self):
        raise ValueError('repr fails')


def raises_odd_exception(payload):
    raise StrFails('the message')


def test_an_exception_whose_str_raises_fails_its_attempt_and_the_queue_goes_on(backend):
    queue = Queue(backend)
    poisoned = queue.enqueue('odd', {}, priority=5, max_attempts=1)
    innocent = queue.enqueue('ok', {})
    counts = queue.process_jobs({'odd': raises_odd_exception, 'ok': lambda p: 'fine'})
    assert counts == {**ZERO, 'completed': 1, 'failed': 1}
    job = queue.get_job(poisoned)
    assert job['status'] == 'failed' and job['attempts'] == 1
    assert job['error'].startswith('StrFails')
    assert queue.get_job(innocent)['status'] == 'completed'


def test_a_result_whose_repr_raises_is_stored_as_a_placeholder(backend):
    queue = Queue(backend)
    job_id = queue.enqueue('odd', {})
    assert queue.process_jobs({'odd': lambda p: ReprFails()}) == {**ZERO, 'completed': 1}
    job = queue.get_job(job_id)
    assert job['status'] == 'completed' and 'ReprFails' in job['result']


def a_generator(payload):
    yield payload


async def a_coroutine(payload):
    return payload


class Awaitable:
    def __await__(self):
        yield


def a_future(payload):
    return concurrent.futures.Future()


@pytest.mark.parametrize('handler, word', [
    (a_generator, 'generator'),
    (a_coroutine, 'coroutine'),
    (lambda p: Awaitable(), 'awaitable'),
    (a_future, 'Future'),
])
def test_a_handler_that_returns_work_not_done_fails_its_attempt(backend, handler, word):
    queue = Queue(backend)
    job_id = queue.enqueue('lazy', {'n': 1}, max_attempts=1)
    assert queue.process_jobs({'lazy': handler}) == {**ZERO, 'failed': 1}
    job = queue.get_job(job_id)
    assert job['status'] == 'failed'
    assert 'handler returned a' in job['error'] and word in job['error']


def test_results_that_are_not_json_are_stored_as_their_repr(backend):
    queue = Queue(backend)
    job_id = queue.enqueue('t', {})
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5)
    queue.process_jobs({'t': lambda p: {'at': moment}})
    assert queue.get_job(job_id)['result'] == repr({'at': moment})
