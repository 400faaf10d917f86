//! The built-in `ganglia` Python module that metric modules can import.

use pyo3::prelude::*;

/// gmond's effective debug level (`-d` beats `globals.debug_level`), as the
/// original host offered it.
#[pyfunction]
fn get_debug_msg_level() -> i32 {
    crate::gmond_log::debug_level()
}

#[pymodule]
#[pyo3(name = "ganglia")]
pub fn ganglia_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(get_debug_msg_level, m)?)?;
    m.add(
        "__doc__",
        "Services gmond's Python host (modpython) offers to metric modules.",
    )?;
    Ok(())
}
