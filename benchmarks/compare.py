"""Compare this checkout with another one, figure by figure, measuring them alternately.

    git worktree add /tmp/before <commit>
    python benchmarks/compare.py [--runs N] /tmp/before [enqueue idle drain1000 drain10000 drain100000 cancel fresh workers8 drain1000000 rss1000000 stats1000000 render100000]

Separate full runs of bench.py drift on a shared machine; here each figure is measured
in a fresh process for one checkout, then the other, RUNS (or N) times, and the medians are
compared (ratio = this checkout / the other). It uses bench.py's own measurements: for
an older checkout whose bench.py lacks one (workersN: jobs/s of N workers draining 20,000
while 2 producers enqueue; pollersN: of 1 worker while N processes poll for a type with
no jobs), copy this bench.py into it. drain1000000: us a job of a fresh worker process
draining 20,000 of a million, after one that counted the file (rss1000000: its peak RSS
growth, MiB); stats1000000: seconds of a fresh Queue's stats of
a million future jobs, after one that read the file whole; render100000: ms of a fresh
dashboard application's first overview of 100,000 queued and 100,000 finished jobs.
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
RUNS = 3
FIGURES = ('enqueue', 'idle', 'drain1000', 'drain10000', 'drain100000', 'cancel', 'fresh')

MEASURE = r'''
import json, sys, tempfile, time
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + '/benchmarks']
import bench
workdir, figure = Path(tempfile.mkdtemp()), sys.argv[2]
queue = bench.new_queue(workdir)
if figure in ('drain1000000', 'rss1000000'):
    queue.enqueue_many(('send_email', bench.EMAIL) for _ in range(1_000_000))
    bench.drain_in_process(queue, bench.MILLION_DRAINED)   # counts the file, leaves a summary
    peak, imported, us = bench.drain_in_process(queue, bench.MILLION_DRAINED)
    value = us if figure == 'drain1000000' else peak - imported
elif figure == 'stats1000000':
    later = time.time() + 86400
    queue.enqueue_many({'type': 'send_email', 'payload': bench.EMAIL, 'run_at': later}
                       for _ in range(1_000_000))
    queue.stats()   # the file read whole, once: the summary the next one starts from
    started = time.perf_counter()
    bench.Queue(queue.path).stats()
    value = time.perf_counter() - started
elif figure == 'render100000':
    from dbbasic_queue.web import application
    bench.fill_archive(queue, 100_000)
    queue.enqueue_many([('send_email', {**bench.EMAIL, 'n': n}) for n in range(100_000)])
    value = bench.render_ms(application(bench.Queue(queue.path)), '/')[0]
elif figure.startswith('drain'):
    bench.fill(queue, int(figure[5:]))
    value = bench.drain_overhead_us(queue, int(figure[5:]))
elif figure in ('idle', 'fresh'):
    bench.fill(queue, 10_000, run_at=time.time() + 86400)
    value = bench.idle_poll_us(queue) if figure == 'idle' else bench.fresh_poll_ms(queue)[0]
elif figure == 'enqueue':
    value = bench.enqueue_us(queue)
elif figure == 'cancel':
    value = bench.lookup_ms(queue, 100_000)[1]
elif figure.startswith('pollers'):
    value = bench.with_idle_pollers_jobs_per_second(workdir, int(figure[7:]))
elif figure.startswith('workers'):
    value = bench.workers_draining_jobs_per_second(workdir, int(figure[7:]), 20_000)
print(json.dumps(value))
'''


def measure(checkout, figure):
    out = subprocess.run([sys.executable, '-c', MEASURE, str(checkout), figure],
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    runs = RUNS
    if argv[0] == '--runs':
        runs, argv = int(argv[1]), argv[2:]
    other, figures = Path(argv[0]).resolve(), argv[1:] or FIGURES
    print(f'| figure | {other} | this checkout | ratio |\n| --- | --- | --- | --- |')
    for figure in figures:
        before, after = [], []
        for _ in range(runs):
            before.append(measure(other, figure))
            after.append(measure(HERE, figure))
        b, a = statistics.median(before), statistics.median(after)
        print(f'| {figure} | {b:.2f} | {a:.2f} | {a / b:.2f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
