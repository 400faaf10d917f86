"""proc_rates: per-second rates computed from the kernel's /proc counters.

The kernel exposes ever-growing counters (jiffies, bytes, page faults).
Graphs want rates, so this module remembers the previous reading of each
metric and publishes (new - old) / elapsed seconds, timed with
time.monotonic() (immune to wall-clock jumps).

First call: metric_init takes a baseline reading, so the first handler call
already returns the rate since start-up.  If a handler is called again less
than MIN_INTERVAL seconds after its previous reading, the previous rate is
returned unchanged (a fresh rate over such a short window would be noise).

Counter wrap and reset: if a counter goes down, a 32-bit (or 64-bit) wrap is
assumed when that explains it with a delta of less than half the counter
range; otherwise the counter was reset (driver reload, interface re-created),
and that counter contributes 0 for the interval and is re-based.

Params (all optional):
  interfaces  comma-separated interface names whose traffic is summed;
              default: every interface in /proc/net/dev except "lo".

Metrics (all float, group "examples,proc_rates"):
  proc_rates_cpu_busy         %            non-idle share of CPU time
  proc_rates_ctxt             switches/sec context switches
  proc_rates_forks            forks/sec    processes/threads created
  proc_rates_net_rx_bytes     bytes/sec    bytes received (selected interfaces)
  proc_rates_net_tx_bytes     bytes/sec    bytes sent (selected interfaces)
  proc_rates_pgfault          faults/sec   page faults (minor + major)
  proc_rates_pgmajfault       faults/sec   major page faults (needed disk I/O)
"""

import time

MIN_INTERVAL = 0.05  # seconds

# Which interfaces to sum; None means "all except lo".
INTERFACES = None

# metric name -> (monotonic time, {key: counter}, last published rate)
STATE = {}


# --- counter readers: each returns {key: counter value} --------------------

def _read_stat():
    """Parse /proc/stat into the counters this module uses."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            if fields[0] == "cpu":
                # user nice system idle iowait irq softirq steal (guest is
                # already included in user/nice, so it is not added again).
                ticks = [int(x) for x in fields[1:9]]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                out["cpu_total"] = sum(ticks)
                out["cpu_busy"] = sum(ticks) - idle
            elif fields[0] in ("ctxt", "processes"):
                out[fields[0]] = int(fields[1])
    return out


def _read_vmstat():
    out = {}
    with open("/proc/vmstat") as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key in ("pgfault", "pgmajfault"):
                out[key] = int(value)
    return out


def _read_netdev(column):
    """Return {interface: counter} for one /proc/net/dev column.

    Column 0 is received bytes, column 8 is transmitted bytes.
    """
    out = {}
    with open("/proc/net/dev") as f:
        for line in f:
            if ":" not in line:
                continue  # the two header lines
            iface, _, rest = line.partition(":")
            iface = iface.strip()
            if INTERFACES is None:
                if iface == "lo":
                    continue
            elif iface not in INTERFACES:
                continue
            out[iface] = int(rest.split()[column])
    return out


def _single(reader, key):
    def sample():
        return {key: reader()[key]}
    return sample


SAMPLERS = {
    "proc_rates_ctxt": _single(_read_stat, "ctxt"),
    "proc_rates_forks": _single(_read_stat, "processes"),
    "proc_rates_pgfault": _single(_read_vmstat, "pgfault"),
    "proc_rates_pgmajfault": _single(_read_vmstat, "pgmajfault"),
    "proc_rates_net_rx_bytes": lambda: _read_netdev(0),
    "proc_rates_net_tx_bytes": lambda: _read_netdev(8),
    # Ratio, not a rate: handled by cpu_busy_handler.
    "proc_rates_cpu_busy": lambda: {
        k: v for k, v in _read_stat().items() if k.startswith("cpu_")},
}


def counter_delta(old, new):
    """Increase of a counter from old to new, or None if it was reset."""
    if new >= old:
        return new - old
    for bits in (32, 64):
        if old < 2 ** bits:
            wrapped = new + 2 ** bits - old
            if wrapped < 2 ** (bits - 1):
                return wrapped
    return None


def _advance(name):
    """Take a new reading for `name`.

    Returns (elapsed seconds, {key: delta}) or None when the previous reading
    is too recent.  Keys present in only one of the two readings (an interface
    that appeared or vanished) are left out of the deltas.
    """
    now = time.monotonic()
    counters = SAMPLERS[name]()
    then, old_counters, _ = STATE[name]
    elapsed = now - then
    if elapsed < MIN_INTERVAL:
        return None
    deltas = {}
    for key, new in counters.items():
        if key in old_counters:
            d = counter_delta(old_counters[key], new)
            deltas[key] = 0 if d is None else d
    STATE[name] = (now, counters, STATE[name][2])
    return elapsed, deltas


def rate_handler(name):
    """Sum of the per-second increases of the metric's counters."""
    step = _advance(name)
    if step is None:
        return STATE[name][2]
    elapsed, deltas = step
    rate = sum(deltas.values()) / elapsed
    STATE[name] = STATE[name][:2] + (rate,)
    return rate


def cpu_busy_handler(name):
    """Percentage of CPU time that was not idle since the previous call."""
    step = _advance(name)
    if step is None:
        return STATE[name][2]
    _, deltas = step
    total = deltas.get("cpu_total", 0)
    busy = 100.0 * deltas.get("cpu_busy", 0) / total if total > 0 else 0.0
    STATE[name] = STATE[name][:2] + (busy,)
    return busy


def metric_init(params):
    global INTERFACES
    wanted = [s.strip() for s in params.get("interfaces", "").split(",")]
    wanted = [s for s in wanted if s]
    INTERFACES = set(wanted) if wanted else None

    specs = [
        ("proc_rates_cpu_busy", "%", "Share of CPU time not idle", cpu_busy_handler),
        ("proc_rates_ctxt", "switches/sec", "Context switches per second", rate_handler),
        ("proc_rates_forks", "forks/sec", "Processes and threads created per second", rate_handler),
        ("proc_rates_net_rx_bytes", "bytes/sec", "Bytes received per second", rate_handler),
        ("proc_rates_net_tx_bytes", "bytes/sec", "Bytes sent per second", rate_handler),
        ("proc_rates_pgfault", "faults/sec", "Page faults per second", rate_handler),
        ("proc_rates_pgmajfault", "faults/sec", "Major page faults per second", rate_handler),
    ]
    descriptors = []
    now = time.monotonic()
    for name, units, description, handler in specs:
        # Baseline reading, so the first handler call returns a real rate.
        STATE[name] = (now, SAMPLERS[name](), 0.0)
        descriptors.append({
            "name": name,
            "call_back": handler,
            "time_max": 60,
            "value_type": "float",
            "units": units,
            "slope": "both",
            "format": "%.2f",
            "description": description,
            "groups": "examples,proc_rates",
        })
    return descriptors


def metric_cleanup():
    STATE.clear()


if __name__ == "__main__":
    # Standalone: print the rates every second for a few seconds.
    descs = metric_init({})
    for _ in range(3):
        time.sleep(1)
        for d in descs:
            print("%-26s %10.2f %s" % (d["name"], d["call_back"](d["name"]), d["units"]))
        print()
    metric_cleanup()
