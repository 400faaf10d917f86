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
//! | [`host`] | what is gmond's: init from its config, the metric table, `g_val_t` answers, self metrics, cleanup |
//! | [`engine`] | how calls are made, for the host and `modpython-check` alike: start-up, batches, protected (worker) and inline calls, deadlines, stuck calls, the GIL, back-off, cleanup |
//! | [`collection`] | which metrics gmond collects together: `collection_group` entries matched as gmond does (its libpcre, in [`collection::pcre`]) |
//! | [`gmond_config`] | gmond's parsed config: `module { … }` blocks, `param`s, collection-group entries, which block a `.py` file gets |
//! | [`config_files`] | the files behind that config: gmond's `include` rules, the file and line of each module block, where a parse error is |
//! | [`gmond_log`] | `log` → gmond's `err_msg` / `debug_msg` |
//! | [`isolation`] | isolated modules: the protocol, and gmond's side of one module process (start, talk with deadlines, how it ended) |
//! | [`module_process`] | the `modpython-module` program (src/bin): one isolated module, loaded and called by the same code as in gmond |
//! | [`python`] | the embedded interpreter: start-up, module loading, `ganglia` module, exceptions, the inline deadline signal |
//! | [`clock`] | the monotonic clock, precise and coarse, for deadlines |
//! | [`descriptor`] | checking `metric_init`'s dicts into metric descriptors |
//! | [`value`] | converting a callback's result to the metric's type |
//! | [`metric_table`] | the `Ganglia_25metric` array and metadata gmond reads |
//! | [`self_metrics`] | the host's own modpython_* metrics |
//! | [`signals`] | keeping gmond's signal handlers in place around module code |
//! | [`fatal_signal`] | a crash (SIGSEGV, SIGABRT, …) names the module whose call was in flight, with its traceback, in gmond's log |
//! | [`permissions`] | who may own the module code gmond imports as root |
//! | [`settings`] | host settings (python_module params) and per-module `modpython.*` overrides |
//! | [`text`] | what text gmond can carry |
//! | [`check`] | `modpython-check` (src/bin): drives the same engine without gmond, in gmond's order, and reports |

pub mod check;
pub mod clock;
pub mod collection;
pub mod config_files;
pub mod descriptor;
pub mod engine;
pub mod entry;
pub mod fatal_signal;
pub mod ffi;
pub mod gmond_config;
pub mod gmond_log;
pub mod guard;
pub mod host;
pub mod isolation;
pub mod metric_table;
pub mod module_process;
pub mod permissions;
pub mod python;
pub mod self_metrics;
pub mod settings;
pub mod signals;
pub mod text;
pub mod value;
