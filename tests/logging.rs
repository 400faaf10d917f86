//! What modules say reaches gmond's log with the module's name: the
//! `ganglia.log_*` functions, the standard `logging` package, `print` and
//! `sys.stderr`, from import, metric_init, handlers and module threads.

mod common;

use common::{GmondBuilder, secs};

const TALKER: &str = r#"
import logging, sys, threading, time
import ganglia

print("talker: printed at import")
log = logging.getLogger("talker")

def value(name):
    print("talker: printed in handler for", name)
    log.warning("talker: logging warning in handler")
    return 1

def _thread():
    time.sleep(0.2)
    print("talker: printed from a thread")

def metric_init(params):
    ganglia.log_error("talker: ganglia error")
    ganglia.log_warning("talker: ganglia warning")
    ganglia.log_info("talker: ganglia info")
    ganglia.log_debug("talker: ganglia debug")
    logging.getLogger("talker.sub").error("talker: logging error")
    log.info("talker: logging info")
    sys.stderr.write("talker: stderr ")
    sys.stderr.write("in two writes\n")
    threading.Thread(target=_thread, daemon=True).start()
    return [{"name": "talker_one", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "",
             "description": "talks"}]
"#;

const PYCONF: &str = "modules { module { name = \"talker\" language = \"python\" } }\n\
    collection_group { collect_every = 1 time_threshold = 1 metric { name = \"talker_one\" } }\n";

fn start(debug_level: u32) -> common::Gmond {
    GmondBuilder::new()
        .module_file("talker.py", TALKER)
        .pyconf_text("talker", PYCONF)
        .debug_level(debug_level)
        .start()
}

#[test]
fn module_output_reaches_gmonds_log_at_debug_level_2() {
    let g = start(2);
    for line in [
        "[modpython] error: [talker] talker: ganglia error",
        "[modpython] warning: [talker] talker: ganglia warning",
        "[modpython] [talker] talker: ganglia info",
        "[modpython] [talker] talker: ganglia debug",
        "[modpython] error: [talker] talker.sub: talker: logging error",
        "[modpython] [talker] talker: logging info",
        "[modpython] warning: [talker] talker: stderr in two writes",
        "[modpython] [talker] talker: printed at import",
        "[modpython] [talker] talker: printed from a thread",
        "[modpython] [talker] talker: printed in handler for talker_one",
        "[modpython] warning: [talker] talker: logging warning in handler",
    ] {
        gmond_assert!(g, g.wait_log(line, secs(20)), "missing log line {line:?}");
    }
}

/// At gmond's default debug level 0, everything but debug lines: what a
/// module prints and logs at info is what its operator reads.
#[test]
fn all_but_debug_lines_at_debug_level_0() {
    let g = start(0);
    g.wait_metric("talker_one", secs(20));
    gmond_assert!(
        g,
        g.wait_log(
            "[modpython] [talker] talker: printed from a thread",
            secs(10)
        ),
        "the thread's print is missing"
    );
    for line in [
        "[modpython] error: [talker] talker: ganglia error\n",
        "[modpython] warning: [talker] talker: ganglia warning\n",
        "[modpython] [talker] talker: ganglia info\n",
        "[modpython] error: [talker] talker.sub: talker: logging error\n",
        "[modpython] [talker] talker: logging info\n",
        "[modpython] warning: [talker] talker: stderr in two writes\n",
        "[modpython] [talker] talker: printed at import\n",
        "[modpython] [talker] talker: printed from a thread\n",
    ] {
        gmond_assert_eq!(g, g.log_count(line), 1, "count of {line:?}");
    }
    gmond_assert!(
        g,
        !g.log().contains("ganglia debug"),
        "a debug line was shown at level 0"
    );
}

const FLOOD: &str = r#"
import sys

def value(name):
    return 2

def metric_init(params):
    for i in range(500):
        sys.stderr.write("flood: line %d\n" % i)
    return [{"name": "flood_two", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "",
             "description": "floods"}]
"#;

/// A module that writes without end cannot fill gmond's log: each module
/// may log 100 lines a minute, the rest is counted and summarised.
#[test]
fn module_output_is_capped_per_module() {
    let g = GmondBuilder::new()
        .module_file("flood.py", FLOOD)
        .module_file("talker.py", TALKER)
        .pyconf_text(
            "flood",
            "modules { module { name = \"flood\" language = \"python\" } module { name = \"talker\" language = \"python\" } }\n\
             collection_group { collect_every = 1 time_threshold = 1 metric { name = \"flood_two\" } metric { name = \"talker_one\" } }\n",
        )
        .start();
    let m = g.wait_metric("flood_two", secs(20));
    gmond_assert_eq!(g, m.val, "2");
    gmond_assert_eq!(g, g.log_count("[flood] flood: line "), 100, "lines logged");
    gmond_assert!(
        g,
        g.log().contains("[flood] flood: line 99\n"),
        "the first 100 lines"
    );
    // Another module's budget is its own.
    gmond_assert!(
        g,
        g.wait_log(
            "[modpython] warning: [talker] talker: stderr in two writes",
            secs(10)
        ),
        "the other module's output was cut too"
    );
}
