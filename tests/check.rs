//! `modpython-check` on the good and broken fixtures, on whole gmond
//! configurations (with includes), and on bad command lines: its output and
//! its exit codes (0 clean, 1 errors, 2 warnings only, 64 usage).

mod common;
#[path = "common/pymod.rs"]
mod pymod;
#[path = "common/pyvenv.rs"]
mod pyvenv;

use std::path::Path;
use std::process::{Command, Output};

use common::{GmondBuilder, TempDir, repo_path, secs};

const CHECK: &str = env!("CARGO_BIN_EXE_modpython-check");

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn has(&self, needle: &str) -> bool {
        self.stdout.contains(needle)
    }

    fn assert_has(&self, needle: &str) {
        assert!(self.has(needle), "missing {needle:?} in:\n{self}");
    }

    /// The line of the table for a metric.
    fn row(&self, metric: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(metric))
            .unwrap_or_else(|| panic!("no table row for {metric} in:\n{self}"))
    }

    /// Each call's cell of a metric's VALUE(S) column: a value, FAILED,
    /// TIMEOUT or skipped.
    fn values(&self, metric: &str) -> Vec<String> {
        let header = self
            .stdout
            .lines()
            .find(|l| l.starts_with("MODULE "))
            .unwrap_or_else(|| panic!("no table in:\n{self}"));
        // The header is ASCII; cells are padded to widths in characters.
        let column = |name: &str| {
            header
                .find(name)
                .unwrap_or_else(|| panic!("no {name} column in:\n{self}"))
        };
        let (from, to) = (column("VALUE(S)"), column("TIME/CALL"));
        let cell: String = self
            .row(metric)
            .chars()
            .skip(from)
            .take(to - from)
            .collect();
        cell.trim().split(" | ").map(str::to_owned).collect()
    }

    /// The first problem line about a module.
    fn problem(&self, module: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| {
                (l.starts_with("error: ") || l.starts_with("warning: "))
                    && l.contains(&format!("module '{module}'"))
            })
            .unwrap_or_else(|| panic!("no problem reported for {module} in:\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn check(args: &[&str]) -> Run {
    check_in(&repo_path("."), args)
}

fn check_in(cwd: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(CHECK)
        .args(args)
        .current_dir(cwd)
        .env("PATH", common::DEFAULT_PATH)
        .output()
        .expect("run modpython-check");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn fixture(name: &str) -> (String, String) {
    let dir = repo_path(format!("tests/fixtures/{name}"));
    (
        dir.join(format!("{name}.pyconf")).display().to_string(),
        dir.display().to_string(),
    )
}

#[test]
fn good_fixture_loads_and_every_value_is_as_gmond_would_publish_it() {
    let (pyconf, dir) = fixture("good");
    let run = check(&[
        "--pyconf",
        &pyconf,
        "--dir",
        &dir,
        "--count",
        "2",
        "--interval",
        "0.2",
    ]);
    // The only problems: novalue's warning, and two collection_group names
    // whose modules are deliberately not loaded (good_helper, good_disabled).
    assert_eq!(run.code, Some(2), "{run}");
    assert!(!run.stdout.contains("\nerror: "), "{run}");
    run.assert_has("warning: module 'good_params'");
    assert!(
        run.problem("good_params")
            .contains("param 'novalue' has no value"),
        "{run}"
    );
    run.assert_has("lists metric 'good_helper_trap', which no module registered");
    run.assert_has("WARNINGS: 3 warning(s)");
    for (metric, kind, units, value) in [
        ("good_string", "string", "", "fixture-string"),
        ("good_uint", "uint", "count", "4000000000"),
        ("good_int", "int", "degrees", "-42"),
        ("good_float", "float", "ratio", "2.50"),
        ("good_double", "double", "seconds", "3.250000"),
        ("good_conv_float_str", "float", "", "1500.0"),
        ("good_conv_str_quote", "string", "", "say 'hi'"),
        ("good_param_echo", "string", "", "hi there"),
        ("good_helper_value", "string", "", "from-helper"),
    ] {
        let row = run.row(metric);
        assert!(row.contains(kind), "{metric}: {row}");
        assert!(row.contains(units), "{metric}: {row}");
        // Two calls, both values shown, then the time per call.
        assert!(
            row.contains(&format!("{value} | {value}")),
            "{metric}: {row}"
        );
        assert!(row.contains(" ms"), "{metric}: {row}");
    }
    assert!(!run.has("good_helper_trap  "), "{run}");
    assert!(!run.has("good_disabled_never  "), "{run}");
    run.assert_has("11 module(s) loaded, 0 failed, 1530 metric(s)");
}

#[test]
fn one_module_without_problems_exits_zero() {
    let (pyconf, dir) = fixture("good");
    let run = check(&["--pyconf", &pyconf, "--dir", &dir, "--module", "good_types"]);
    assert_eq!(run.code, Some(0), "{run}");
    run.assert_has("1 module(s) loaded, 0 failed, 7 metric(s)");
    run.assert_has("OK: no problems found");
    assert!(run.row("good_upper_case").contains("77"), "{run}");
    assert!(!run.has("good_params"), "{run}");

    let run = check(&["--pyconf", &pyconf, "--dir", &dir, "--module", "nosuch"]);
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_has("--module nosuch: no module block");
}

#[test]
fn broken_fixture_names_module_file_metric_and_cause() {
    let (pyconf, dir) = fixture("broken");
    let run = check(&[
        "--pyconf",
        &pyconf,
        "--dir",
        &dir,
        "--count",
        "2",
        "--interval",
        "0",
    ]);
    assert_eq!(run.code, Some(1), "{run}");
    // The healthy neighbour works.
    assert!(run.row("broken_healthy_ok").contains("1 | 1"), "{run}");
    assert!(
        run.row("broken_healthy_json").contains("[1] | [1]"),
        "{run}"
    );
    // Each error names the module and its file; metric-level ones the metric.
    let file = |m: &str| format!("module '{m}' ({dir}/{m}.py): ");
    for (module, needles) in [
        (
            "bad_py2_syntax",
            &[
                "import failed",
                "written for Python 2",
                "SyntaxError",
                "line 3",
            ][..],
        ),
        (
            "bad_missing_import",
            &["modpython_fixture_no_such_package", "Traceback"],
        ),
        ("bad_no_metric_init", &["metric_init"]),
        (
            "bad_init_raises",
            &[
                "metric_init raised",
                "boom from bad_init_raises.metric_init",
                "Traceback",
            ],
        ),
        ("bad_init_no_args", &["TypeError"]),
        ("bad_init_returns_none", &["returned None"]),
        ("bad_init_returns_str", &["returned a str"]),
        ("json", &["already taken by", "standard-library"]),
        ("bad_init_mixed_list", &["element 0"]),
        ("bad_desc_no_name", &["no 'name' key"]),
        (
            "bad_desc_no_callback",
            &["metric 'broken_no_callback'", "call_back"],
        ),
        (
            "bad_desc_callback_not_callable",
            &["metric 'broken_callback_not_callable'", "callable"],
        ),
        (
            "bad_desc_bogus_type",
            &["metric 'broken_bogus_type'", "'bogus'"],
        ),
        (
            "bad_desc_no_value_type",
            &["metric 'broken_no_value_type'", "value_type"],
        ),
        (
            "bad_dup_b",
            &["metric 'broken_dup_name' is already defined by module 'bad_dup_a'"],
        ),
        (
            "bad_handler_raise_after_one",
            // As gmond logs it: it had a good value from the first call.
            &[
                "metric 'broken_raise_after_one' failed (gmond keeps its last good value",
                "ValueError",
            ],
        ),
        (
            "bad_handler_raise_always",
            &["metric 'broken_raise_always_uint' failed (gmond publishes 0 until a call succeeds"],
        ),
        (
            "bad_handler_sys_exit",
            &["metric 'broken_sys_exit'", "SystemExit: 3"],
        ),
        ("bad_handler_returns_none", &["returned None"]),
        (
            "bad_handler_wrong_type",
            &["metric 'broken_wrong_type_dict'", "dict"],
        ),
        (
            "bad_format_mismatch",
            &[
                "warning: ",
                "metric 'broken_fmt_s_on_uint'",
                "'%s'",
                "using '%u'",
            ],
        ),
        (
            "bad_quote_in_units",
            &["warning: ", "metric 'broken_quote_units'"],
        ),
    ] {
        let problem = run.problem(module);
        assert!(
            problem.contains(&file(module)),
            "{module}: {problem}\n{run}"
        );
        // Needles may be on the problem line or in its traceback below it.
        let start = run.stdout.find(problem).unwrap();
        let rest = &run.stdout[start..];
        let block_end = rest[1..]
            .find("\nerror: ")
            .into_iter()
            .chain(rest[1..].find("\nwarning: "))
            .min()
            .map_or(rest.len(), |i| i + 1);
        let block = &rest[..block_end];
        for needle in needles {
            assert!(
                block.contains(needle),
                "{module}: {needle:?} not in\n{block}"
            );
        }
    }
    // The full traceback, with the file and line of the raise.
    run.assert_has("bad_handler_raise_after_one.py\", line");
    // Corrected metrics are still called, with the corrected format.
    assert!(run.row("broken_fmt_s_on_uint").contains("11 | 11"), "{run}");
    assert!(
        run.row("broken_fmt_d_on_float")
            .contains("1.500000 | 1.500000"),
        "{run}"
    );
    assert!(
        run.row("broken_raise_after_one").contains("5 | FAILED"),
        "{run}"
    );
    // The checker's own summary of the calls.
    run.assert_has("metric 'broken_raise_after_one' failed in 1 of 2 call(s); first at call 2");
    run.assert_has("metric 'broken_raise_always_uint' failed in 2 of 2 call(s)");
    run.assert_has("metric 'broken_none_after_one' failed in 1 of 2 call(s); first at call 2: the callback returned None");
    run.assert_has("FAILED: ");
}

#[test]
fn json_output_is_valid_and_complete() {
    let (pyconf, dir) = fixture("broken");
    let run = check(&[
        "--pyconf",
        &pyconf,
        "--dir",
        &dir,
        "--json",
        "--module",
        "bad_dup_a",
        "--module",
        "bad_dup_b",
        "--module",
        "bad_handler_raise_after_one",
        "--count",
        "2",
        "--interval",
        "0",
    ]);
    assert_eq!(run.code, Some(1), "{run}");
    // Validate and query it with Python's json module (no JSON crate needed).
    let script = r#"
import json, sys
d = json.load(sys.stdin)
assert d["exit_code"] == 1, d["exit_code"]
m = {x["metric"]: x for x in d["metrics"]}
assert m["broken_dup_name"]["values"] == ["1", "1"], m["broken_dup_name"]
assert m["broken_dup_name"]["module"] == "bad_dup_a"
assert m["broken_raise_after_one"]["values"] == ["5", None]
assert m["broken_raise_after_one"]["failures"] == 1
assert m["broken_dup_a_ok"]["type"] == "uint"
assert m["broken_dup_a_ok"]["seconds_per_call"] >= 0
errors = [p for p in d["problems"] if p["severity"] == "error"]
dup = [p for p in errors if p["module"] == "bad_dup_b"][0]
assert dup["metric"] == "broken_dup_name", dup
assert dup["file"].endswith("/bad_dup_b.py"), dup
raised = [p for p in errors if p["metric"] == "broken_raise_after_one"][0]
assert "Traceback" in raised["message"] and "ValueError" in raised["message"], raised
print("ok", len(d["metrics"]), d["errors"])
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(run.stdout.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n{run}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A whole gmond configuration: the python_module block names the module
/// directory, `include` brings in the .pyconf, and the host settings apply.
fn write_conf(dir: &Path, python_block: &str) -> std::path::PathBuf {
    let conf = dir.join("gmond.conf");
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "globals {{ daemonize = no setuid = no user = nobody }}\n\
             cluster {{ name = \"check\" }}\n\
             modules {{\n  module {{\n    name = \"core_metrics\"\n  }}\n{python_block}\n}}\n\
             include ('{}/conf.d/*.pyconf')\n",
            dir.display()
        ),
    )
    .unwrap();
    conf
}

#[test]
fn whole_gmond_config_with_includes() {
    let tmp = TempDir::new();
    let modules = repo_path("tests/fixtures/good");
    std::fs::copy(
        repo_path("tests/fixtures/good/good.pyconf"),
        tmp.path().join("x"),
    )
    .unwrap();
    let conf = write_conf(
        tmp.path(),
        &format!(
            "  module {{\n    name = \"python_module\"\n    path = \"/nonexistent/modpython.so\"\n    params = \"{}\"\n  }}",
            modules.display()
        ),
    );
    std::fs::rename(tmp.path().join("x"), tmp.path().join("conf.d/good.pyconf")).unwrap();
    let run = check(&["--conf", conf.to_str().unwrap(), "--module", "good_types"]);
    // The .pyconf arrived through the include; the missing .so is an error.
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_has(&format!("gmond configuration {}", conf.display()));
    run.assert_has(&format!("module directory {}", modules.display()));
    assert!(run.row("good_int").contains("-42"), "{run}");
    run.assert_has(
        "error: the python_module block's path /nonexistent/modpython.so does not exist",
    );
}

#[test]
fn config_problems_are_reported_not_crashed_on() {
    let tmp = TempDir::new();
    // No python_module block at all.
    let conf = write_conf(tmp.path(), "");
    let run = check(&["--conf", conf.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_has("has no enabled module block named \"python_module\"");

    // A syntax error: libganglia's parser exits, in the probe child only.
    let bad = tmp.path().join("bad.conf");
    std::fs::write(
        &bad,
        "modules { module { name = \"x\" bogus_option = 3 } }\n",
    )
    .unwrap();
    let run = check(&["--conf", bad.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.starts_with('{'), "{run}");
    run.assert_has("gmond's parser rejects");
    run.assert_has("bogus_option");

    // A missing file.
    let run = check(&["--conf", "/nonexistent/gmond.conf"]);
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_has("cannot read /nonexistent/gmond.conf");

    // Bad usage.
    let run = check(&["--pyconf", "x.pyconf"]);
    assert_eq!(run.code, Some(64), "{run}");
    assert!(run.stderr.contains("--pyconf needs --dir"), "{run}");
    let run = check(&["--help"]);
    assert_eq!(run.code, Some(0), "{run}");
    run.assert_has("usage: modpython-check");
}

#[test]
fn what_modules_say_is_in_the_report_with_their_names() {
    let tmp = TempDir::new();
    std::fs::write(
        tmp.path().join("talker.py"),
        r#"
import logging, sys, ganglia
print("hello from import")
def value(name):
    print("called for", name)
    return 1
def metric_init(params):
    ganglia.log_warning("careful")
    ganglia.log_debug("a debug line")
    logging.getLogger("talker.sub").error("from logging")
    sys.stderr.write("partial ")
    sys.stderr.write("line\n")
    return [{"name": "talker_one", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "",
             "description": "d"}]
"#,
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("talker.pyconf"),
        "modules { module { name = \"talker\" language = \"python\" } }\n\
         collection_group { collect_every = 10 time_threshold = 60 metric { name = \"talker_one\" } }\n",
    )
    .unwrap();
    let pyconf = tmp.path().join("talker.pyconf");
    // At gmond's default debug level, everything but debug lines is logged,
    // so shown; the debug line is counted.
    let quiet = check(&[
        "--pyconf",
        pyconf.to_str().unwrap(),
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(quiet.code, Some(0), "{quiet}");
    for line in [
        "info    [talker] hello from import",
        "warning [talker] careful",
        "info    [talker] called for talker_one",
    ] {
        assert_eq!(quiet.stdout.matches(line).count(), 1, "{line:?}\n{quiet}");
    }
    assert!(!quiet.has("a debug line"), "{quiet}");
    quiet.assert_has(
        "(1 line(s) at debug level not shown: gmond logs them only at debug level 2 or more; see them with --debug 2)",
    );
    let run = check(&[
        "--pyconf",
        pyconf.to_str().unwrap(),
        "--dir",
        tmp.path().to_str().unwrap(),
        "--debug",
        "2",
    ]);
    assert_eq!(run.code, Some(0), "{run}");
    for line in [
        "info    [talker] hello from import",
        "warning [talker] careful",
        "error   [talker] talker.sub: from logging",
        "warning [talker] partial line",
        "info    [talker] called for talker_one",
        "debug   [talker] a debug line",
    ] {
        run.assert_has(line);
    }
    assert!(!run.has("not shown"), "{run}");
    // As gmond with module_stdout = discard: print()s are counted, not shown.
    let discard = check(&[
        "--pyconf",
        pyconf.to_str().unwrap(),
        "--dir",
        tmp.path().to_str().unwrap(),
        "--set",
        "module_stdout=discard",
    ]);
    assert_eq!(discard.code, Some(0), "{discard}");
    assert!(!discard.has("hello from import"), "{discard}");
    assert!(!discard.has("called for"), "{discard}");
    discard.assert_has("warning [talker] partial line");
    discard.assert_has("(2 line(s) printed to stdout discarded: module_stdout = discard)");
}

/// A module's files in a fresh directory, with a .pyconf of `pyconf` text.
fn modules(files: &[(&str, &str)], pyconf: &str) -> (TempDir, String, String) {
    let tmp = TempDir::new();
    for (name, body) in files {
        std::fs::write(tmp.path().join(format!("{name}.py")), body).unwrap();
    }
    let conf = tmp.path().join("m.pyconf");
    std::fs::write(&conf, pyconf).unwrap();
    let (conf, dir) = (conf.display().to_string(), tmp.path().display().to_string());
    (tmp, conf, dir)
}

const DESCRIPTOR: &str = r#"
def d(name, cb):
    return {"name": name, "call_back": cb, "value_type": "uint", "format": "%u",
            "slope": "both", "time_max": 60, "units": "", "description": "d"}
"#;

#[test]
fn a_hung_handler_is_reported_as_gmond_would_time_it_out() {
    let hang = format!(
        "import time\n{DESCRIPTOR}\ndef sleepy(name):\n    time.sleep(60)\n    return 1\n\
         def metric_init(params):\n    return [d('hang_sleep', sleepy), d('hang_after', lambda n: 2)]\n"
    );
    let inline = format!(
        "import time\n{DESCRIPTOR}\ndef sleepy(name):\n    time.sleep(60)\n    return 1\n\
         def metric_init(params):\n    return [d('inline_sleep', sleepy)]\n"
    );
    let quick = format!(
        "{DESCRIPTOR}\ndef metric_init(params):\n    return [d('quick_one', lambda n: 7)]\n"
    );
    let (_tmp, pyconf, dir) = modules(
        // Modules load (and gmond calls them) in file-name order: the
        // inline module before the one that hangs. Once a protected call is
        // stuck, an inline module's calls go to a worker too (gmond's thread
        // must not wait for a GIL the stuck call may take), so the inline
        // deadline is shown before that.
        &[("zhang", &hang), ("inline", &inline), ("quick", &quick)],
        "modules {\n\
           module { name = \"zhang\" language = \"python\" }\n\
           module { name = \"inline\" language = \"python\"\n\
             param \"modpython.call_mode\" { value = \"inline\" }\n\
             param \"modpython.call_timeout\" { value = \"1\" } }\n\
           module { name = \"quick\" language = \"python\" }\n\
         }\n\
         collection_group { collect_every = 10 time_threshold = 60\n\
           metric { name_match = \"^(hang|inline|quick)_\" } }\n",
    );
    let started = std::time::Instant::now();
    let run = check(&["--pyconf", &pyconf, "--dir", &dir]);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "took {took:?}\n{run}"
    );
    assert_eq!(run.code, Some(1), "{run}");
    // Protected (the default): gmond stops waiting after call_timeout...
    run.assert_has("metric 'hang_sleep' failed in 1 of 1 call(s); first at call 1: gmond would time this out after 3.0s");
    // ...and calls none of the module's metrics until the call returns:
    // its batch sibling is not called, as in gmond.
    run.assert_has("metric 'hang_after' was not called in 1 of 1 round(s)");
    run.assert_has("not called: the module's call of metric 'hang_sleep' has not returned");
    assert!(run.row("hang_after").contains("skipped"), "{run}");
    // The engine's own line, as gmond logs it: there never was a good value.
    run.assert_has(
        "metric 'hang_sleep' did not return within 3.0s; gmond publishes 0 until a call succeeds",
    );
    // Inline, with the module's own deadline: interrupted.
    run.assert_has("metric 'inline_sleep' failed in 1 of 1 call(s); first at call 1: gmond would time this out after 1.0s");
    run.assert_has("the call ran past its 1.0s deadline (1.0s) and was interrupted");
    // Other modules are unaffected.
    assert!(run.row("quick_one").contains('7'), "{run}");
}

#[test]
fn a_metric_init_that_never_returns_is_cut_off_at_init_timeout() {
    let tmp = TempDir::new();
    let modules_dir = tmp.path().join("modules");
    std::fs::create_dir(&modules_dir).unwrap();
    std::fs::write(
        modules_dir.join("forever.py"),
        "import time\ndef metric_init(params):\n    while True:\n        time.sleep(1)\n",
    )
    .unwrap();
    std::fs::write(
        modules_dir.join("fine.py"),
        format!(
            "{DESCRIPTOR}\ndef metric_init(params):\n    return [d('fine_one', lambda n: 3)]\n"
        ),
    )
    .unwrap();
    let conf = write_conf(
        tmp.path(),
        &format!(
            "  module {{\n    name = \"python_module\"\n    path = \"{}\"\n    params = \"{}\"\n\
             param init_timeout {{ value = \"1\" }}\n    param strict_permissions {{ value = \"no\" }}\n  }}",
            common::modpython_so().display(),
            modules_dir.display()
        ),
    );
    std::fs::write(
        tmp.path().join("conf.d/m.pyconf"),
        "modules {\n  module { name = \"forever\" language = \"python\" }\n  module { name = \"fine\" language = \"python\" }\n}\n\
         collection_group { collect_every = 10 time_threshold = 60 metric { name = \"fine_one\" } }\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let run = check(&["--conf", conf.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "took {took:?}\n{run}"
    );
    assert_eq!(run.code, Some(1), "{run}");
    let problem = run.problem("forever");
    assert!(
        problem.contains("import or metric_init did not finish within init_timeout"),
        "{run}"
    );
    run.assert_has("1 module(s) loaded, 1 failed, 1 metric(s)");
    assert!(run.row("fine_one").contains('3'), "{run}");
}

#[test]
fn collection_groups_select_metrics_as_gmond_does() {
    let body = format!(
        "{DESCRIPTOR}\ndef metric_init(params):\n    return [d(n, lambda n: 1) for n in \
         ('cg_exact', 'cg_exact_more', 'CG_Pre_a', 'cg_pre_b', 'cg_rx_1', 'cg_rx_name')]\n"
    );
    let (_tmp, pyconf, dir) = modules(
        &[("cg", &body)],
        "modules { module { name = \"cg\" language = \"python\" } }\n\
         collection_group { collect_every = 10 time_threshold = 60\n\
           metric { name = \"cg_exact\" }\n\
           metric { name = \"cg_pre\" }\n\
           metric { name = \"cg_rx_name\" name_match = \"^cg_rx_[0-9]$\" }\n\
           metric { name = \"CG_NONE\" }\n\
           metric { name_match = \"([\" }\n\
         }\n",
    );
    let run = check(&["--pyconf", &pyconf, "--dir", &dir]);
    assert_eq!(run.code, Some(2), "{run}");
    let uncollected = |m: &str| run.has(&format!("metric '{m}' is in no collection_group"));
    // An exact match exists, so there is no prefix matching for that name.
    assert!(uncollected("cg_exact_more"), "{run}");
    // With name_match, name is ignored.
    assert!(uncollected("cg_rx_name"), "{run}");
    // The prefix fallback ignores case; the expression applies.
    for collected in ["cg_exact", "CG_Pre_a", "cg_pre_b", "cg_rx_1"] {
        assert!(!uncollected(collected), "{collected}\n{run}");
    }
    run.assert_has("lists metric 'CG_NONE', which no module registered");
    assert!(!run.has("lists metric 'cg_pre'"), "{run}");
    assert!(!run.has("lists metric 'cg_rx_name'"), "{run}");
    run.assert_has("name_match \"([\" is not a valid regular expression");
    run.assert_has("WARNINGS: 4 warning(s)");
}

/// `--pyconf` and `--dir` for `modules(...)`, then `more`.
fn check_pyconf(pyconf: &str, dir: &str, more: &[&str]) -> Run {
    let mut args = vec!["--pyconf", pyconf, "--dir", dir];
    args.extend_from_slice(more);
    check(&args)
}

#[test]
fn a_module_that_sets_an_alarm_does_not_kill_the_checker() {
    // SIGALRM's default action ends the process (exit 142 in a shell).
    // gmond's modpython.so leaves gmond's signals alone; the checker must
    // not die of a module's alarm either.
    let body = format!(
        "import signal, time\n{DESCRIPTOR}\ndef value(name):\n    time.sleep(0.3)\n    return 5\n\
         def metric_init(params):\n    signal.alarm(1)\n    return [d('alarmed_val', value)]\n"
    );
    let (_tmp, pyconf, dir) = modules(
        &[("alarmed", &body)],
        "modules { module { name = \"alarmed\" language = \"python\" } }\n\
         collection_group { collect_every = 10 time_threshold = 60 metric { name = \"alarmed_val\" } }\n",
    );
    // Five calls of 0.3 s, 0.5 s apart: the alarm goes off during them.
    let run = check_pyconf(&pyconf, &dir, &["--count", "5", "--interval", "0.5"]);
    assert!(
        matches!(run.code, Some(0 | 2)),
        "the checker did not exit normally\n{run}"
    );
    assert_eq!(run.values("alarmed_val"), vec!["5"; 5], "{run}");
}

#[test]
fn a_failing_metric_is_backed_off_as_under_gmond() {
    let body = format!(
        "{DESCRIPTOR}\ndef fail(name):\n    raise RuntimeError('always')\n\
         def metric_init(params):\n    return [d('failer_val', fail)]\n"
    );
    let (_tmp, pyconf, dir) = modules(
        &[("failer", &body)],
        "modules { module { name = \"failer\" language = \"python\" } }\n\
         collection_group { collect_every = 10 time_threshold = 60 metric { name = \"failer_val\" } }\n",
    );
    let run = check_pyconf(&pyconf, &dir, &["--count", "6", "--interval", "0"]);
    assert_eq!(run.code, Some(1), "{run}");
    // Three failures in a row, then at most one call every 10 s: with no
    // pause between rounds, the other three are not made.
    assert_eq!(
        run.values("failer_val"),
        vec![
            "FAILED", "FAILED", "FAILED", "skipped", "skipped", "skipped"
        ],
        "{run}"
    );
    // gmond's back-off line.
    run.assert_has("metric 'failer_val': 3 failures in a row; it is now called at most every 10s");
}

#[test]
fn a_late_call_stops_the_rest_of_its_batch() {
    let body = format!(
        "import time\n{DESCRIPTOR}\ndef slow(name):\n    time.sleep(2)\n    return 22\n\
         def metric_init(params):\n    return [d('batch_one', lambda n: 11), d('batch_two', slow), \
         d('batch_three', lambda n: 33)]\n"
    );
    let (_tmp, pyconf, dir) = modules(
        &[("batch", &body)],
        "modules { module { name = \"batch\" language = \"python\" } }\n\
         collection_group { collect_every = 10 time_threshold = 60\n\
           metric { name = \"batch_one\" }\n\
           metric { name = \"batch_two\" }\n\
           metric { name = \"batch_three\" }\n\
         }\n",
    );
    // Protected mode (the default), a 1 s deadline from the command line.
    let run = check_pyconf(&pyconf, &dir, &["--set", "call_timeout=1"]);
    assert_eq!(run.values("batch_one"), vec!["11"], "{run}");
    assert_eq!(run.values("batch_two"), vec!["TIMEOUT"], "{run}");
    // Called after the late one in the same batch: not called this round.
    assert_eq!(run.values("batch_three"), vec!["skipped"], "{run}");
    assert_eq!(run.code, Some(1), "{run}");
}

const VENV_MODULE_BLOCK: &str = "module { name = \"venvuser\" language = \"python\" }";

const VENV_GROUP: &str = "collection_group { collect_every = 10 time_threshold = 60 \
                          metric { name = \"venvuser_answer\" } }\n";

#[test]
fn pyconf_mode_takes_a_virtualenv_from_the_command_line_or_the_pyconf() {
    let venv_dir = TempDir::new();
    let venv = pyvenv::make_venv(venv_dir.path());
    let venv = venv.to_str().unwrap();
    let (tmp, pyconf, dir) = modules(
        &[("venvuser", pyvenv::VENV_MODULE)],
        &format!("modules {{ {VENV_MODULE_BLOCK} }}\n{VENV_GROUP}"),
    );

    // Without the virtualenv the import fails.
    let run = check_pyconf(&pyconf, &dir, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_has("ModuleNotFoundError");

    // --virtualenv.
    let run = check_pyconf(&pyconf, &dir, &["--virtualenv", venv]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.values("venvuser_answer"), vec!["42"], "{run}");

    // The .pyconf carries the python_module block, as a site's single
    // configuration file may: its param virtualenv is honoured.
    let whole = tmp.path().join("whole.pyconf");
    std::fs::write(
        &whole,
        format!(
            "modules {{\n  module {{\n    name = \"python_module\"\n    path = \"{}\"\n    \
             params = \"{dir}\"\n    param virtualenv {{ value = \"{venv}\" }}\n  }}\n  \
             {VENV_MODULE_BLOCK}\n}}\n{VENV_GROUP}",
            common::modpython_so().display()
        ),
    )
    .unwrap();
    let run = check_pyconf(whole.to_str().unwrap(), &dir, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.values("venvuser_answer"), vec!["42"], "{run}");
}

#[test]
fn a_pyconf_without_a_python_module_is_an_error() {
    for text in [
        "",
        "/* only a group */\ncollection_group { collect_every = 10 time_threshold = 60 \
         metric { name = \"nothing_here\" } }\n",
    ] {
        let (_tmp, pyconf, dir) = modules(&[], text);
        let run = check_pyconf(&pyconf, &dir, &[]);
        assert_eq!(run.code, Some(1), "pyconf {text:?}\n{run}");
        run.assert_has("no Python module to check");
    }
}

#[test]
fn a_failing_metric_is_reported_in_gmonds_words() {
    let body = "def boom(name):\n    raise ValueError(\"boom\")\n\n\
                def metric_init(params):\n    return [desc(\"boom_val\", boom)]\n";
    let g = GmondBuilder::new()
        .module_file("boomer.py", &pymod::module("check", body))
        .pyconf_text("boomer", &pymod::pyconf(&[("boomer", "")], &["^boom_"]))
        .start();
    let words = format!(
        "{}: metric 'boom_val' failed (gmond publishes 0 until a call succeeds; \
         repeats are summarised every 10 minutes)",
        g.module_ref("boomer")
    );
    let in_gmond = g.wait_log(&words, secs(20));
    // The same configuration through the checker: same module, same file.
    let run = check(&["--conf", g.config_path().to_str().unwrap()]);
    gmond_assert!(
        g,
        in_gmond && run.has(&words),
        "expected {words:?}\nin gmond's log: {in_gmond}\nin the checker's output: {}\n{run}",
        run.has(&words)
    );
}

#[test]
fn module_info_lines_follow_the_debug_level() {
    let body = format!(
        "import logging\n{DESCRIPTOR}\ndef value(name):\n    logging.info('hello-info')\n    logging.debug('hello-debug')\n    return 1\n\
         def metric_init(params):\n    logging.getLogger('chatter').setLevel(logging.DEBUG)\n    logging.getLogger('chatter').debug('named-debug')\n    return [d('chatter_val', value)]\n"
    );
    let (_tmp, pyconf, dir) = modules(
        &[("chatter", &body)],
        "modules { module { name = \"chatter\" language = \"python\" } }\n\
         collection_group { collect_every = 10 time_threshold = 60 metric { name = \"chatter_val\" } }\n",
    );
    // As under gmond at debug level 0 (the default): info lines, no debug
    // lines. The root logger's debug line is not even made (the host sets
    // it to INFO); the named logger's is, and is counted as not shown.
    let run = check_pyconf(&pyconf, &dir, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout.matches("info    [chatter] hello-info").count(),
        1,
        "{run}"
    );
    assert!(!run.has("hello-debug"), "{run}");
    assert!(!run.has("named-debug"), "{run}");
    run.assert_has("(1 line(s) at debug level not shown");
    // Below 2 as well.
    let run = check_pyconf(&pyconf, &dir, &["--debug", "1"]);
    run.assert_has("info    [chatter] hello-info");
    assert!(!run.has("hello-debug"), "{run}");
    let run = check_pyconf(&pyconf, &dir, &["--debug", "2"]);
    assert_eq!(run.code, Some(0), "{run}");
    for line in [
        "info    [chatter] hello-info",
        "debug   [chatter] hello-debug",
        "debug   [chatter] named-debug",
    ] {
        assert_eq!(run.stdout.matches(line).count(), 1, "{line:?}\n{run}");
    }
    assert!(!run.has("not shown"), "{run}");
}

/// 40 uint metrics declaring '%d' (issue 15): one summary line among the
/// problems, as gmond logs it; each metric's own line only with --verbose.
const FORTY_D: &str = r#"
def metric_init(params):
    return [desc("qs_d_%02d" % i, lambda n: 7, format="%d") for i in range(40)]
"#;

#[test]
fn a_correction_many_metrics_share_is_one_problem_and_verbose_shows_each() {
    let (_tmp, pyconf, dir) = modules(
        &[("qs_d", &pymod::module("check", FORTY_D))],
        &pymod::pyconf(&[("qs_d", "")], &["^qs_d_"]),
    );
    let file = Path::new(&dir).join("qs_d.py");
    let id = format!("module 'qs_d' ({})", file.display());
    let summary = format!(
        "warning: {id}: 40 metrics declare format '%d' for uint values (qs_d_00, qs_d_01, qs_d_02, …); \
         printed with '%u' instead, since '%d' shows values from 2147483648 up as negative numbers \
         (4294967295 as -1)"
    );
    let own = |i: usize| {
        format!(
            "  {id}: metric 'qs_d_{i:02}': format '%d' does not suit a uint metric: '%d' shows values \
             from 2147483648 up as negative numbers (4294967295 as -1); using '%u'"
        )
    };
    let problems = |run: &Run| -> Vec<String> {
        run.stdout
            .lines()
            .filter(|l| l.starts_with("error: ") || l.starts_with("warning: "))
            .map(str::to_owned)
            .collect()
    };

    let run = check_pyconf(&pyconf, &dir, &[]);
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(problems(&run), vec![summary.clone()], "{run}");
    assert!(!run.has("metric 'qs_d_"), "{run}");
    assert_eq!(run.values("qs_d_39"), vec!["7"], "{run}");

    let run = check_pyconf(&pyconf, &dir, &["--verbose"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(problems(&run), vec![summary], "{run}");
    for i in 0..40 {
        let line = own(i);
        assert_eq!(
            run.stdout.lines().filter(|l| *l == line).count(),
            1,
            "{line:?} once in:\n{run}"
        );
    }
    assert_eq!(run.stdout.matches("metric 'qs_d_").count(), 40, "{run}");
}

#[test]
fn a_descriptor_returned_twice_is_a_warning_for_the_checker_too() {
    let body =
        "def metric_init(params):\n    d = desc('qs_twice', lambda n: 3)\n    return [d, d]\n";
    let (_tmp, pyconf, dir) = modules(
        &[("qs_twice", &pymod::module("check", body))],
        &pymod::pyconf(&[("qs_twice", "")], &["^qs_twice"]),
    );
    let run = check_pyconf(&pyconf, &dir, &[]);
    assert_eq!(run.code, Some(2), "{run}");
    let file = Path::new(&dir).join("qs_twice.py");
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("error: ") || l.starts_with("warning: "))
            .collect::<Vec<_>>(),
        vec![format!(
            "warning: module 'qs_twice' ({}): metric 'qs_twice' is returned twice by metric_init, \
             identically; the first is used",
            file.display()
        )],
        "{run}"
    );
    assert_eq!(run.values("qs_twice"), vec!["3"], "{run}");
}

#[test]
fn a_block_with_a_misspelt_language_is_a_warning_not_ok() {
    let one = format!(
        "{DESCRIPTOR}\ndef metric_init(params):\n    return [d('{{}}_one', lambda n: 1)]\n"
    );
    let (tmp, pyconf, dir) = modules(
        &[
            ("typo", &one.replace("{}", "typo")),
            ("fine", &one.replace("{}", "fine")),
        ],
        "modules {\n  module {\n    name = \"typo\"\n    language = \"pyhton\"\n  }\n  \
         module {\n    name = \"fine\"\n    language = \"python\"\n  }\n}\n\
         collection_group { collect_every = 10 time_threshold = 60 metric { name_match = \"_one$\" } }\n",
    );
    let run = check_pyconf(&pyconf, &dir, &[]);
    assert_eq!(run.code, Some(2), "{run}");
    let warning = format!(
        "warning: module 'typo' ({}): the module block at {pyconf}:2 names this module but has \
         language = \"pyhton\", not \"python\", so it is ignored; typo.py is not loaded \
         (write language = \"python\")",
        tmp.path().join("typo.py").display()
    );
    assert_eq!(
        run.stdout.lines().filter(|l| *l == warning).count(),
        1,
        "expected once: {warning:?}\n{run}"
    );
    run.assert_has("WARNINGS: 1 warning(s)");
    assert_eq!(run.values("fine_one"), vec!["1"], "{run}");
}

#[test]
fn a_misspelt_option_in_an_included_pyconf_is_named_with_its_file_and_line() {
    let tmp = TempDir::new();
    let confd = tmp.path().join("conf.d");
    std::fs::create_dir(&confd).unwrap();
    let modules = tmp.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    std::fs::write(
        confd.join("good.pyconf"),
        "modules {\n  module {\n    name = \"good\"\n    language = \"python\"\n  }\n}\n",
    )
    .unwrap();
    let bad = confd.join("bad.pyconf");
    std::fs::write(
        &bad,
        "/* the option in the param is misspelt */\nmodules {\n  module {\n    \
         name = \"bad\"\n    language = \"python\"\n    param which { vaule = \"x\" }\n  }\n}\n",
    )
    .unwrap();
    let conf = tmp.path().join("gmond.conf");
    std::fs::write(
        &conf,
        format!(
            "globals {{\n  daemonize = no\n}}\nmodules {{\n  module {{\n    name = \"python_module\"\n    \
             path = \"{}\"\n    params = \"{}\"\n  }}\n}}\ninclude ('{}/*.pyconf')\n",
            common::modpython_so().display(),
            modules.display(),
            confd.display()
        ),
    )
    .unwrap();
    let run = check(&["--conf", conf.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{run}");
    let error = format!(
        "error: gmond's parser rejects {}: {}:6: no such option 'vaule' \
         (line 6 reads: param which {{ vaule = \"x\" }})",
        conf.display(),
        bad.display()
    );
    assert_eq!(
        run.stdout.lines().filter(|l| *l == error).count(),
        1,
        "expected once: {error:?}\n{run}"
    );
    run.assert_has("FAILED: 1 error(s), 0 warning(s)");
}

#[test]
fn isolated_modules_run_in_their_own_process_and_a_crash_is_reported_not_suffered() {
    // Configured isolated: the checker runs it so, and survives its crash.
    let crashy = format!(
        "import ctypes, os\n{DESCRIPTOR}\n_n = 0\n_MARK = os.path.join(os.path.dirname(__file__), 'crashed')\ndef value(name):\n    global _n\n    _n += 1\n    if _n == 2 and not os.path.exists(_MARK):\n        open(_MARK, 'w').close()\n        ctypes.string_at(0)\n    return os.getpid()\n\
         def metric_init(params):\n    return [d('crashy_pid', value), d('crashy_ppid', lambda n: os.getppid())]\n"
    );
    let (_tmp, pyconf, dir) = modules(
        &[("crashy", &crashy)],
        "modules { module { name = \"crashy\" language = \"python\" param \"modpython.call_mode\" { value = \"isolated\" } } }\n\
         collection_group { collect_every = 10 time_threshold = 60 metric { name = \"crashy_pid\" } metric { name = \"crashy_ppid\" } }\n",
    );
    let run = check_pyconf(&pyconf, &dir, &["--count", "4", "--interval", "1.2"]);
    assert_eq!(run.code, Some(1), "{run}");
    run.assert_has(
        "was killed by signal SIGSEGV (segmentation fault) during the call of metric 'crashy_pid'",
    );
    run.assert_has("Fatal Python error: Segmentation fault");
    run.assert_has("its process was started again");
    let values = run.values("crashy_pid");
    let own = std::process::id().to_string();
    assert_eq!(values.len(), 4, "{run}");
    assert!(
        values[0].parse::<u32>().is_ok() && values[0] != own,
        "not another process: {values:?}"
    );
    assert_eq!(values[1], "skipped", "{run}");
    // Started again after a second's back-off, as another process, which
    // does not crash (the first left a mark) and answers from then on.
    assert!(
        values[2].parse::<u32>().is_ok() && values[2] != values[0] && values[3] == values[2],
        "no values from a new process: {values:?}\n{run}"
    );

    // The module process's parent is the checker, not this test.
    assert_ne!(run.values("crashy_ppid")[0], own, "{run}");

    // --mode overrides the configuration: in protected mode the module
    // runs in the checker, whose parent is this test.
    let run = check_pyconf(&pyconf, &dir, &["--count", "1", "--mode", "protected"]);
    assert_eq!(run.values("crashy_ppid"), vec![own], "{run}");
}
