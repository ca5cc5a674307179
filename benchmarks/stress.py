"""Kill -9 storm: producers and looping workers are killed at random while they run, then
the queue is drained and checked. Prints one table; exits 1 if any check fails.

    python benchmarks/stress.py [--seconds 60] [--producers 3] [--workers 3]

Checks: no job whose id enqueue returned is lost; no two executions of one job overlap
(an execution ends when its handler logs its end, or when the kill of its worker is
reaped); no job has more attempts than executions; `check` finds nothing, with no
cleanup by hand. Every child is started and killed by pid here, and nothing else.

An execution is a start logged by the handler, or the job a killed worker's journal
names (read while the worker is a zombie, before anyone can recover it): a kill can land
between the journal's "starting" and the handler's first line.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dbbasic_queue import Queue, liveness  # noqa: E402
from dbbasic_queue.journal import WorkerJournal  # noqa: E402

MAX_ATTEMPTS = 10          # a job is charged only when its own worker is killed under it
KILL_EVERY_SECONDS = (0.02, 0.4)
JOBS_PER_PRODUCER_RUN = 100_000
ENQUEUE_PAUSE_SECONDS = 0.002   # producers a little slower than the workers, so it drains

PRODUCER = '''
import sys, time
from dbbasic_queue import Queue
queue, log = Queue(sys.argv[1]), open(sys.argv[2], 'a', buffering=1)
for n in range(int(sys.argv[3]), int(sys.argv[3]) + %d):
    job_id = queue.enqueue('t', {'key': f'{sys.argv[3]}-{n}'}, max_attempts=%d)
    log.write(f'{job_id} {sys.argv[3]}-{n}\\n')   # after enqueue returned: a promise
    time.sleep(%g)
''' % (JOBS_PER_PRODUCER_RUN, MAX_ATTEMPTS, ENQUEUE_PAUSE_SECONDS)

WORKER = '''
import os, random, sys, time
from dbbasic_queue import Queue
queue, log = Queue(sys.argv[1]), os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND)

def t(payload):
    os.write(log, f'start {payload["key"]} {os.getpid()} {time.time()}\\n'.encode())
    time.sleep(random.random() * 0.004)
    os.write(log, f'end {payload["key"]} {os.getpid()} {time.time()}\\n'.encode())

while True:
    if not queue.process_jobs({'t': t}, max_attempts=%d)['completed']:
        time.sleep(0.01)
''' % MAX_ATTEMPTS


class Storm:
    def __init__(self, workdir, producers, workers):
        self.queue_path = workdir / 'data' / 'queue.tsv'
        self.enqueued_log = workdir / 'enqueued.log'
        self.exec_log = workdir / 'exec.log'
        self.exec_log.touch()
        self.env = {**os.environ, 'PYTHONPATH': str(REPO)}
        self.children = {}   # pid -> (Popen, role)
        self.reaped_at = {}  # pid -> when its death was reaped
        self.starting = []   # (pid, job id its journal named at death, when it was killed)
        self.kills = 0
        self.next_base = 0
        for _ in range(producers):
            self.start('producer')
        for _ in range(workers):
            self.start('worker')

    def start(self, role):
        if role == 'producer':
            args = [PRODUCER, self.queue_path, self.enqueued_log, self.next_base]
            self.next_base += JOBS_PER_PRODUCER_RUN
        else:
            args = [WORKER, self.queue_path, self.exec_log]
        proc = subprocess.Popen([sys.executable, '-c', *map(str, args)], env=self.env,
                                stderr=subprocess.DEVNULL)
        self.children[proc.pid] = (proc, role)

    def kill_one(self):
        role = self.kill(random.choice(list(self.children)))
        self.kills += 1
        self.start(role)

    def stop(self):
        for pid in list(self.children):
            self.kill(pid)

    def kill(self, pid):
        proc, role = self.children.pop(pid)
        worker = f'{liveness.HOST}:{pid}:{liveness.start_marker(pid)}'
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        if role == 'worker':
            wait_for_zombie(pid)
            running = WorkerJournal.running_job(self.queue_path, worker)
            if running:
                self.starting.append((pid, running, killed))
        proc.wait(timeout=60)
        self.reaped_at[pid] = time.time()
        return role


def wait_for_zombie(pid, timeout=60):
    """Until the killed pid is a zombie: dead, not reaped, so still 'alive' to liveness."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            if f.read().rsplit(b')', 1)[1].split()[0] == b'Z':
                return
        time.sleep(0.0005)


