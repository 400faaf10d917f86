//! modpython: the Python 3 metric module host for Ganglia's gmond 3.7.2.
//!
//! gmond `dlopen`s `modpython.so`, finds the exported `python_module`
//! record and calls `init`, then `handler(i)` for each metric every
//! collection round, then `cleanup`. The crate is laid out along that path:
//!
//! | module | role |
//! |---|---|
//! | [`entry`] | the C ABI: `python_module` and the `extern "C"` init / handler / cleanup shells |
//! | [`guard`] | `ffi_boundary`: no panic ever unwinds into gmond |
//! | [`ffi`] | raw declarations: bindgen output of `ganglia-headers/gmond_abi.h`, gmond/APR/libconfuse functions |
//! | [`gmond_config`] | gmond's parsed config: `module { … }` blocks, `param`s, which block a `.py` file gets |
//! | [`gmond_log`] | `log` → gmond's `err_msg` / `debug_msg` |
//! | [`python`] | the embedded interpreter: start-up, module loading, `ganglia` module, exceptions |
//! | [`cycles`] | a cheap clock for timing each call |
//! | [`descriptor`] | checking `metric_init`'s dicts into metric descriptors |
//! | [`value`] | converting a callback's result to the metric's type |
//! | [`metric_table`] | the `Ganglia_25metric` array and metadata gmond reads |
//! | [`dispatch`] | how a call reaches Python: protected (worker thread, deadline) or inline (watchdog signal) |
//! | [`host`] | the state between calls: metrics, last good values, failure reporting |
//! | [`self_metrics`] | the host's own modpython_* metrics |
//! | [`signals`] | keeping gmond's signal handlers in place around module code |
//! | [`permissions`] | who may own the module code gmond imports as root |
//! | [`settings`] | host settings (python_module params) and per-module `modpython.*` overrides |
//! | [`text`] | what text gmond can carry |
//! | [`check`] | `modpython-check` (src/bin): the same loading, checking and conversion, run without gmond, as a report |

pub mod check;
pub mod cycles;
pub mod descriptor;
pub mod dispatch;
pub mod entry;
pub mod ffi;
pub mod gmond_config;
pub mod gmond_log;
pub mod guard;
pub mod host;
pub mod metric_table;
pub mod pcre;
pub mod permissions;
pub mod python;
pub mod self_metrics;
pub mod settings;
pub mod signals;
pub mod text;
pub mod value;
