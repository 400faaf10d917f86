//! A virtualenv for the tests that need one (tests/venv.rs, tests/check.rs),
//! made without network access.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `python3 -m venv --without-pip` in `dir/venv` (no ensurepip, no network),
/// then a tiny package written into its site-packages: `import venvpkg`
/// gives `venvpkg.ANSWER == 42` only inside the virtualenv.
pub fn make_venv(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let status = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .expect("run python3 -m venv");
    assert!(status.success(), "python3 -m venv failed");
    let version = modpython::python::PYTHON_VERSION;
    let pkg = venv
        .join("lib")
        .join(format!("python{version}"))
        .join("site-packages")
        .join("venvpkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("__init__.py"), "ANSWER = 42\n").unwrap();
    venv
}

/// A module that needs the virtualenv's package (`venvpkg`, which
/// [`make_venv`] puts there): it imports only when the virtualenv is on
/// `sys.path`.
pub const VENV_MODULE: &str = r#"
import venvpkg

def value(name):
    return venvpkg.ANSWER

def metric_init(params):
    return [{"name": "venvuser_answer", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "",
             "description": "from a package in a virtualenv"}]
"#;
