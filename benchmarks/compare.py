"""Compare this checkout with another one, figure by figure, measuring them alternately.

    git worktree add /tmp/before <commit>
    python benchmarks/compare.py /tmp/before [enqueue idle drain1000 drain10000 drain100000 cancel fresh workers8]

Separate full runs of bench.py drift on a shared machine; here each figure is measured
in a fresh process for one checkout, then the other, RUNS times, and the medians are
compared (ratio = this checkout / the other). It uses bench.py's own measurements: for
an older checkout whose bench.py lacks one (workersN: jobs/s of N workers draining 20,000
while 2 producers enqueue; pollersN: of 1 worker while N processes poll for a type with
no jobs), copy this bench.py into it.
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
if figure.startswith('drain'):
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
    other, figures = Path(argv[0]).resolve(), argv[1:] or FIGURES
    print(f'| figure | {other} | this checkout | ratio |\n| --- | --- | --- | --- |')
    for figure in figures:
        before, after = [], []
        for _ in range(RUNS):
            before.append(measure(other, figure))
            after.append(measure(HERE, figure))
        b, a = statistics.median(before), statistics.median(after)
        print(f'| {figure} | {b:.2f} | {a:.2f} | {a / b:.2f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
