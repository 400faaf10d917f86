"""The Python metric module the benchmarks run under modpython.

params:
  kind    "uint"   (default) COUNT uint metrics PREFIX00000... returning 42,
                   the same names as the C baseline's;
          "driver" three metrics for the direct driver: bm_trivial (returns
                   the int 42), bm_string (returns a str), bm_numstr (returns
                   the numeric string '12345' for a uint metric);
          "soak"   COUNT metrics, half uint (a changing int), a quarter
                   string (a fresh string each call), a quarter double.
  count   number of metrics (uint, soak)
  prefix  name prefix (default "bm_")
"""


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
        else:
            metrics.append(_metric(name, trivial, 'uint', '%u'))
    return metrics


def metric_cleanup():
    pass
