//! The embedded interpreter's environment inside the real gmond: which
//! Python it is (the one the host was built against: build.rs records its
//! home, which the host sets as `PyConfig.home`, so `sys.prefix` stays the
//! same whatever `python3` comes first on PATH), sys.path, and gmond's
//! signal handlers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Gmond, GmondBuilder, Xml, secs};

const TIMEOUT: Duration = Duration::from_secs(20);

const PATHCHECK_METRICS: [&str; 12] = [
    "pathcheck_prefix",
    "pathcheck_exec",
    "pathcheck_os_dir",
    "pathcheck_stdlib",
    "pathcheck_version",
    "pathcheck_argv",
    "pathcheck_modname",
    "pathcheck_empty_in_path",
    "pathcheck_cwd_in_path",
    "pathcheck_moddir_pos",
    "pathcheck_sigterm",
    "pathcheck_sigint",
];

fn start_pathcheck(path: Option<&str>) -> Gmond {
    let b = GmondBuilder::new().fixture("tests/fixtures/pathcheck");
    match path {
        Some(p) => b.path_env(p),
        None => b,
    }
    .start()
}

/// Asserts what tests/fixtures/README.md's pathcheck table expects.
#[track_caller]
fn assert_system_python(g: &Gmond, what: &str) {
    let x: Xml = g.wait_until(
        |x| {
            PATHCHECK_METRICS
                .iter()
                .all(|n| x.metric(n).is_some())
                .then(|| x.clone())
        },
        TIMEOUT,
    );
    let val = |n: &str| x.metric(n).map(|m| m.val.clone()).unwrap_or_default();
    for n in PATHCHECK_METRICS {
        let m = x.metric(n).unwrap();
        let type_ = if n.ends_with("_in_path") {
            "uint32"
        } else {
            "string"
        };
        gmond_assert_eq!(g, m.type_, type_, "{what}: {n} TYPE");
        gmond_assert_eq!(g, m.slope, "zero", "{what}: {n} SLOPE");
        gmond_assert_eq!(g, m.extras("GROUP"), vec!["pathcheck"], "{what}: {n} GROUP");
    }

    // The interpreter must live where the libpython the host was built
    // against lives (Debian's /usr by default; a pyenv build for
    // scripts/test-python), whatever python3 is first on PATH.
    let home = modpython::python::PYTHON_HOME;
    gmond_assert_eq!(g, val("pathcheck_prefix"), home, "{what}: sys.prefix");
    let exec = val("pathcheck_exec");
    gmond_assert!(
        g,
        exec.starts_with(&format!("{home}/")),
        "{what}: sys.executable is {exec:?}, expected a path under {home}"
    );
    if home == "/usr" {
        gmond_assert_eq!(g, val("pathcheck_stdlib"), "system", "{what}: stdlib");
    }
    // The stdlib directory belongs to the version the host was built with.
    let version = val("pathcheck_version");
    let mut parts = version.split('.');
    let (major, minor) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    gmond_assert!(
        g,
        major == "3" && minor.parse::<u32>().is_ok_and(|m| (9..=13).contains(&m)),
        "{what}: unexpected Python version {version:?}"
    );
    gmond_assert_eq!(
        g,
        format!("{major}.{minor}"),
        modpython::python::PYTHON_VERSION,
        "{what}: the interpreter's version is not the one the host was built with"
    );
    gmond_assert_eq!(
        g,
        val("pathcheck_os_dir"),
        format!("{home}/lib/python{major}.{minor}"),
        "{what}: os.__file__'s directory"
    );
    gmond_assert!(
        g,
        val("pathcheck_argv") != "None",
        "{what}: sys.argv is missing"
    );
    gmond_assert_eq!(g, val("pathcheck_modname"), "pathcheck", "{what}: __name__");
    gmond_assert_eq!(
        g,
        val("pathcheck_empty_in_path"),
        "0",
        "{what}: '' in sys.path"
    );
    gmond_assert_eq!(
        g,
        val("pathcheck_cwd_in_path"),
        "0",
        "{what}: cwd in sys.path"
    );
    let pos = val("pathcheck_moddir_pos");
    gmond_assert!(
        g,
        pos == "first" || pos == "last",
        "{what}: module dir position in sys.path is {pos:?}"
    );
    // gmond's C handlers are in place; Python did not install its own.
    gmond_assert_eq!(
        g,
        val("pathcheck_sigterm"),
        "None",
        "{what}: SIGTERM as seen by Python"
    );
    gmond_assert_eq!(
        g,
        val("pathcheck_sigint"),
        "None",
        "{what}: SIGINT as seen by Python"
    );

    let log = g.log();
    gmond_assert!(
        g,
        !log.contains("[modpython] error"),
        "{what}: host error in the log"
    );
    gmond_assert!(
        g,
        !log.contains("changed the handler"),
        "{what}: a signal handler was changed"
    );
    gmond_assert!(g, g.is_running(), "{what}: gmond is no longer running");
}

#[test]
fn clean_path_gives_system_python() {
    let g = start_pathcheck(None);
    assert_system_python(&g, "default PATH");
}

