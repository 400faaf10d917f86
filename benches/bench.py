#!/usr/bin/python3
"""modpython benchmarks: real gmond runs, the direct driver, and the soak.

Run through benches/run, which builds what this needs and passes the paths.
Standard library only. Every figure is also reported as a ratio to the C
baseline module (benches/cbench.c) measured in the same run, interleaved
with the modpython variants, so the noise of a shared machine mostly cancels.
"""

import argparse
import importlib.util
import json
import os
import py_compile
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GMOND = os.environ.get('GMOND', '/usr/sbin/gmond')
VARIANTS = ('c', 'protected', 'inline')
LABEL = {'c': 'C baseline', 'protected': 'modpython protected (default)',
         'inline': 'modpython inline'}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------

def task_ns(pid, tid):
    """CPU time of one thread from its schedstat (first field, ns)."""
    try:
        with open('/proc/%d/task/%d/schedstat' % (pid, tid)) as f:
            return int(f.read().split()[0])
    except OSError:
        return 0


def cpu_ns(pid):
    """(main thread, all threads) CPU time in ns from schedstat."""
    main = task_ns(pid, pid)
    total = 0
    try:
        tids = [int(t) for t in os.listdir('/proc/%d/task' % pid)]
    except OSError:
        tids = []
    for tid in tids:
        total += task_ns(pid, tid)
    return main, total


def mem_kb(pid):
    out = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, rest = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                out[key] = int(rest.split()[0])
    return out.get('VmRSS', 0), out.get('VmHWM', 0)


def threads(pid):
    try:
        return len(os.listdir('/proc/%d/task' % pid))
    except OSError:
        return 0


# --------------------------------------------------------------------------
# gmond processes and configs
# --------------------------------------------------------------------------

def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


GLOBALS = """globals {
  daemonize = no
  setuid = no
  user = nobody
  debug_level = 0
  host_dmax = 0
  send_metadata_interval = 0
  %s
}
cluster { name = "bench" }
host { location = "bench" }
"""


def observer_conf(udp, tcp, a_udp):
    # Receives the node's packets (4 MiB = net.core.rmem_max here; more makes
    # gmond exit) and asks the node for metadata it missed. Collects nothing.
    return GLOBALS % 'mute = no\n  deaf = no' + (
        'udp_recv_channel { bind = 127.0.0.1 port = %d buffer = 4194304 }\n'
        'udp_send_channel { host = 127.0.0.1 port = %d }\n'
        'tcp_accept_channel { bind = 127.0.0.1 port = %d }\n' % (udp, a_udp, tcp))


def node_conf(paths, variant, n, dirs, udp, send_port, kind='uint', timethreshold=100000):
    """The gmond under test: N metrics bm_00000... in one group, every second."""
    c = GLOBALS % '' + (
        'udp_send_channel { host = 127.0.0.1 port = %d }\n'
        'udp_recv_channel { bind = 127.0.0.1 port = %d }\n' % (send_port, udp))
    c += 'modules {\n'
    c += ('  module {\n    name = "cbench_rounds_module"\n    path = "%s"\n'
          '    param file { value = "%s" }\n  }\n' % (paths['cbench'], dirs['rounds']))
    if variant == 'c':
        c += ('  module {\n    name = "cbench_module"\n    path = "%s"\n'
              '    param count { value = "%d" }\n  }\n' % (paths['cbench'], n))
    else:
        c += ('  module {\n    name = "python_module"\n    path = "%s"\n    params = "%s"\n'
              '    param self_metrics { value = "no" }\n  }\n' % (paths['so'], dirs['modules']))
        c += ('  module {\n    name = "pybench"\n    language = "python"\n'
              '    param count { value = "%d" }\n    param kind { value = "%s" }\n' % (n, kind))
        if variant == 'inline':
            c += '    param "modpython.call_mode" { value = "inline" }\n'
        c += '  }\n'
    c += '}\n'
    c += ('collection_group {\n  collect_every = 1\n  time_threshold = %d\n'
          '  metric { name_match = "^bm_" }\n  metric { name = "bench_rounds" }\n}\n'
          % timethreshold)
    return c


