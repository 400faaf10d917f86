//! Generates the Rust view of gmond's module ABI from our own header, and
//! links the libraries gmond itself already has in its global scope.

use std::env;
use std::path::PathBuf;

fn main() {
    let header = "ganglia-headers/gmond_abi.h";
    println!("cargo:rerun-if-changed={header}");
    println!("cargo:rerun-if-changed=build.rs");

    let bindings = bindgen::Builder::default()
        .header(header)
        // Only what a metric module touches; anything else would be a second,
        // unreviewed source of truth about gmond.
        .allowlist_type("mmodule")
        .allowlist_type("mmparam")
        .allowlist_type("Ganglia_25metric")
        .allowlist_type("g_val_t")
        .allowlist_type("Ganglia_value_types")
        .allowlist_type("apr_array_header_t")
        .allowlist_var("MMODULE_MAGIC_NUMBER_MAJOR")
        .allowlist_var("MMODULE_MAGIC_NUMBER_MINOR")
        .allowlist_var("MMODULE_MAGIC_COOKIE")
        .allowlist_var("MAX_G_STRING_SIZE")
        .allowlist_var("GANGLIA_MAX_MESSAGE_LEN")
        .allowlist_type("apr_pool_t")
        .allowlist_type("cfg_t")
        .opaque_type("apr_pool_t")
        .opaque_type("cfg_t")
        .rustified_enum("Ganglia_value_types")
        .layout_tests(true)
        .derive_debug(false)
        .derive_default(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen could not process ganglia-headers/gmond_abi.h");

    interpreter_facts();

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("gmond_abi.rs"))
        .expect("could not write the generated gmond ABI bindings");

    // gmond loads plug-ins RTLD_GLOBAL and already carries these libraries, so
    // inside gmond the DT_NEEDED entries cost nothing; they let test binaries
    // and modpython-check link the same code outside gmond.
    for lib in ["ganglia", "confuse", "apr-1"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    // Keep the library (and with it libpython) mapped after gmond's dlclose:
    // module threads may still be running Python code while gmond exits.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}

/// Records where the interpreter we build against keeps its standard library.
///
/// An embedded CPython otherwise guesses its prefix from the first `python3`
/// on gmond's PATH, and a libpython from one installation running another
/// installation's stdlib fails in odd ways. The host hands these to PyConfig.
fn interpreter_facts() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let python = env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    // Written to run on any Python, so that a wrong one gets a clear refusal.
    let probe = "import sys, os, sysconfig; \
                 sys.stdout.write('%d %d\\n' % tuple(sys.version_info[:2])); \
                 sys.stdout.write(getattr(sys, 'base_prefix', sys.prefix) + '\\n'); \
                 sys.stdout.write(os.path.realpath(getattr(sys, '_base_executable', sys.executable)) + '\\n'); \
                 sys.stdout.write(str(sysconfig.get_config_var('Py_GIL_DISABLED') or 0) + '\\n')";
    let output = std::process::Command::new(&python)
        .args(["-c", probe])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the Python interpreter '{python}' (PYO3_PYTHON): {e}")
        });
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let version = lines.next().unwrap_or("");
    let (major, minor) = version
        .split_once(' ')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .unwrap_or((0, 0));
    if !output.status.success() || major != 3 || !(9..=13).contains(&minor) {
        panic!(
            "modpython builds against CPython 3.9 to 3.13, but the interpreter '{python}' (PYO3_PYTHON) \
             reports version '{}'. Set PYO3_PYTHON to a supported python3, e.g. PYO3_PYTHON=/usr/bin/python3",
            if version.is_empty() {
                String::from_utf8_lossy(&output.stderr).trim().to_owned()
            } else {
                version.replace(' ', ".")
            }
        );
    }
    let home = lines.next().unwrap_or("/usr");
    let executable = lines.next().unwrap_or("");
    if lines.next() == Some("1") {
        panic!(
            "'{python}' (PYO3_PYTHON) is a free-threaded CPython build (python3.13t). modpython relies \
             on the GIL: its call worker keeps it across a burst of gmond's calls, and module code \
             written for gmond assumes it; it is not built or tested for free-threading. Use the \
             regular build of the same version (e.g. PYO3_PYTHON=/usr/bin/python3.13)"
        );
    }
    println!("cargo:rustc-env=MODPYTHON_PYTHON_HOME={home}");
    println!("cargo:rustc-env=MODPYTHON_PYTHON_EXECUTABLE={executable}");
    println!("cargo:rustc-env=MODPYTHON_PYTHON_VERSION={major}.{minor}");
}
