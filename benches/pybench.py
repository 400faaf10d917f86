"""The Python metric module the benchmarks run under modpython.

params:
  kind    "uint"   (default) COUNT uint metrics PREFIX00000... returning 42,
                   the same names as the C baseline's;
          "driver" three metrics for the direct driver: bm_trivial (returns
                   the int 42), bm_string (returns a str), bm_numstr (returns
                   the numeric string '12345' for a uint metric);
          "soak"   COUNT metrics, half uint (a changing int), a quarter
                   string (a fresh string each call), a quarter double;
          "restart" as "uint", but the first metric's handler also stamps
                   each call into the file STAMP (the restart benchmark of
                   isolated mode: when the new process first answers).
  count   number of metrics (uint, soak, restart)
  prefix  name prefix (default "bm_")
  stamp   restart: a file of at least 4096 bytes, mapped shared; as
          little-endian 64-bit fields (see STAMP below): the process's pid,
          when (time.monotonic) and at what CPU (time.process_time: the
          whole process since exec) this module was imported, metric_init
          began and ended, and its first and latest call; the call count.
"""

import time

# Taken first thing at import (after `import time`): CPU the process spent
# from exec to here is interpreter start-up and the host's set-up.
_IMPORTED = (time.monotonic(), time.process_time())

# Field offsets in the stamp file (8 bytes each; pid and calls unsigned,
# the rest doubles).
STAMP = {'pid': 0, 'import_t': 8, 'import_cpu': 16, 'init_start_t': 24, 'init_start_cpu': 32,
         'init_end_t': 40, 'init_end_cpu': 48, 'first_call_t': 56, 'first_call_cpu': 64,
         'last_call_t': 72, 'calls': 80}


def trivial(name):
    return 42


def string(name):
    return 'hello from python'


def numstr(name):
    return '12345'


_tick = [0]


def soak_uint(name):
    _tick[0] += 1
    return _tick[0] & 0xFFFF


def soak_string(name):
    _tick[0] += 1
    return '%s=%d' % (name, _tick[0])


_stamp = [None, 0]


def stamped(name):
    """bm_00000 in the restart benchmark: returns 42, and stamps the call."""
    m = _stamp[0]
    _stamp[1] += 1
    t = time.monotonic()
    if _stamp[1] == 1:
        _pack(m, '<dd', STAMP['first_call_t'], t, time.process_time())
    _pack(m, '<dQ', STAMP['last_call_t'], t, _stamp[1])
    return 42


def _pack(m, fmt, offset, *values):
    import struct
    struct.pack_into(fmt, m, offset, *values)


def _open_stamp(path, init_start):
    import mmap
    import os
    fd = os.open(path, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 4096)
    finally:
        os.close(fd)
    m[:] = bytes(4096)
    _pack(m, '<Qdddd', 0, os.getpid(), _IMPORTED[0], _IMPORTED[1], init_start[0],
          init_start[1])
    _stamp[0] = m


def soak_double(name):
    _tick[0] += 1
    return _tick[0] * 0.5


def _metric(name, handler, value_type, fmt):
    return {
        'name': name,
        'call_back': handler,
        'time_max': 90,
        'value_type': value_type,
        'units': '',
        'slope': 'zero' if value_type == 'string' else 'both',
        'format': fmt,
        'description': 'modpython benchmark',
        'groups': 'bench',
    }


def metric_init(params):
    init_start = (time.monotonic(), time.process_time())
    kind = params.get('kind', 'uint')
    count = int(params.get('count', '100'))
    prefix = params.get('prefix', 'bm_')
    if kind == 'driver':
        return [
            _metric('bm_trivial', trivial, 'uint', '%u'),
            _metric('bm_string', string, 'string', '%s'),
            _metric('bm_numstr', numstr, 'uint', '%u'),
        ]
    metrics = []
    for i in range(count):
        name = '%s%05d' % (prefix, i)
        if kind == 'soak':
            if i % 4 < 2:
                metrics.append(_metric(name, soak_uint, 'uint', '%u'))
            elif i % 4 == 2:
                metrics.append(_metric(name, soak_string, 'string', '%s'))
            else:
                metrics.append(_metric(name, soak_double, 'double', '%f'))
        elif kind == 'restart' and i == 0:
            metrics.append(_metric(name, stamped, 'uint', '%u'))
        else:
            metrics.append(_metric(name, trivial, 'uint', '%u'))
    if kind == 'restart':
        _open_stamp(params['stamp'], init_start)
        _pack(_stamp[0], '<dd', STAMP['init_end_t'], time.monotonic(), time.process_time())
    return metrics


def metric_cleanup():
    pass
