"""background_thread: collect in a thread, let handlers only read.

gmond calls handlers one after another and waits for each: in modpython's
default (protected) mode the call runs on the host's worker thread and
gmond's main thread waits for it (at most call_timeout); in inline mode it
runs on gmond's main thread.  Either way a slow handler delays every other
metric (and gmond's network processing).  When sampling is slow or must run
on its own schedule, do it in a daemon thread and make the handlers return
the latest sample, which costs nothing.

* The sampler thread wakes every `interval` seconds (param, default 2).
* Each sample reads /proc/loadavg and times os.stat() of `probe_path`
  (param, default "/").
* Handlers read the latest sample from a dict guarded by a lock.
* metric_cleanup() sets an Event that stops the thread and joins it with a
  timeout, so shutdown never hangs on it.  The thread is also a daemon
  thread, as a second line of defence.

The embedded interpreter runs Python threads while gmond is between its
calls, so bg_samples_taken keeps increasing from one collection to the next.

Metrics (group "examples,background_thread"):
  bg_load_one          float  1-minute load average
  bg_stat_latency      float  microseconds one os.stat(probe_path) took
  bg_samples_taken     uint   samples taken since metric_init
  bg_sample_age        float  seconds since the latest sample
"""

import os
import threading
import time

INTERVAL = 2.0
PROBE_PATH = "/"

_lock = threading.Lock()
_latest = {
    "bg_load_one": 0.0,
    "bg_stat_latency": 0.0,
    "bg_samples_taken": 0,
    "taken_at": None,  # time.monotonic() of the latest sample
}
_stop = threading.Event()
_thread = None


def _take_sample():
    with open("/proc/loadavg") as f:
        load_one = float(f.read().split()[0])
    start = time.perf_counter()
    try:
        os.stat(PROBE_PATH)
    except OSError:
        pass  # a missing path still measures the lookup
    latency_us = (time.perf_counter() - start) * 1e6
    with _lock:
        _latest["bg_load_one"] = load_one
        _latest["bg_stat_latency"] = latency_us
        _latest["bg_samples_taken"] += 1
        _latest["taken_at"] = time.monotonic()


def _sampler():
    # Event.wait returns True as soon as metric_cleanup sets the event.
    while True:
        try:
            _take_sample()
        except Exception:
            pass  # keep the previous sample; try again next interval
        if _stop.wait(INTERVAL):
            break


def sample_handler(name):
    with _lock:
        return _latest[name]


def age_handler(name):
    with _lock:
        taken_at = _latest["taken_at"]
    if taken_at is None:
        return 0.0
    return time.monotonic() - taken_at


def metric_init(params):
    global INTERVAL, PROBE_PATH, _thread
    INTERVAL = max(0.1, float(params.get("interval", INTERVAL)))
    PROBE_PATH = params.get("probe_path", PROBE_PATH)

    # One synchronous sample, so the first handler calls have real data.
    _take_sample()
    _stop.clear()
    _thread = threading.Thread(target=_sampler, name="bg-sampler", daemon=True)
    _thread.start()

    common = {
        "time_max": 60,
        "slope": "both",
        "groups": "examples,background_thread",
    }
    return [
        dict(common, name="bg_load_one", call_back=sample_handler,
             value_type="float", units="load", format="%.2f",
             description="One-minute load average, sampled in a thread"),
        dict(common, name="bg_stat_latency", call_back=sample_handler,
             value_type="float", units="microseconds", format="%.1f",
             description="Time one os.stat of the probe path took"),
        dict(common, name="bg_samples_taken", call_back=sample_handler,
             value_type="uint", units="samples", format="%u",
             slope="positive",
             description="Samples taken by the background thread"),
        dict(common, name="bg_sample_age", call_back=age_handler,
             value_type="float", units="seconds", format="%.2f",
             description="Seconds since the latest background sample"),
    ]


def metric_cleanup():
    global _thread
    _stop.set()
    if _thread is not None:
        _thread.join(timeout=5)
        _thread = None


if __name__ == "__main__":
    descs = metric_init({"interval": "0.5"})
    for _ in range(3):
        time.sleep(1)
        for d in descs:
            print("%-18s %s %s" % (d["name"], d["call_back"](d["name"]), d["units"]))
        print()
    metric_cleanup()
