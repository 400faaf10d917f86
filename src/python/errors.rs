//! Python exceptions as operator messages: the exception line and the full
//! traceback, never printed to a stderr that is /dev/null under the daemon.

use pyo3::prelude::*;
use pyo3::types::PyList;

/// `Type: message` plus the traceback, formatted as Python would print it.
pub fn describe(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let traceback = py.import("traceback")?;
        let lines = traceback.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let lines = lines.cast_into::<PyList>()?;
        let mut text = String::new();
        for line in lines.iter() {
            text.push_str(&line.extract::<String>()?);
        }
        Ok(text.trim_end().to_owned())
    })();
    formatted.unwrap_or_else(|_| err.to_string())
}

/// The last line of [`describe`]: the exception type and message alone.
pub fn summary(py: Python<'_>, err: &PyErr) -> String {
    let full = describe(py, err);
    full.lines().last().unwrap_or_default().to_owned()
}

/// A hint for errors that usually mean "this module was written for Python 2".
pub fn python2_hint(py: Python<'_>, err: &PyErr) -> Option<&'static str> {
    let is_syntax = err.is_instance_of::<pyo3::exceptions::PySyntaxError>(py);
    let text = err.to_string();
    let py2_markers = [
        "Missing parentheses in call to 'print'",
        "Missing parentheses in call to 'exec'",
    ];
    if is_syntax && py2_markers.iter().any(|m| text.contains(m)) {
        Some(
            "this module is written for Python 2; port it to Python 3 (print(...), except E as e:, …)",
        )
    } else if is_syntax {
        Some("if this module was written for Python 2, it needs porting to Python 3")
    } else if text.contains("No module named 'ConfigParser'")
        || text.contains("No module named 'urllib2'")
        || text.contains("No module named 'commands'")
        || text.contains("No module named 'Queue'")
    {
        Some("that is a Python 2 standard module; port the module to Python 3")
    } else {
        None
    }
}
