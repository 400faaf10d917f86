//! Guards ganglia-headers/gmond_abi.h against drifting from the gmond ABI.
//!
//! tests/abi_drift/probe.c prints sizes, alignments, field offsets/sizes,
//! enum values and magic numbers. It is compiled against Ganglia's installed
//! headers and against ours; the outputs must be identical. The system
//! headers are a hard requirement: a missing header fails the test, because a
//! silently skipped drift check is worse than none.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const SYSTEM_HEADER: &str = "/usr/include/gm_metric.h";
const SYSTEM_FLAGS: &[&str] = &["-I/usr/include/apr-1.0", "-I/usr/include/tirpc"];
const INSTALL_HINT: &str = "install the Ganglia/APR/libconfuse/TI-RPC headers \
     (`apt-get install libganglia1-dev libapr1-dev libconfuse-dev libtirpc-dev`, \
     or run scripts/setup)";

/// Lines probe.c prints; a changed count means the probe and this test disagree.
const EXPECTED_LINES: usize = 65;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("abi_drift");
    std::fs::create_dir_all(&dir).expect("create CARGO_TARGET_TMPDIR/abi_drift");
    dir
}

/// Compiles probe.c with `flags` into `name`, runs it and returns its lines.
fn probe(name: &str, flags: &[&str]) -> Vec<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let src = repo().join("tests/abi_drift/probe.c");
    let exe = out_dir().join(name);
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .args(flags)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "compiling {name} probe failed ({}) with flags {flags:?}:\n{}\n{}\nhint: {INSTALL_HINT}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let run = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    assert!(run.status.success(), "{name} probe exited {}", run.status);
    let lines: Vec<String> = String::from_utf8(run.stdout)
        .expect("probe prints ASCII")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines.len(),
        EXPECTED_LINES,
        "{name} probe printed {} lines, expected {EXPECTED_LINES}:\n{}",
        lines.len(),
        lines.join("\n")
    );
    lines
}

/// Built once per test binary: the tests run in parallel and would otherwise
/// overwrite the executable while another test runs it (ETXTBSY).
fn system_probe() -> &'static [String] {
    static SYSTEM: OnceLock<Vec<String>> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        assert!(
            Path::new(SYSTEM_HEADER).is_file(),
            "{SYSTEM_HEADER} is missing, so the ABI drift check cannot run; {INSTALL_HINT}"
        );
        let mut flags = vec!["-DUSE_SYSTEM"];
        flags.extend_from_slice(SYSTEM_FLAGS);
        probe("system", &flags)
    })
}

fn assert_same(ours_name: &str, ours: &[String], system: &[String]) {
    let diffs: Vec<String> = system
        .iter()
        .zip(ours)
        .filter(|(s, o)| s != o)
        .map(|(s, o)| format!("  system: {s}\n  {ours_name}: {o}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "{ours_name} disagrees with Ganglia's headers on {} line(s):\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn gmond_abi_h_matches_system_headers() {
    let system = system_probe();
    let inc = format!("-I{}", repo().join("ganglia-headers").display());
    let ours = probe("gmond_abi_h", &[&inc]);
    assert_same("gmond_abi.h", &ours, system);
}

#[test]
fn modpython_h_matches_system_headers() {
    // The public header must pull in the same definitions when used alone.
    let system = system_probe();
    let inc = format!("-I{}", repo().join("include").display());
    let ours = probe(
        "modpython_h",
        &[&inc, "-include", "modpython.h", "-DPROBE_PREINCLUDED"],
    );
    assert_same("modpython.h", &ours, system);
}

#[test]
fn system_layout_is_the_documented_one() {
    // The layout measured for gmond 3.7.2 on x86_64; if Debian ever ships a
    // different ABI, this names the change instead of only showing a diff.
    let system = system_probe();
    for expected in [
        "sizeof mmodule 112",
        "sizeof Ganglia_25metric 72",
        "sizeof g_val_t 64",
        "field g_val_t.str 0 64",
        "sizeof mmparam 16",
        "sizeof apr_array_header_t 32",
        "value MMODULE_MAGIC_NUMBER_MAJOR 20080913",
        "value MMODULE_MAGIC_COOKIE 1196241714",
        "value MAX_G_STRING_SIZE 64",
    ] {
        assert!(
            system.iter().any(|l| l == expected),
            "system headers lack `{expected}`:\n{}",
            system.join("\n")
        );
    }
}