class Proc:
    def __init__(self, conf_text, workdir, name, prefix=()):
        self.conf = os.path.join(workdir, name + '.conf')
        self.logpath = os.path.join(workdir, name + '.log')
        with open(self.conf, 'w') as f:
            f.write(conf_text)
        self.logf = open(self.logpath, 'wb')
        env = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C.UTF-8', 'TMPDIR': workdir}
        self.started = time.monotonic()
        self.p = subprocess.Popen(list(prefix) + [GMOND, '-f', '-c', self.conf], cwd=workdir,
                                  env=env,
                                  stdin=subprocess.DEVNULL, stdout=self.logf,
                                  stderr=subprocess.STDOUT)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def log(self):
        self.logf.flush()
        with open(self.logpath, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()


def fetch_xml(port, timeout=5.0):
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
        chunks = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
    return b''.join(chunks)


def wait_tcp(port, proc, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.alive():
            return False
        try:
            fetch_xml(port, 1.0)
            return True
        except OSError:
            time.sleep(0.02)
    return False


def read_counter(fd):
    return int.from_bytes(os.pread(fd, 8, 0), 'little')


def read_counter_safe(fd):
    data = os.pread(fd, 8, 0)
    return int.from_bytes(data, 'little') if len(data) == 8 else 0


OBSERVER_PREFIX = ('chrt', '-f', '20') if shutil.which('chrt') and os.geteuid() == 0 else ()

# The observer counts as busy in a 2 ms sample if its main thread used more
# than BUSY_NS of CPU in it; idle for QUIET seconds means all is received.
BUSY_NS = 200_000
QUIET = 0.1


def next_round(fd, timeout=5.0):
    """Waits for the rounds counter to move (the round's collections just
    ended: bench_rounds is the group's last metric); returns its value."""
    start = read_counter(fd)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = read_counter(fd)
        if v != start:
            return v
        time.sleep(0.001)
    raise RuntimeError('gmond stopped collecting (rounds counter stuck at %d)' % start)


# --------------------------------------------------------------------------
# One real-gmond measurement
# --------------------------------------------------------------------------

def gmond_run(paths, variant, n, window, warmup):
    work = tempfile.mkdtemp(prefix='modpython-bench-')
    dirs = {'modules': os.path.join(work, 'modules'), 'rounds': os.path.join(work, 'rounds')}
    os.mkdir(dirs['modules'], 0o755)
    shutil.copy(os.path.join(HERE, 'pybench.py'), dirs['modules'])
    os.chmod(os.path.join(dirs['modules'], 'pybench.py'), 0o644)
    # Compiled beforehand, as on every start of a site's gmond but the first
    # (gmond imports modules as root and Python writes __pycache__ then).
    source = os.path.join(dirs['modules'], 'pybench.py')
    py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
    b = a = None
    try:
        for attempt in range(4):
            b_udp, b_tcp, a_udp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), \
                free_port(socket.SOCK_DGRAM)
            # The observer is measuring apparatus: real-time priority, so that
            # on a busy 2-vCPU machine it keeps up with the node's burst of
            # 2 x N packets (gmond drops nothing it has read; a lost
            # metadata packet is only re-sent after time_threshold).
            b = Proc(observer_conf(b_udp, b_tcp, a_udp), work, 'observer', OBSERVER_PREFIX)
            if wait_tcp(b_tcp, b):
                break
            b.stop()
            b = None
        if b is None:
            raise RuntimeError('the observing gmond did not start')
        a = Proc(node_conf(paths, variant, n, dirs, a_udp, b_udp), work, 'node')
        # Time until all N metrics are in the observer's XML. Polling the XML
        # cannot measure it: one fetch of 10,000 metrics keeps the observer
        # busy ~0.2 s and makes it drop packets. Instead: wait for the node's
        # first collection round to end (the rounds counter), then watch the
        # observer's main thread (it receives the UDP) until it has been idle
        # for QUIET s; the last moment it was busy is when the last metric
        # went in. Then one XML fetch checks that all N are there.
        pattern = b'<METRIC NAME="bm_'
        fd = os.open(dirs['rounds'], os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            deadline = a.started + 120
            while read_counter_safe(fd) < 1:
                if not a.alive():
                    raise RuntimeError('gmond exited:\n' + a.log())
                if time.monotonic() > deadline:
                    raise RuntimeError('no collection round within 120 s:\n' + a.log())
                time.sleep(0.001)
            first_round = time.monotonic() - a.started
            last_busy = time.monotonic()
            prev = task_ns(b.pid, b.pid)
            while time.monotonic() - last_busy < QUIET:
                time.sleep(0.002)
                cur = task_ns(b.pid, b.pid)
                now = time.monotonic()
                if cur - prev > BUSY_NS:
                    last_busy = now
                prev = cur
            visible = last_busy - a.started
            seen = fetch_xml(b_tcp).count(pattern)
            lost = n - seen
            if lost > 0:
                # Packets were lost on the way; with time_threshold this
                # large they are not sent again during the run.
                visible = None
        finally:
            os.close(fd)
        time.sleep(warmup)
        fd = os.open(dirs['rounds'], os.O_RDONLY)
        try:
            r0 = next_round(fd)
            t0 = time.monotonic()
            m0, all0 = cpu_ns(a.pid)
            time.sleep(window)
            r1 = next_round(fd)
            t1 = time.monotonic()
            m1, all1 = cpu_ns(a.pid)
        finally:
            os.close(fd)
        rss, hwm = mem_kb(a.pid)
        nthreads = threads(a.pid)
        rounds = r1 - r0
        calls = n * rounds
        after = fetch_xml(b_tcp).count(pattern) + lost
        text = a.log()
        suspicious = [ln for ln in text.splitlines() if re.search(r'error|fail|warn', ln, re.I)]
        if after < n:
            raise RuntimeError('metrics vanished from the XML (%d of %d)' % (after, n))
        return {
            'variant': variant, 'n': n, 'visible_s': visible, 'first_round_s': first_round,
            'lost_first_time': lost, 'rounds': rounds,
            'window_s': t1 - t0, 'calls': calls,
            'main_ns_per_1k': (m1 - m0) * 1000.0 / calls,
            'all_ns_per_1k': (all1 - all0) * 1000.0 / calls,
            'rss_kb': rss, 'hwm_kb': hwm, 'threads': nthreads,
            'log_problems': suspicious[:5],
        }
    finally:
        if a:
            a.stop()
        if b:
            b.stop()
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------
# Direct driver
# --------------------------------------------------------------------------

DRIVER_LINE = re.compile(r'^(\S+)\s+([\d.]+) ns/call\s+([\d.]+) cpu-ns/call')


def driver_run(paths, variant, iterations):
    work = tempfile.mkdtemp(prefix='modpython-driver-')
    try:
        mods = os.path.join(work, 'modules')
        os.mkdir(mods, 0o755)
        shutil.copy(os.path.join(HERE, 'pybench.py'), mods)
        os.chmod(os.path.join(mods, 'pybench.py'), 0o644)
        if variant == 'c':
            conf = ('modules {\n  module {\n    name = "cbench_module"\n    path = "%s"\n'
                    '    param count { value = "1" }\n  }\n}\n' % paths['cbench'])
            so, symbol = paths['cbench'], 'cbench_module'
        else:
            conf = ('modules {\n  module {\n    name = "python_module"\n    path = "%s"\n'
                    '    params = "%s"\n    param self_metrics { value = "no" }\n'
                    '    param call_mode { value = "%s" }\n  }\n'
                    '  module {\n    name = "pybench"\n    language = "python"\n'
                    '    param kind { value = "driver" }\n  }\n}\n' % (paths['so'], mods, variant))
            so, symbol = paths['so'], 'python_module'
        cpath = os.path.join(work, 'driver.conf')
        with open(cpath, 'w') as f:
            f.write(GLOBALS % '' + conf)
        env = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C.UTF-8'}
        out = subprocess.run([paths['driver'], so, cpath, str(iterations), symbol],
                             capture_output=True, text=True, env=env, cwd=work, timeout=600)
        if out.returncode != 0:
            raise RuntimeError('driver failed:\n' + out.stdout + out.stderr)
        res = {}
        for line in out.stdout.splitlines():
            m = DRIVER_LINE.match(line)
            if m:
                name = m.group(1).replace('bm_', '')
                if variant == 'c':
                    name = 'trivial'
                res[name] = (float(m.group(2)), float(m.group(3)))
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


FLOOR_LINE = re.compile(r'^(\S+)\s+([\d.]+) ns/call')


def floor_run(paths, iterations):
    """The interpreter's own call cost, embedded from C (benches/pyfloor.c)."""
    env = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C.UTF-8'}
    out = subprocess.run([paths['pyfloor'], str(iterations)], capture_output=True, text=True,
                         env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError('pyfloor failed:\n' + out.stdout + out.stderr)
    pp = subprocess.run([paths['pingpong'], '2000000'], capture_output=True, text=True,
                        env=env, timeout=600)
    res = {}
    for line in (out.stdout + pp.stdout).splitlines():
        m = FLOOR_LINE.match(line)
        if m:
            res[m.group(1)] = float(m.group(2))
    return res


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def fmt_ratio(x):
    return '%.2fx' % x


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return '?'
    lscpu = sh("lscpu | grep -E '^(Model name|CPU\\(s\\)|Thread|Hypervisor vendor|L2|L3)'")
    return {
        'cpu': ' | '.join(re.sub(r'\s+', ' ', ln) for ln in lscpu.splitlines()),
        'kernel': sh('uname -r'),
        'gmond': sh(GMOND + ' --version'),
        'python': sh("dpkg-query -W -f='${Version}' libpython3.11 2>/dev/null"),
        'load': sh('cat /proc/loadavg'),
    }


def nan_if_none(x):
    return float('nan') if x is None else x


def median_ok(vals):
    ok = [v for v in vals if v == v]
    return statistics.median(ok) if ok else float('nan')


def min_ok(vals):
    ok = [v for v in vals if v == v]
    return min(ok) if ok else float('nan')


def summarize_gmond(results, sizes):
    lines = []
    lines.append('### Real gmond, one collection group every second, no sends in the window\n')
    lines.append('CPU = gmond CPU ns per 1,000 handler calls (schedstat), median of runs '
                 '(min in brackets); ratios are to the C baseline of the same run '
                 '(median ratio of the interleaved runs; min ratio = min/min). '
                 '"main" = gmond\'s main thread only, "all" = every thread.\n')
    lines.append('| N | variant | CPU all (ns/1k calls) | ratio all | CPU main | ratio main '
                 '| first round done (s) | all visible (s) | vs C (s) | RSS (MB) | vs C (MB) '
                 '| peak RSS (MB) | vs C (MB) | threads |')
    lines.append('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    table = {}
    for n in sizes:
        per = {v: [r for r in results if r['n'] == n and r['variant'] == v] for v in VARIANTS}
        if not per['c']:
            continue
        for v in VARIANTS:
            rs = per[v]
            if not rs:
                continue
            row = {}
            for key in ('all_ns_per_1k', 'main_ns_per_1k', 'first_round_s', 'visible_s', 'rss_kb',
                        'hwm_kb'):
                # A run whose packets were lost has no visible time: NaN.
                vals = [nan_if_none(r[key]) for r in rs]
                cvals = [nan_if_none(r[key]) for r in per['c']]
                row[key] = (median_ok(vals), min_ok(vals))
                if key.endswith('_1k'):
                    ratios = [x / c for x, c in zip(vals, cvals)]
                    row[key + '_ratio'] = (statistics.median(ratios), min(vals) / min(cvals))
                else:
                    diffs = [x - c for x, c in zip(vals, cvals)]
                    row[key + '_diff'] = median_ok(diffs)
            row['lost'] = sum(r['lost_first_time'] > 0 for r in rs)
            row['threads'] = rs[-1]['threads']
            table[(n, v)] = row
            lines.append('| %d | %s | %.0f (%.0f) | %s (%s) | %.0f (%.0f) | %s (%s) | %.3f | %.3f '
                         '| %+.3f | %.1f | %+.1f | %.1f | %+.1f | %d |' % (
                             n, LABEL[v],
                             row['all_ns_per_1k'][0], row['all_ns_per_1k'][1],
                             fmt_ratio(row['all_ns_per_1k_ratio'][0]),
                             fmt_ratio(row['all_ns_per_1k_ratio'][1]),
                             row['main_ns_per_1k'][0], row['main_ns_per_1k'][1],
                             fmt_ratio(row['main_ns_per_1k_ratio'][0]),
                             fmt_ratio(row['main_ns_per_1k_ratio'][1]),
                             row['first_round_s'][0],
                             row['visible_s'][0], row['visible_s_diff'],
                             row['rss_kb'][0] / 1024, row['rss_kb_diff'] / 1024,
                             row['hwm_kb'][0] / 1024, row['hwm_kb_diff'] / 1024,
                             row['threads']))
    return lines, table


def summarize_driver(results, floors):
    lines = ['### Direct driver (benches/driver.c: dlopen like gmond, handler(i) in a loop)\n',
             'ns per call, wall clock on the calling thread, median of runs (min in brackets); '
             'CPU = whole-process CPU per call (a spinning worker counts). Ratios to the C '
             'module\'s trivial handler through the same driver, same run.\n',
             '| handler | mode | ns/call | ratio | CPU ns/call | ratio CPU |',
             '|---|---|---|---|---|---|']
    table = {}
    c = [r['trivial'] for r in results['c']]
    c_wall = statistics.median(x[0] for x in c)
    c_cpu = statistics.median(x[1] for x in c)
    lines.append('| trivial (C module) | - | %.1f (%.1f) | 1.00x | %.1f | 1.00x |'
                 % (c_wall, min(x[0] for x in c), c_cpu))
    for h in ('trivial', 'string', 'numstr'):
        for mode in ('protected', 'inline'):
            rs = [r[h] for r in results[mode]]
            wall = statistics.median(x[0] for x in rs)
            cpu = statistics.median(x[1] for x in rs)
            ratios = [x[0] / cc[0] for x, cc in zip(rs, c)]
            table[(h, mode)] = (wall, statistics.median(ratios), cpu)
            lines.append('| %s | %s | %.1f (%.1f) | %s | %.1f | %s |' % (
                h, mode, wall, min(x[0] for x in rs), fmt_ratio(statistics.median(ratios)),
                cpu, fmt_ratio(cpu / c_cpu)))
    if floors:
        what = {'pingpong': 'no Python: hand-off to a spinning thread on the other CPU and back',
                'held': 'trivial, GIL held across calls',
                'gilstate': 'trivial, PyGILState_Ensure/Release per call',
                'string': 'string, GIL held across calls'}
        for key in ('held', 'gilstate', 'string', 'pingpong'):
            vals = [f[key] for f in floors if key in f]
            if not vals:
                continue
            ratios = [x / cc[0] for x, cc in zip(vals, c)]
            table[('floor', key)] = (statistics.median(vals), statistics.median(ratios))
            lines.append('| floor: %s (%s) | - | %.1f (%.1f) | %s | - | - |' % (
                'cross-CPU round trip' if key == 'pingpong' else 'bare CPython call from C',
                what[key], statistics.median(vals), min(vals),
                fmt_ratio(statistics.median(ratios))))
    return lines, table


def targets(gtable, dtable, sizes):
    out = ['### Targets (issue 6)\n', '| target | measured | met? |', '|---|---|---|']

    def row(name, measured, ok):
        out.append('| %s | %s | %s |' % (name, measured, 'yes' if ok else '**no**'))

    for n, lim_p in ((1500, 5.8), (10000, 7.5)):
        if n not in sizes:
            continue
        p = gtable[(n, 'protected')]['all_ns_per_1k_ratio'][0]
        i = gtable[(n, 'inline')]['all_ns_per_1k_ratio'][0]
        row('gmond CPU per call, N=%d, protected <= %.1fx' % (n, lim_p), fmt_ratio(p), p <= lim_p)
        row('gmond CPU per call, N=%d, inline <= 4x' % n, fmt_ratio(i), i <= 4.0)
    if dtable:
        w, r, _ = dtable[('trivial', 'inline')]
        row('direct trivial handler, inline <= 4x', '%s (%.0f ns)' % (fmt_ratio(r), w), r <= 4.0)
        if ('floor', 'held') in dtable:
            fw, fr = dtable[('floor', 'held')]
            out.append('| (physical floor: a bare CPython call from C) | %s (%.0f ns) | - |'
                       % (fmt_ratio(fr), fw))
        w, r, _ = dtable[('trivial', 'protected')]
        out.append('| direct trivial handler, protected (report) | %s (%.0f ns) | - |'
                   % (fmt_ratio(r), w))
    if 10000 in sizes:
        # The visible time carries the observer's noise (it takes 0.3-0.7 s
        # to take in 20,000 packets); the node's own delay shows in when its
        # first round is done, and no metric can be visible before that.
        for v in ('protected', 'inline'):
            d = gtable[(10000, v)]['visible_s_diff']
            f = gtable[(10000, v)]['first_round_s_diff']
            name = 'all 10,000 visible <= C + 0.15 s (%s)' % v
            measured = 'visible %+.3f s, first round done %+.3f s' % (d, f)
            if v == 'protected':
                row(name + '; judged by the larger', measured, max(d, f) <= 0.15)
            else:
                out.append('| %s (report) | %s | - |' % (name, measured))
    if 1500 in sizes:
        d = gtable[(1500, 'protected')]['rss_kb_diff'] / 1024
        row('RSS <= C + 10 MB at N=1500 (protected)', '%+.1f MB' % d, d <= 10)
    return out


def main_bench(args, paths):
    sizes = [int(s) for s in args.sizes.split(',')]
    info = machine()
    log('machine: %s' % json.dumps(info))
    results = []
    if not args.no_gmond:
        for n in sizes:
            for rep in range(args.runs):
                for v in VARIANTS:
                    # The observer, however prioritised, sometimes drops
                    # part of a 2 x 10,000-packet burst on this shared
                    # 2-vCPU machine (C runs as well as ours): then "all
                    # visible" cannot be timed, and the run is repeated.
                    for attempt in range(1, 5):
                        r = gmond_run(paths, v, n, args.window, args.warmup)
                        r['attempts'] = attempt
                        if r['lost_first_time'] == 0:
                            break
                        log('N=%d %s: the observer lost %d metrics of the first burst; again'
                            % (n, v, r['lost_first_time']))
                    results.append(r)
                    log('N=%-5d run %d %-9s  all %7.0f ns/1k  main %7.0f ns/1k  first round %.3f s  '
                        'visible %.3f s (lost %d)  rounds %d  RSS %.1f MB  HWM %.1f MB%s' % (
                            n, rep + 1, v, r['all_ns_per_1k'], r['main_ns_per_1k'],
                            r['first_round_s'], nan_if_none(r['visible_s']),
                            r['lost_first_time'], r['rounds'], r['rss_kb'] / 1024, r['hwm_kb'] / 1024,
                            ('  log: %s' % r['log_problems']) if r['log_problems'] else ''))
    dresults = {v: [] for v in VARIANTS}
    floors = []
    if not args.no_driver:
        for rep in range(args.runs):
            for v in VARIANTS:
                it = args.c_iterations if v == 'c' else args.iterations
                r = driver_run(paths, v, it)
                dresults[v].append(r)
                log('driver run %d %-9s %s' % (rep + 1, v, r))
            floors.append(floor_run(paths, args.iterations))
            log('pyfloor run %d %s' % (rep + 1, floors[-1]))
    info['load_after'] = machine()['load']
    lines = ['## Results %s\n' % time.strftime('%Y-%m-%d %H:%M'),
             'Machine: %s; kernel %s; %s; libpython3.11 %s; load before/after: %s / %s\n' % (
                 info['cpu'], info['kernel'], info['gmond'], info['python'], info['load'],
                 info['load_after']),
             'Settings: runs=%d, window=%gs, warm-up=%gs after all metrics are visible, '
             'driver %d iterations (C %d).\n' % (
                 args.runs, args.window, args.warmup, args.iterations,
                 args.c_iterations)]
    gtable = dtable = {}
    if results:
        gl, gtable = summarize_gmond(results, sizes)
        lines += gl + ['']
    if dresults['c']:
        dl, dtable = summarize_driver(dresults, floors)
        lines += dl + ['']
    if gtable or dtable:
        lines += targets(gtable, dtable, sizes if gtable else [])
    text = '\n'.join(lines) + '\n'
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    with open(os.path.join(args.out, 'results-%s.json' % stamp), 'w') as f:
        json.dump({'machine': info, 'gmond': results, 'driver': dresults, 'floor': floors}, f,
                  indent=1)
    with open(os.path.join(args.out, 'results-%s.md' % stamp), 'w') as f:
        f.write(text)
    log('written to %s/results-%s.{md,json}' % (args.out, stamp))


# --------------------------------------------------------------------------
# Soak
# --------------------------------------------------------------------------

def soak(args, paths):
    minutes = args.soak
    n = 1500
    mode = args.soak_mode
    work = tempfile.mkdtemp(prefix='modpython-soak-')
    dirs = {'modules': os.path.join(work, 'modules'), 'rounds': os.path.join(work, 'rounds')}
    os.mkdir(dirs['modules'], 0o755)
    shutil.copy(os.path.join(HERE, 'pybench.py'), dirs['modules'])
    os.chmod(os.path.join(dirs['modules'], 'pybench.py'), 0o644)
    info = machine()
    # Nobody listens on the send port: the one send at start goes nowhere.
    a = Proc(node_conf(paths, mode, n, dirs, free_port(socket.SOCK_DGRAM),
                       free_port(socket.SOCK_DGRAM), kind='soak'), work, 'node')
    samples = []
    try:
        time.sleep(2)
        if not a.alive():
            raise RuntimeError('gmond exited:\n' + a.log())
        fd = os.open(dirs['rounds'], os.O_RDONLY)
        end = a.started + minutes * 60
        warm = a.started + args.soak_warmup
        while True:
            now = time.monotonic()
            rss, hwm = mem_kb(a.pid)
            samples.append((now - a.started, read_counter(fd), rss, hwm))
            log('soak t=%6.0fs rounds=%6d RSS=%7d kB HWM=%7d kB' % samples[-1])
            if now >= end or not a.alive():
                break
            time.sleep(min(args.soak_every, max(0.0, end - now)))
        os.close(fd)
        text = a.log()
    finally:
        a.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = [s for s in samples if s[0] >= args.soak_warmup] or samples
    first, last = base[0], base[-1]
    calls = (last[1] - first[1]) * n
    growth_kb = last[2] - first[2]
    # Least-squares slope of RSS over calls, to separate a trend from noise.
    xs = [s[1] * n for s in base]
    ys = [s[2] * 1024.0 for s in base]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    lines = ['## Soak %s\n' % time.strftime('%Y-%m-%d %H:%M'),
             'Machine: %s; kernel %s; %s; libpython3.11 %s\n' % (
                 info['cpu'], info['kernel'], info['gmond'], info['python']),
             '%d metrics (750 uint, 375 string with a fresh string per call, 375 double), '
             'collect_every 1 s, no sends, call mode %s, self_metrics no; %.1f minutes; '
             'first sample %.0f s after start.\n' % (n, mode, (samples[-1][0]) / 60,
                                                     first[0]),
             '| | t (s) | handler calls so far | VmRSS (kB) | VmHWM (kB) |',
             '|---|---|---|---|---|',
             '| at start (RSS after very first round) | %.0f | %d | %d | %d |' % (
                 samples[0][0], samples[0][1] * n, samples[0][2], samples[0][3]),
             '| start of measurement | %.0f | %d | %d | %d |' % (
                 first[0], first[1] * n, first[2], first[3]),
             '| end | %.0f | %d | %d | %d |' % (last[0], last[1] * n, last[2], last[3]),
             '',
             'RSS growth over %d calls: %+d kB = %+.4f bytes per call; least-squares trend '
             '%+.4f bytes per call; RSS range during measurement %d..%d kB.' % (
                 calls, growth_kb, growth_kb * 1024.0 / max(calls, 1), slope,
                 min(s[2] for s in base), max(s[2] for s in base))]
    problems = [ln for ln in text.splitlines() if re.search(r'error|fail', ln, re.I)]
    if problems:
        lines.append('\ngmond log problems: %s' % problems[:5])
    out = '\n'.join(lines) + '\n'
    print(out)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    with open(os.path.join(args.out, 'soak-%s.md' % stamp), 'w') as f:
        f.write(out)
    with open(os.path.join(args.out, 'soak-%s.json' % stamp), 'w') as f:
        json.dump({'machine': info, 'n': n, 'mode': mode, 'samples': samples}, f)


# --------------------------------------------------------------------------
# Thread placement experiment (protected mode)
# --------------------------------------------------------------------------

def pinning(args, paths):
    """Protected mode's hand-off spins on both sides; it only works when
    gmond's thread and the worker run on different CPUs at the same time.
    Measures one gmond three ways: as the kernel places the threads, with
    the worker pinned to the other CPU, and with both on one CPU."""
    n = args.pinning
    work = tempfile.mkdtemp(prefix='modpython-pin-')
    dirs = {'modules': os.path.join(work, 'modules'), 'rounds': os.path.join(work, 'rounds')}
    os.mkdir(dirs['modules'], 0o755)
    shutil.copy(os.path.join(HERE, 'pybench.py'), dirs['modules'])
    os.chmod(os.path.join(dirs['modules'], 'pybench.py'), 0o644)
    a = Proc(node_conf(paths, 'protected', n, dirs, free_port(socket.SOCK_DGRAM),
                       free_port(socket.SOCK_DGRAM)), work, 'node')
    out = ['## Thread placement, protected mode, N=%d (%s)\n' % (n, time.strftime('%Y-%m-%d %H:%M')),
           '| placement | main thread ns/call | all threads ns/call |', '|---|---|---|']
    try:
        time.sleep(3)
        tids = {int(t): open('/proc/%d/task/%s/comm' % (a.pid, t)).read().strip()
                for t in os.listdir('/proc/%d/task' % a.pid)}
        fd = os.open(dirs['rounds'], os.O_RDONLY)

        def measure(label):
            r0 = next_round(fd)
            c0 = cpu_ns(a.pid)
            time.sleep(args.window)
            r1 = next_round(fd)
            c1 = cpu_ns(a.pid)
            calls = n * (r1 - r0)
            out.append('| %s | %.0f | %.0f |' % (label, (c1[0] - c0[0]) / calls,
                                                 (c1[1] - c0[1]) / calls))
            log(out[-1])

        def pin(tid, cpu):
            subprocess.run(['taskset', '-p', '-c', str(cpu), str(tid)], capture_output=True,
                           check=True)

        measure('as the kernel places them')
        for tid, comm in tids.items():
            pin(tid, 1 if comm == 'modpython-call' else 0)
        measure('worker on CPU 1, the others on CPU 0')
        for tid in tids:
            pin(tid, 0)
        measure('all on CPU 0')
        os.close(fd)
    finally:
        a.stop()
        shutil.rmtree(work, ignore_errors=True)
    print('\n'.join(out) + '\n')


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--so', required=True)
    ap.add_argument('--cbench', required=True)
    ap.add_argument('--driver', required=True)
    ap.add_argument('--pyfloor', required=True)
    ap.add_argument('--pingpong', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--sizes', default='100,1500,10000')
    ap.add_argument('--runs', type=int)
    ap.add_argument('--window', type=float)
    ap.add_argument('--warmup', type=float)
    ap.add_argument('--iterations', type=int)
    ap.add_argument('--c-iterations', type=int)
    ap.add_argument('--no-gmond', action='store_true')
    ap.add_argument('--no-driver', action='store_true')
    ap.add_argument('--soak', type=float, nargs='?', const=10.0)
    ap.add_argument('--pinning', type=int, nargs='?', const=1500,
                    help='protected mode with the threads pinned apart / together')
    ap.add_argument('--soak-mode', default='protected', choices=('protected', 'inline'))
    ap.add_argument('--soak-every', type=float, default=15.0)
    ap.add_argument('--soak-warmup', type=float, default=30.0)
    args = ap.parse_args()
    q = args.quick
    args.runs = args.runs or (1 if q else 3)
    args.window = args.window or (5.0 if q else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if q else 3.0)
    args.iterations = args.iterations or (200000 if q else 2000000)
    args.c_iterations = args.c_iterations or (10000000 if q else 100000000)
    paths = {'so': os.path.abspath(args.so), 'cbench': os.path.abspath(args.cbench),
             'driver': os.path.abspath(args.driver), 'pyfloor': os.path.abspath(args.pyfloor),
             'pingpong': os.path.abspath(args.pingpong)}
    if args.soak is not None:
        soak(args, paths)
    elif args.pinning is not None:
        pinning(args, paths)
    else:
        main_bench(args, paths)


if __name__ == '__main__':
    main()