def drain(queue_path, exec_log):
    code = f'''
import os, sys, time
from dbbasic_queue import Queue
log = os.open({str(exec_log)!r}, os.O_WRONLY | os.O_APPEND)
def t(payload):
    os.write(log, f'start {{payload["key"]}} {{os.getpid()}} {{time.time()}}\\n'.encode())
    os.write(log, f'end {{payload["key"]}} {{os.getpid()}} {{time.time()}}\\n'.encode())
queue = Queue({str(queue_path)!r})
while queue.process_jobs({{'t': t}}, max_attempts={MAX_ATTEMPTS})['completed']:
    pass
'''
    subprocess.run([sys.executable, '-c', code], env={**os.environ, 'PYTHONPATH': str(REPO)},
                   check=True, timeout=600)


def executions(exec_log, reaped_at, starting=(), keys=None):
    """key -> [(start, end)] per execution; a killed execution ends when its kill was reaped.
    starting: (pid, job id, kill time) of jobs killed workers' journals named; keys: job
    id -> key."""
    open_runs, runs = {}, {}
    logged = set()
    for line in exec_log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue   # a worker killed mid-write leaves at most a cut line
        event, key, pid, when = parts[0], parts[1], int(parts[2]), float(parts[3])
        if event == 'start':
            open_runs[(key, pid)] = when
            logged.add((key, pid))
        elif (key, pid) in open_runs:
            runs.setdefault(key, []).append((open_runs.pop((key, pid)), when))
    for (key, pid), started in open_runs.items():
        runs.setdefault(key, []).append((started, reaped_at.get(pid, float('inf'))))
    for pid, job_id, killed in starting:
        key = (keys or {}).get(job_id)
        if key is not None and (key, pid) not in logged:   # killed before its first line
            runs.setdefault(key, []).append((killed, reaped_at[pid]))
    return runs


def overlapping(runs):
    count = 0
    for intervals in runs.values():
        intervals.sort()
        count += sum(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:]))
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=float, default=60)
    parser.add_argument('--producers', type=int, default=3)
    parser.add_argument('--workers', type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix='dbbasic-queue-stress-'))
    storm = Storm(workdir, args.producers, args.workers)
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            time.sleep(random.uniform(*KILL_EVERY_SECONDS))
            storm.kill_one()
    finally:
        storm.stop()
    drain(storm.queue_path, storm.exec_log)

    queue = Queue(storm.queue_path)
    jobs = {job['id']: job for job in queue.list_jobs()}
    promised = dict(line.split() for line in storm.enqueued_log.read_text().splitlines()
                    if len(line.split()) == 2)
    runs = executions(storm.exec_log, storm.reaped_at, storm.starting, promised)
    lost = [i for i in promised if jobs.get(i, {}).get('status') != 'completed']
    over_charged = [i for i, key in promised.items()
                    if i in jobs and jobs[i]['attempts'] > len(runs.get(key, []))]
    problems = queue.check()
    # The summary is a cache each run leaves on purpose; anything else hidden is left over.
    leftovers = [p for p in (workdir / 'data').glob('.*') if not p.name.endswith('.summary')]
    rows = [('seconds of kill -9', f'{args.seconds:g}', ''),
            ('processes killed', storm.kills, ''),
            ('jobs enqueued (id returned)', len(promised), ''),
            ('executions', sum(len(r) for r in runs.values()), ''),
            ('kills of a worker running a job', len(storm.starting), ''),
            ('lost', len(lost), 'must be 0'),
            ('overlapping executions', overlapping(runs), 'must be 0'),
            ('jobs with more attempts than executions', len(over_charged), 'must be 0'),
            ('problems found by check', len(problems), 'must be 0'),
            ('temp files and journals left', len(leftovers), 'must be 0')]
    print(f'dbbasic-queue kill -9 storm: {args.producers} producers, {args.workers} workers')
    print('| figure | value | |\n| --- | --- | --- |')
    for figure, value, note in rows:
        print(f'| {figure} | {value} | {note} |')
    for problem in (problems + [str(p) for p in leftovers] + lost[:5])[:10]:
        print('  ', problem)
    failed = any(row[1] for row in rows[5:]) or not promised
    if not failed:
        subprocess.run(['rm', '-rf', str(workdir)], check=False)
    else:
        print(f'kept for inspection: {workdir}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
