"""hello: the smallest useful gmond Python module.

It shows the three functions every module provides:

* metric_init(params) -- called once; returns the metric descriptors.
* a handler          -- called by gmond with the metric name; returns the value.
* metric_cleanup()   -- called once when gmond shuts down.

Metrics:
  hello_greeting  string  the text of the ``greeting`` param
  hello_uptime    double  seconds since the machine booted (/proc/uptime)
"""

# Module-level state set by metric_init.
GREETING = "Hello, world"


def greeting_handler(name):
    """Return the configured greeting (the value of a string metric)."""
    return GREETING


def uptime_handler(name):
    """Return the system uptime in seconds, read from /proc/uptime."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def metric_init(params):
    """Build and return the list of metric descriptors.

    ``params`` is a dict of the module's ``param NAME { value = "..." }``
    entries from the .pyconf; every value is a str.
    """
    global GREETING
    GREETING = params.get("greeting", GREETING)

    common = {
        "time_max": 60,
        "groups": "examples",
    }
    return [
        dict(common,
             name="hello_greeting",
             call_back=greeting_handler,
             value_type="string",
             units="",
             slope="zero",
             format="%s",
             description="The greeting configured in hello.pyconf"),
        dict(common,
             name="hello_uptime",
             call_back=uptime_handler,
             value_type="double",
             units="seconds",
             slope="positive",
             format="%.2f",
             description="Seconds since boot"),
    ]


def metric_cleanup():
    """Nothing to release; present because gmond calls it at shutdown."""
    pass


if __name__ == "__main__":
    # Run standalone: python3 hello.py
    for d in metric_init({"greeting": "Hi from the command line"}):
        print("%s = %r %s" % (d["name"], d["call_back"](d["name"]), d["units"]))
    metric_cleanup()
