//! `modpython-check` on the good and broken fixtures, on whole gmond
//! configurations (with includes), and on bad command lines: its output and
//! its exit codes (0 clean, 1 errors, 2 warnings only, 64 usage).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{TempDir, repo_path};

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
            &[
                "metric 'broken_raise_after_one' failed in 1 of 2",
                "first at call 2",
                "ValueError",
            ],
        ),
        (
            "bad_handler_raise_always",
            &["metric 'broken_raise_always_uint' failed in 2 of 2"],
        ),
        (
            "bad_handler_sys_exit",
            &["metric 'broken_sys_exit'", "SystemExit: 3"],
        ),
        (
            "bad_handler_returns_none",
            &["metric 'broken_none_after_one'", "returned None"],
        ),
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
    let run = check(&[
        "--pyconf",
        pyconf.to_str().unwrap(),
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(0), "{run}");
    for line in [
        "info    [talker] hello from import",
        "warning [talker] careful",
        "error   [talker] talker.sub: from logging",
        "warning [talker] partial line",
        "info    [talker] called for talker_one",
    ] {
        run.assert_has(line);
    }
}
