//! The `virtualenv` host setting: a module imports a package that exists
//! only in a virtualenv created here (no network: the package is written
//! straight into its site-packages), in the real gmond and in modpython-check.

mod common;
#[path = "common/pyvenv.rs"]
mod pyvenv;

use std::process::Command;

use common::{GmondBuilder, TempDir, secs};
use pyvenv::{VENV_MODULE as MODULE, make_venv};

const PYCONF: &str = "modules { module { name = \"venvuser\" language = \"python\" } }\n\
    collection_group { collect_every = 1 time_threshold = 1 metric { name = \"venvuser_answer\" } }\n";

#[test]
fn a_module_imports_a_package_from_the_virtualenv() {
    let tmp = TempDir::new();
    let venv = make_venv(tmp.path());
    let g = GmondBuilder::new()
        .module_file("venvuser.py", MODULE)
        .pyconf_text("venvuser", PYCONF)
        .host_param("virtualenv", venv.to_str().unwrap())
        .start();
    let m = g.wait_metric("venvuser_answer", secs(20));
    gmond_assert_eq!(g, m.val, "42");
}

#[test]
fn without_the_virtualenv_the_import_fails_and_a_missing_one_is_named() {
    let tmp = TempDir::new();
    let missing = tmp.path().join("no-such-venv");
    let g = GmondBuilder::new()
        .module_file("venvuser.py", MODULE)
        .pyconf_text("venvuser", PYCONF)
        .host_param("virtualenv", missing.to_str().unwrap())
        .start();
    let needle = format!(
        "[modpython] error: virtualenv {}: there is no {}/lib/python{}/site-packages (the directory does not exist)",
        missing.display(),
        missing.display(),
        modpython::python::PYTHON_VERSION
    );
    gmond_assert!(g, g.wait_log(&needle, secs(20)), "no clear venv error");
    gmond_assert!(
        g,
        g.wait_log("No module named 'venvpkg'", secs(5)),
        "the module's import error is missing"
    );
}

#[test]
fn modpython_check_uses_the_virtualenv_of_the_python_module_block() {
    let tmp = TempDir::new();
    let venv = make_venv(tmp.path());
    let modules = tmp.path().join("modules");
    std::fs::create_dir_all(tmp.path().join("conf.d")).unwrap();
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::write(modules.join("venvuser.py"), MODULE).unwrap();
    std::fs::write(tmp.path().join("conf.d/venvuser.pyconf"), PYCONF).unwrap();
    let conf = tmp.path().join("gmond.conf");
    std::fs::write(
        &conf,
        format!(
            "modules {{ module {{ name = \"python_module\" path = \"/usr/lib/x86_64-linux-gnu/ganglia/modload.so\" params = \"{}\"\n\
               param virtualenv {{ value = \"{}\" }} }} }}\n\
             include ('{}/conf.d/*.pyconf')\n",
            modules.display(),
            venv.display(),
            tmp.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_modpython-check"))
        .arg("--conf")
        .arg(&conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.contains("venvuser_answer"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("42"), "{stdout}");
}