/// `pyenv root`, `$PYENV_ROOT` or `~/.pyenv`, if it exists.
fn pyenv_root() -> Option<PathBuf> {
    let from_cmd = std::process::Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let candidates = [
        from_cmd,
        std::env::var_os("PYENV_ROOT").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("versions").is_dir())
}

/// Every `<pyenv root>/versions/*/bin` that holds a `python3`.
fn pyenv_bins() -> Vec<PathBuf> {
    let Some(root) = pyenv_root() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(root.join("versions")) else {
        return Vec::new();
    };
    let mut bins: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("python3").is_file())
        .collect();
    bins.sort();
    bins
}

/// Another Python's `bin` first on gmond's PATH must not change which
/// Python the host runs. Uses the machine's pyenv versions if there are
/// any, else (and additionally) a fake installation: a `python3` script
/// next to a `lib/python3.X/os.py` landmark, which is what CPython's prefix
/// search looks for when it derives `sys.prefix` from PATH.
#[test]
fn other_python_first_on_path_is_ignored() {
    let fake = common::TempDir::new();
    let bin = fake.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("python3");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho {}\n",
            fake.path().display() // "prints a wrong prefix"
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for minor in 9..=13 {
        let lib = fake.path().join(format!("lib/python3.{minor}"));
        std::fs::create_dir_all(lib.join("lib-dynload")).unwrap();
        std::fs::write(
            lib.join("os.py"),
            "raise ImportError('the fake Python on PATH was used')\n",
        )
        .unwrap();
    }

    let tail = "/usr/sbin:/usr/bin:/bin";
    let fake_path = format!("{}:{tail}", bin.display());
    let g = start_pathcheck(Some(&fake_path));
    assert_system_python(&g, &format!("fake python3 first on PATH ({fake_path})"));
    drop(g);

    // One run per installed pyenv version, alone in front of the system
    // directories: the one with the host's own minor version (3.11.x on
    // Debian 12) is the dangerous one, as its stdlib would load.
    let bins = pyenv_bins();
    if bins.is_empty() {
        eprintln!("no pyenv versions on this machine; only the fake Python was tried");
    }
    for bin in bins {
        let path = format!("{}:{tail}", bin.display());
        let g = start_pathcheck(Some(&path));
        assert_system_python(&g, &format!("pyenv first on PATH ({path})"));
    }
}

const SIGTRAP_MODULE: &str = r#"
import signal

MARKER = None


def _on_term(signum, frame):
    with open(MARKER + ".handler", "a") as f:
        f.write("python handler ran\n")


def handler(name):
    return 1


def metric_init(params):
    global MARKER
    MARKER = params["marker"]
    signal.signal(signal.SIGTERM, _on_term)
    return [{
        "name": "sigtrap_alive",
        "call_back": handler,
        "time_max": 60,
        "value_type": "uint",
        "units": "",
        "slope": "zero",
        "format": "%u",
        "description": "module that claims SIGTERM",
        "groups": "sigtrap",
    }]


def metric_cleanup():
    with open(MARKER, "a") as f:
        f.write("cleanup\n")
"#;

/// A module that installs its own SIGTERM handler: the host restores
/// gmond's and says so, and SIGTERM still stops gmond cleanly (with
/// metric_cleanup run). Python allows `signal.signal()` only on the main
/// thread, where only inline modules run their code (in protected mode,
/// the default, the call simply raises).
#[test]
fn module_cannot_take_sigterm_from_gmond() {
    let marker_dir = common::TempDir::new();
    let marker = marker_dir.path().join("cleanup.marker");
    let g = GmondBuilder::new()
        .module_file("sigtrap.py", SIGTRAP_MODULE)
        .pyconf_text(
            "sigtrap",
            &format!(
                r#"
modules {{
  module {{
    name = "sigtrap"
    language = "python"
    param "modpython.call_mode" {{ value = "inline" }}
    param marker {{ value = "{}" }}
  }}
}}
collection_group {{
  collect_every = 1
  time_threshold = 2
  metric {{ name = "sigtrap_alive" }}
}}
"#,
                marker.display()
            ),
        )
        .start();
    let m = g.wait_metric("sigtrap_alive", TIMEOUT);
    gmond_assert_eq!(g, m.val, "1");

    let log = g.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("changed the handler of SIGTERM"))
        .collect();
    gmond_assert!(
        g,
        warnings.len() == 1 && warnings[0].contains("sigtrap"),
        "expected one line saying module sigtrap changed the handler of SIGTERM, got {warnings:?}"
    );
    gmond_assert!(
        g,
        !log.contains("[modpython] error"),
        "host error in the log"
    );

    g.signal(libc::SIGTERM);
    let status = g.wait_exit(secs(10));
    gmond_assert!(
        g,
        status.is_some(),
        "gmond did not exit within 10 s of SIGTERM"
    );
    gmond_assert_eq!(
        g,
        status.and_then(|s| s.code()),
        Some(0),
        "gmond's exit code"
    );
    let content = std::fs::read_to_string(&marker).unwrap_or_default();
    gmond_assert_eq!(g, content, "cleanup\n", "metric_cleanup's marker file");
    gmond_assert!(
        g,
        !marker.with_extension("marker.handler").exists(),
        "the module's Python SIGTERM handler ran"
    );
}
