//! Finding the Python metric modules in the params directory, importing
//! them, calling `metric_init(params)` and, at the end, `metric_cleanup()`.
//!
//! Every failure is contained to the module it belongs to and reported with
//! the module's name and file, and the metric's name where there is one.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use super::{errors, extract};
use crate::descriptor::{self, MetricDescriptor, Reported, Warning};
use crate::gmond_config::{ModuleBlock, Selection, select_block};
use crate::settings::{self, CallMode, HostSettings, ModuleOverrides};
use crate::{permissions, signals};

/// A Python file found in the params directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonFile {
    /// The file name without `.py`: the module name gmond's config refers to.
    pub stem: String,
    pub path: PathBuf,
}

/// "module 'x' (/path/x.py)": how every message names a module.
#[derive(Debug, Clone)]
pub struct ModuleRef {
    pub name: String,
    pub path: PathBuf,
}

impl fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "module '{}' ({})", self.name, self.path.display())
    }
}

/// A problem found while loading: what the host logs as
/// "module 'x' (file): message", and what `modpython-check` reports.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub level: log::Level,
    pub module: Option<ModuleRef>,
    /// The metric concerned, when there is one.
    pub metric: Option<String>,
    /// The text after "module 'x' (file): ", exactly as logged.
    pub message: String,
}

thread_local! {
    static COLLECTOR: std::cell::RefCell<Option<Vec<Diagnostic>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the loader's problems collected and returned instead of
/// logged (for `modpython-check`). The host never calls this.
pub fn collect_diagnostics<R>(f: impl FnOnce() -> R) -> (R, Vec<Diagnostic>) {
    let previous = COLLECTOR.with(|c| c.replace(Some(Vec::new())));
    let result = f();
    let collected = COLLECTOR.with(|c| c.replace(previous)).unwrap_or_default();
    (result, collected)
}

/// Logs one loading problem, or records it under [`collect_diagnostics`].
pub fn report(
    level: log::Level,
    module: Option<&ModuleRef>,
    metric: Option<&str>,
    message: String,
) {
    let diagnostic = Diagnostic {
        level,
        module: module.cloned(),
        metric: metric.map(str::to_owned),
        message,
    };
    let unrecorded = COLLECTOR.with(|c| match c.borrow_mut().as_mut() {
        Some(collected) => {
            collected.push(diagnostic);
            None
        }
        None => Some(diagnostic),
    });
    if let Some(d) = unrecorded {
        match &d.module {
            Some(id) => log::log!(level, "{id}: {}", d.message),
            None => log::log!(level, "{}", d.message),
        }
    }
}

/// A module whose `metric_init` ran: it gets `metric_cleanup()` at the end,
/// even if it registered no metrics.
pub struct LoadedModule {
    pub id: ModuleRef,
    /// `None` for an isolated module: it lives in a process of its own.
    pub module: Option<Py<PyModule>>,
    /// The module block's `modpython.*` settings.
    pub overrides: ModuleOverrides,
}

/// A registered metric and the callable that produces its value.
pub struct LoadedMetric {
    /// Index into the loaded modules.
    pub module: usize,
    pub descriptor: MetricDescriptor,
    pub callback: Py<PyAny>,
    /// The name passed to every call, created once.
    pub py_name: Py<PyString>,
    /// Its place among its module's metrics as `metric_init` returned
    /// them, which is how an isolated module's process knows it.
    pub position: u32,
}

/// Everything `init` learned from the params directory.
#[derive(Default)]
pub struct Loaded {
    pub modules: Vec<LoadedModule>,
    pub metrics: Vec<LoadedMetric>,
    /// Modules that failed to load, for the totals in the summary line.
    pub failed: Vec<ModuleRef>,
}

/// Lists `*.py` files, sorted by name so the metric order is the same on
/// every start (the original used whatever order readdir gave).
pub fn python_files(dir: &Path) -> std::io::Result<Vec<PythonFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".py") else {
            continue;
        };
        if stem.is_empty() || name.starts_with('.') {
            continue;
        }
        files.push(PythonFile {
            stem: stem.to_owned(),
            path: entry.path(),
        });
    }
    files.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(files)
}

/// What, besides gmond's module blocks, decides how modules load.
pub struct LoadOptions<'a> {
    pub settings: &'a HostSettings,
    /// Owners allowed for module code (see `permissions`).
    pub trusted_uids: Vec<u32>,
    /// Starts an isolated module's process and returns what waits for its
    /// checked descriptors (the engine's; `None` in a module process).
    /// Every isolated module is started before any module is loaded, so
    /// that they load side by side.
    pub isolate: Option<&'a Isolate<'a>>,
    /// Load only this module, and say nothing about the others (a module
    /// process: gmond has said it all already).
    pub only: Option<&'a str>,
}

/// See [`LoadOptions::isolate`].
pub type Isolate<'a> =
    dyn Fn(&ModuleRef, &ModuleBlock, &ModuleOverrides) -> Result<PendingLoad<'a>, String> + 'a;

/// Waits for an isolated module's descriptors (see [`LoadOptions::isolate`]).
pub type PendingLoad<'a> = Box<dyn FnOnce() -> Result<Vec<MetricDescriptor>, String> + 'a>;

/// A configured module, checked and about to be loaded.
struct Planned<'b, 'a> {
    id: ModuleRef,
    block: &'b ModuleBlock,
    overrides: ModuleOverrides,
    mode: CallMode,
    /// An isolated module's process, started.
    pending: Option<Result<PendingLoad<'a>, String>>,
}

/// Imports every configured module of `dir` and collects its metrics.
pub fn load_all(
    py: Python<'_>,
    dir: &Path,
    blocks: &[ModuleBlock],
    options: &LoadOptions<'_>,
) -> Result<Loaded, String> {
    let files = python_files(dir).map_err(|e| {
        format!(
            "cannot read the Python module directory {}: {e}",
            dir.display()
        )
    })?;
    let shadowed = case_twins(&files, blocks);
    if options.only.is_none() {
        report_block_problems(&files, blocks, &shadowed);
    }
    // The directory is one unit of trust: any module can import any file in
    // it (helpers, and the bytecode Python caches in __pycache__), as root.
    // Configured module files are checked one by one below.
    let configured =
        |f: &PythonFile| !matches!(select_block(blocks, &f.stem), Selection::Unconfigured);
    let mut shared: Vec<PathBuf> = vec![dir.to_path_buf()];
    shared.extend(
        files
            .iter()
            .filter(|f| !configured(f))
            .map(|f| f.path.clone()),
    );
    let cache = dir.join("__pycache__");
    if cache.is_dir() {
        shared.push(cache.clone());
        if let Ok(entries) = std::fs::read_dir(&cache) {
            shared.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    for path in &shared {
        if let Err(why) = permissions::check(path, &options.trusted_uids) {
            if options.settings.strict_permissions {
                // The host still starts, with no module: its own metrics
                // (modpython_modules_failed counting the refused ones) show
                // the refusal in monitoring, not only in the log.
                let refused: Vec<ModuleRef> = files
                    .iter()
                    .filter(|f| matches!(select_block(blocks, &f.stem), Selection::Enabled(_)))
                    .map(|f| ModuleRef {
                        name: f.stem.clone(),
                        path: f.path.clone(),
                    })
                    .collect();
                report(
                    log::Level::Error,
                    None,
                    None,
                    format!(
                        "refusing to load Python modules: {why}; none of the {} configured module(s) is loaded (modpython_modules_failed counts them); or set param strict_permissions {{ value = \"no\" }} in the python_module block",
                        refused.len()
                    ),
                );
                return Ok(Loaded {
                    failed: refused,
                    ..Loaded::default()
                });
            }
            report(log::Level::Warn, None, None, why);
        }
    }
    let mut refused: Vec<&PathBuf> = Vec::new();
    // Paths that do not exist are reported further down, with their own message.
    for extra in options
        .settings
        .python_path
        .iter()
        .chain(&options.settings.virtualenv)
        .filter(|p| p.exists())
    {
        if let Err(why) = permissions::check(extra, &options.trusted_uids) {
            if options.settings.strict_permissions {
                report(
                    log::Level::Error,
                    None,
                    None,
                    format!("{why}; {} is not added to sys.path", extra.display()),
                );
                refused.push(extra);
                continue;
            }
            report(log::Level::Warn, None, None, why);
        }
    }
    for extra in options
        .settings
        .python_path
        .iter()
        .filter(|p| !refused.contains(p))
    {
        if !extra.is_dir() {
            report(
                log::Level::Warn,
                None,
                None,
                format!(
                    "python_path entry {} is not a directory; added to sys.path anyway",
                    extra.display()
                ),
            );
        }
        add_to_sys_path(py, extra)
            .map_err(|e| format!("cannot add {} to sys.path: {e}", extra.display()))?;
    }
    if let Some(venv) = options
        .settings
        .virtualenv
        .as_ref()
        .filter(|v| !refused.contains(v))
    {
        if let Err(why) = add_virtualenv(py, venv) {
            report(log::Level::Error, None, None, why);
        }
    }
    add_to_sys_path(py, dir)
        .map_err(|e| format!("cannot add {} to sys.path: {e}", dir.display()))?;

    let mut loaded = Loaded::default();
    let mut owners: HashMap<String, ModuleRef> = HashMap::new();
    // First every module is checked, and every isolated one's process
    // started; then each is loaded, or its process's answer taken, in order
    // (a refused module, `Err`, is counted failed in its place).
    let mut planned: Vec<Result<Planned<'_, '_>, ModuleRef>> = Vec::new();
    for file in &files {
        if options.only.is_some_and(|only| only != file.stem) {
            continue;
        }
        let block = match select_block(blocks, &file.stem) {
            Selection::Enabled(_) if shadowed.contains(&file.path) => continue,
            Selection::Enabled(block) => block,
            Selection::Disabled => {
                log::info!(
                    "module '{}' ({}) is disabled (enabled = no); not imported",
                    file.stem,
                    file.path.display()
                );
                continue;
            }
            Selection::Unconfigured => continue,
        };
        let id = ModuleRef {
            name: file.stem.clone(),
            path: file.path.clone(),
        };
        if let Err(why) = permissions::check(&file.path, &options.trusted_uids) {
            if options.settings.strict_permissions {
                report(
                    log::Level::Error,
                    Some(&id),
                    None,
                    format!("not imported: {why}"),
                );
                planned.push(Err(id));
                continue;
            }
            report(log::Level::Warn, Some(&id), None, why);
        }
        let (_, reserved) = settings::split_module_params(&block.params);
        let (overrides, problems) = ModuleOverrides::parse(&reserved);
        for problem in problems {
            report(log::Level::Warn, Some(&id), None, problem);
        }
        let mode = settings::effective(options.settings, &overrides).0;
        let pending = options
            .isolate
            .filter(|_| mode == CallMode::Isolated)
            .map(|isolate| isolate(&id, block, &overrides));
        planned.push(Ok(Planned {
            id,
            block,
            overrides,
            mode,
            pending,
        }));
    }
    for planned in planned {
        let Planned {
            id,
            block,
            overrides,
            mode,
            pending,
        } = match planned {
            Ok(planned) => planned,
            Err(refused) => {
                loaded.failed.push(refused);
                continue;
            }
        };
        let result = if let Some(pending) = pending {
            pending
                .and_then(|wait| wait())
                .map(|descriptors| (None, placeholders(py, descriptors)))
        } else if mode == CallMode::Inline {
            // Inline modules run on gmond's thread throughout, where Python
            // allows signal.signal(); the watchdog interrupts a late init.
            let armed =
                super::interrupt::arm(py, options.settings.init_timeout, super::interrupt::INIT);
            let result = load_module(py, dir, &id, block).map(|(m, found)| (Some(m), found));
            let late = armed.fired();
            drop(armed);
            match result {
                Err(why) if late => Err(format!(
                    "import or metric_init did not finish within init_timeout ({:.0}s) and was interrupted: {why}",
                    options.settings.init_timeout.as_secs_f64()
                )),
                other => other,
            }
        } else if mode == CallMode::Isolated {
            // Here in the module's own process (there is no `isolate` to
            // hand it on to): its main thread is the module's, and gmond
            // kills the process if it outlasts init_timeout.
            load_module(py, dir, &id, block).map(|(m, found)| (Some(m), found))
        } else {
            load_with_deadline(py, dir, &id, block, options.settings.init_timeout)
                .map(|(m, found)| (Some(m), found))
        };
        match result {
            Ok((module, results)) => {
                let index = loaded.modules.len();
                loaded.modules.push(LoadedModule {
                    id: id.clone(),
                    module,
                    overrides,
                });
                let mut count = 0;
                for found in results {
                    if let Some(first) = owners.get(&found.descriptor.name) {
                        report(
                            log::Level::Error,
                            Some(&id),
                            Some(&found.descriptor.name),
                            format!(
                                "metric '{}' is already defined by {first}; this second definition is refused (rename one of them)",
                                found.descriptor.name
                            ),
                        );
                        continue;
                    }
                    owners.insert(found.descriptor.name.clone(), id.clone());
                    loaded.metrics.push(LoadedMetric {
                        module: index,
                        ..found
                    });
                    count += 1;
                }
                log::info!("{id}: {count} metric(s) registered");
            }
            Err(message) => {
                report(log::Level::Error, Some(&id), None, message);
                loaded.failed.push(id.clone());
            }
        }
        report_signal_changes(&id);
    }
    for block in blocks
        .iter()
        .filter(|b| b.is_python() && b.enabled && options.only.is_none())
    {
        let name = block.name.as_deref().unwrap_or("");
        if !files.iter().any(|f| block.names(&f.stem)) {
            report(
                log::Level::Warn,
                None,
                None,
                format!(
                    "the module block for Python module '{name}' has no file {name}.py in {}; nothing is loaded for it",
                    dir.display()
                ),
            );
        }
    }
    Ok(loaded)
}

/// An isolated module's metrics as gmond's process holds them: their calls
/// are made in the module's own process, so these callbacks are `None` and
/// never called.
fn placeholders(py: Python<'_>, descriptors: Vec<MetricDescriptor>) -> Vec<LoadedMetric> {
    descriptors
        .into_iter()
        .enumerate()
        .map(|(position, descriptor)| LoadedMetric {
            module: 0,
            callback: py.None(),
            py_name: PyString::new(py, &descriptor.name).unbind(),
            descriptor,
            position: position as u32,
        })
        .collect()
}

/// Where a block was written, for messages: "at FILE:LINE", or its place
/// among gmond's module blocks when its file is not known.
fn block_place(blocks: &[ModuleBlock], block: &ModuleBlock) -> String {
    block_places(blocks, &[block])
}

fn block_number(blocks: &[ModuleBlock], block: &ModuleBlock) -> usize {
    blocks
        .iter()
        .position(|b| std::ptr::eq(b, block))
        .map_or(0, |i| i + 1)
}

/// Several blocks' places: "at A and B", or "#1 and #3 of gmond's
/// configuration" when a file is not known.
fn block_places(blocks: &[ModuleBlock], some: &[&ModuleBlock]) -> String {
    let origins: Option<Vec<String>> = some
        .iter()
        .map(|b| b.origin.as_ref().map(ToString::to_string))
        .collect();
    match origins {
        Some(origins) => format!("at {}", in_words(&origins)),
        None => {
            let numbers: Vec<String> = some
                .iter()
                .map(|b| format!("#{}", block_number(blocks, b)))
                .collect();
            format!("{} of gmond's configuration", in_words(&numbers))
        }
    }
}

/// "A, B and C".
fn in_words(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Reports module blocks that do not do what they seem to: two or more
/// Python blocks for one module (only the first enabled one is used), and
/// blocks naming a module file whose `language` is not "python" (so the
/// host ignores them, and gmond too, or takes them for a C module).
fn report_block_problems(files: &[PythonFile], blocks: &[ModuleBlock], shadowed: &[PathBuf]) {
    // A file left alone for its case twin (see case_twins) is not loaded:
    // its twin gets the messages.
    for file in files.iter().filter(|f| !shadowed.contains(&f.path)) {
        let id = ModuleRef {
            name: file.stem.clone(),
            path: file.path.clone(),
        };
        let python: Vec<&ModuleBlock> = blocks.iter().filter(|b| b.names(&file.stem)).collect();
        let used = match select_block(blocks, &file.stem) {
            Selection::Enabled(block) => Some(block),
            _ => None,
        };
        if let (Some(used), true) = (used, python.len() > 1) {
            let count = match python.len() {
                2 => "twice".to_owned(),
                n => format!("{n} times"),
            };
            let others = if python.len() == 2 {
                "the other block is ignored (remove it)"
            } else {
                "the other blocks are ignored (remove them)"
            };
            report(
                log::Level::Warn,
                Some(&id),
                None,
                format!(
                    "configured {count}, by the module blocks {}; the module is loaded once, with the params of the block {}, and {others}",
                    block_places(blocks, &python),
                    block_place(blocks, used)
                ),
            );
        }
        // What happens to the file, and what to do about the block: fix its
        // language, or, when another block loads the module, remove it.
        let (outcome, fix) = match used {
            Some(b) => (
                format!(
                    "the module is loaded with the block {}",
                    block_place(blocks, b)
                ),
                "remove it",
            ),
            None => (format!("{}.py is not loaded", file.stem), ""),
        };
        for block in blocks.iter().filter(|b| {
            b.enabled
                && !b.is_python()
                && b.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&file.stem))
        }) {
            match block.language.as_deref() {
                // gmond's own language for C modules: a C module of that name.
                Some(l) if l.eq_ignore_ascii_case("C/C++") => {}
                Some(language) => report(
                    log::Level::Warn,
                    Some(&id),
                    None,
                    format!(
                        "the module block {} names this module but has language = \"{language}\", not \"python\", so it is ignored; {outcome} ({})",
                        block_place(blocks, block),
                        if fix.is_empty() {
                            "write language = \"python\""
                        } else {
                            fix
                        }
                    ),
                ),
                // With a path it is a C module that shares the name.
                None if block.path.is_some() => {}
                None => report(
                    log::Level::Error,
                    Some(&id),
                    None,
                    format!(
                        "the module block {} names this module but has no language, so gmond takes it for a C module, and a C module block without a path makes Debian 12's gmond 3.7.2 crash at start; {outcome} ({})",
                        block_place(blocks, block),
                        if fix.is_empty() {
                            "add language = \"python\""
                        } else {
                            fix
                        }
                    ),
                ),
            }
        }
    }
}

/// Adds a virtualenv's site-packages (with its `.pth` files) to `sys.path`,
/// for the Python version that is running: packages built for another
/// version would not import.
fn add_virtualenv(py: Python<'_>, venv: &Path) -> Result<(), String> {
    let version = (|| -> PyResult<String> {
        let info = py.import("sys")?.getattr("version_info")?;
        let major: u32 = info.getattr("major")?.extract()?;
        let minor: u32 = info.getattr("minor")?.extract()?;
        Ok(format!("{major}.{minor}"))
    })()
    .map_err(|e| format!("cannot read the Python version: {e}"))?;
    let site_packages = venv
        .join("lib")
        .join(format!("python{version}"))
        .join("site-packages");
    if !site_packages.is_dir() {
        let made_with = std::fs::read_to_string(venv.join("pyvenv.cfg"))
            .ok()
            .and_then(|cfg| {
                cfg.lines()
                    .filter_map(|l| l.split_once('='))
                    .find(|(k, _)| k.trim() == "version" || k.trim() == "version_info")
                    .map(|(_, v)| v.trim().to_owned())
            });
        let why = match made_with {
            Some(v) => format!("it was made with Python {v}, but modpython runs Python {version}"),
            None if !venv.is_dir() => "the directory does not exist".to_owned(),
            None => "it has no pyvenv.cfg, so it does not look like a virtualenv".to_owned(),
        };
        return Err(format!(
            "virtualenv {}: there is no {} ({why}); create it with `python{version} -m venv {}`; its packages are not available to modules",
            venv.display(),
            site_packages.display(),
            venv.display()
        ));
    }
    py.import("site")
        .and_then(|site| site.call_method1("addsitedir", (site_packages.display().to_string(),)))
        .map_err(|e| {
            format!(
                "virtualenv {}: cannot add {}: {}",
                venv.display(),
                site_packages.display(),
                errors::describe(py, &e)
            )
        })?;
    log::info!(
        "virtualenv {}: {} added to sys.path",
        venv.display(),
        site_packages.display()
    );
    Ok(())
}

fn add_to_sys_path(py: Python<'_>, dir: &Path) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?;
    let dir = dir.display().to_string();
    if !path.contains(&dir)? {
        // Last, as the original host did, so a module cannot replace the
        // standard library for everyone; load_module refuses shadowed names.
        path.call_method1("append", (dir,))?;
    }
    Ok(())
}

/// Runs [`load_module`] on a thread of its own and waits at most `deadline`
/// for it. gmond runs `init` before it serves anything, so a module whose
/// import or `metric_init` never returns — waiting for a service, with a
/// bare `except:` around the retry that no interruption gets past — would
/// keep gmond from starting. Past the deadline the module is skipped and
/// its thread left to finish in the background. (Python also refuses
/// `signal.signal()` there, so a module cannot take gmond's signals in
/// `metric_init` either.)
fn load_with_deadline(
    py: Python<'_>,
    dir: &Path,
    id: &ModuleRef,
    block: &ModuleBlock,
    deadline: std::time::Duration,
) -> Result<(Py<PyModule>, Vec<LoadedMetric>), String> {
    let collecting = COLLECTOR.with(|c| c.borrow().is_some());
    let (tx, rx) = std::sync::mpsc::channel();
    let (dir_owned, id_owned, block_owned) = (dir.to_path_buf(), id.clone(), block.clone());
    let spawned = std::thread::Builder::new()
        .name("modpython-init".to_owned())
        .stack_size(super::THREAD_STACK)
        .spawn(move || {
            signals::block_in_this_thread();
            let _alt_stack = crate::fatal_signal::AltStack::for_this_thread();
            let marker = crate::fatal_signal::CallMarker::claim();
            marker.loading();
            let load = || Python::attach(|py| load_module(py, &dir_owned, &id_owned, &block_owned));
            let outcome = if collecting {
                collect_diagnostics(load)
            } else {
                (load(), Vec::new())
            };
            let _ = tx.send(outcome);
        });
    if spawned.is_err() {
        return load_module(py, dir, id, block);
    }
    match py.detach(move || rx.recv_timeout(deadline)) {
        Ok((result, diagnostics)) => {
            // Problems found on the loading thread join this thread's report.
            for d in diagnostics {
                report(d.level, d.module.as_ref(), d.metric.as_deref(), d.message);
            }
            result
        }
        Err(_) => Err(format!(
            "import or metric_init did not finish within init_timeout ({:.0}s); the module is skipped and its code left to finish in the background",
            deadline.as_secs_f64()
        )),
    }
}

/// Imports one module and runs its `metric_init`. An `Err` means the module
/// is skipped; problems with single metrics are logged and only skip those.
fn load_module(
    py: Python<'_>,
    dir: &Path,
    id: &ModuleRef,
    block: &ModuleBlock,
) -> Result<(Py<PyModule>, Vec<LoadedMetric>), String> {
    let result = import_and_init(py, dir, id, block);
    // A module that forked while loading (the child comes back here, as a
    // second gmond holding its sockets) ends that copy, as after a call.
    super::fork_guard::exit_if_forked();
    result
}

fn import_and_init(
    py: Python<'_>,
    dir: &Path,
    id: &ModuleRef,
    block: &ModuleBlock,
) -> Result<(Py<PyModule>, Vec<LoadedMetric>), String> {
    if id.name.contains('.') {
        return Err(format!(
            "'{}' cannot be imported as a Python module because of the '.' in its name; rename the file",
            id.path.display()
        ));
    }
    check_not_shadowed(py, dir, id)?;
    // What the module prints or logs while loading is tagged with its name.
    let _scope = super::stdio::ModuleScope::enter(&id.name);
    let module = py.import(id.name.as_str()).map_err(|e| {
        let hint = errors::python2_hint(py, &e)
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        format!(
            "import failed; the module is skipped{hint}\n{}",
            errors::describe(py, &e)
        )
    })?;

    let init = module
        .getattr("metric_init")
        .map_err(|_| "has no metric_init(params) function; the module is skipped".to_owned())?;
    if !init.is_callable() {
        return Err("metric_init is not a function; the module is skipped".to_owned());
    }

    // The reserved modpython.* params are the host's (see load_all), not the module's.
    let (ordinary, _reserved) = settings::split_module_params(&block.params);
    let params = PyDict::new(py);
    for param in &ordinary {
        match &param.value {
            Some(value) => params
                .set_item(&param.name, value)
                .map_err(|e| format!("cannot build the params dict: {e}"))?,
            None => report(
                log::Level::Warn,
                Some(id),
                None,
                format!(
                    "param '{}' has no value (write param {} {{ value = \"...\" }}); it is left out of the params passed to metric_init",
                    param.name, param.name
                ),
            ),
        }
    }

    let result = init.call1((params,)).map_err(|e| {
        let detail = errors::describe(py, &e);
        let hint = if detail.contains("signal only works in main thread") {
            " (module code runs off gmond's main thread, where Python refuses signal.signal(); gmond's signals are gmond's, but param \"modpython.call_mode\" { value = \"inline\" } runs this module on the main thread)"
        } else {
            ""
        };
        format!("metric_init raised an exception; the module is skipped{hint}\n{detail}")
    });
    // The module's code ran even if it failed: it still gets its cleanup.
    let module_ref: Py<PyModule> = module.clone().unbind();
    let result = match result {
        Ok(r) => r,
        Err(message) => {
            call_cleanup(py, id, module.as_any());
            return Err(message);
        }
    };

    let items: Vec<Bound<'_, PyAny>> = if result.is_instance_of::<PyDict>() {
        vec![result]
    } else if let Ok(list) = result.cast::<PyList>() {
        list.iter().collect()
    } else if let Ok(tuple) = result.cast::<PyTuple>() {
        tuple.iter().collect()
    } else {
        let type_name = result
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        call_cleanup(py, id, module.as_any());
        return Err(format!(
            "metric_init returned {}, not a list of metric descriptor dicts; the module is skipped",
            if result.is_none() {
                "None".to_owned()
            } else {
                format!("a {type_name}")
            }
        ));
    };

    Ok((module_ref, metrics_of(py, id, &items)))
}

/// Checks every element of metric_init's result and reports what it found:
/// errors at once, corrections at the end, one line for a correction that
/// several metrics share (and each metric's own line at info level).
fn metrics_of(py: Python<'_>, id: &ModuleRef, items: &[Bound<'_, PyAny>]) -> Vec<LoadedMetric> {
    let mut metrics = Vec::with_capacity(items.len());
    let mut warnings: Vec<(String, Warning)> = Vec::new();
    // Each registered name's first descriptor (its index in `items`: it is
    // examined again only if a copy turns up; keeping every examined
    // descriptor cost ~15 MB at 10,000 metrics), and what copies differ in.
    let mut firsts: HashMap<String, usize> = HashMap::new();
    let mut copies: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(examined) = examine(py, id, index, item) else {
            continue;
        };
        let name = examined.checked.name.clone();
        // A copy of a registered metric is not used, so neither its
        // corrections nor its errors matter: only how it differs. (A copy
        // of a refused descriptor is checked on its own: it may be the
        // one that works.)
        if let Some(&first) = name.as_ref().and_then(|n| firsts.get(n)) {
            let name = name.unwrap_or_default();
            let Some(first) = examine(py, id, first, &items[first]) else {
                continue;
            };
            let at = match copies.iter().position(|(n, _)| *n == name) {
                Some(at) => at,
                None => {
                    copies.push((name, Vec::new()));
                    copies.len() - 1
                }
            };
            let which = ordinal(copies[at].1.len() + 2);
            copies[at].1.push(differences(&first, &examined, &which));
            continue;
        }
        let label = match &name {
            Some(name) => format!("metric '{name}'"),
            None => format!("descriptor {index}"),
        };
        for warning in examined.notes.iter().chain(&examined.checked.warnings) {
            let warning = Warning {
                message: format!("{label}: {}", warning.message),
                ..warning.clone()
            };
            match &name {
                Some(name) => warnings.push((name.clone(), warning)),
                // Nothing to name it by in a line about several metrics.
                None => report(log::Level::Warn, Some(id), None, warning.message),
            }
        }
        let Some(descriptor) = examined.checked.result.clone() else {
            let why = examined
                .checked
                .error
                .clone()
                .unwrap_or_else(|| "invalid descriptor".to_owned());
            report(
                log::Level::Error,
                Some(id),
                name.as_deref(),
                format!("{label}: {why}; the metric is skipped"),
            );
            continue;
        };
        let Some(callback) = examined
            .dict
            .get_item(descriptor.callback_key.as_str())
            .ok()
            .flatten()
        else {
            continue;
        };
        let py_name = PyString::new(py, &descriptor.name).unbind();
        firsts.insert(descriptor.name.clone(), index);
        metrics.push(LoadedMetric {
            module: 0,
            descriptor,
            callback: callback.unbind(),
            py_name,
            position: metrics.len() as u32,
        });
    }
    for (name, found) in copies {
        warnings.push((name.clone(), duplicate_warning(&name, &found)));
    }
    for reported in descriptor::group_warnings(warnings) {
        match reported {
            Reported::One { metric, message } => {
                report(log::Level::Warn, Some(id), Some(&metric), message)
            }
            Reported::Many { line, each } => {
                report(log::Level::Warn, Some(id), None, line);
                for (metric, message) in each {
                    report(log::Level::Info, Some(id), Some(&metric), message);
                }
            }
        }
    }
    metrics
}

/// The warning for a metric metric_init returned more than once: `copies`
/// holds, for each copy after the first, how it differs from the first.
fn duplicate_warning(name: &str, copies: &[Vec<String>]) -> Warning {
    let times = match copies.len() + 1 {
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    };
    let differs: Vec<&String> = copies.iter().flatten().collect();
    let how = if differs.is_empty() {
        "identically".to_owned()
    } else {
        let differs: Vec<&str> = differs.iter().map(|d| d.as_str()).collect();
        format!("differently: {}", differs.join(", "))
    };
    Warning::new(
        format!("metric '{name}' is returned {times} by metric_init, {how}; the first is used"),
        format!("are returned {times} by metric_init, {how}"),
        "the first of each is used",
    )
}

fn ordinal(n: usize) -> String {
    match n {
        2 => "the second".to_owned(),
        3 => "the third".to_owned(),
        n => format!("copy {n}"),
    }
}

/// One element of metric_init's result, checked.
struct Examined<'py> {
    dict: Bound<'py, PyDict>,
    entries: Vec<(String, descriptor::Field)>,
    checked: descriptor::Checked,
    /// Keys that are not text.
    notes: Vec<Warning>,
}

/// How a later copy of a descriptor (`which`: "the second") differs from
/// the first, one text per key ("'units' is 'B' in the first and 'KB' in
/// the second"). Keys gmond knows match in any case, as in
/// [`descriptor::check`]; extra keys are sent as written, so they must
/// match exactly.
fn differences(first: &Examined<'_>, copy: &Examined<'_>, which: &str) -> Vec<String> {
    let key_of = |k: &str| -> String {
        if descriptor::KNOWN_KEYS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(k))
        {
            k.to_ascii_lowercase()
        } else {
            k.to_owned()
        }
    };
    let mut keys: Vec<String> = Vec::new();
    for (k, _) in first.entries.iter().chain(&copy.entries) {
        let key = key_of(k);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let lookup = |e: &Examined<'_>, key: &str| -> Option<(String, descriptor::Field)> {
        e.entries
            .iter()
            .find(|(k, _)| key_of(k) == key)
            .map(|(k, v)| (k.clone(), v.clone()))
    };
    let mut found = Vec::new();
    for key in keys {
        let (a, b) = (lookup(first, &key), lookup(copy, &key));
        let same = match (&a, &b) {
            (Some((ka, fa)), Some((kb, fb))) => match (fa, fb) {
                (descriptor::Field::Callable, descriptor::Field::Callable) => same_callable(
                    item(&first.dict, ka).as_ref(),
                    item(&copy.dict, kb).as_ref(),
                ),
                _ => fa.same_as(fb),
            },
            (None, None) => true,
            _ => false,
        };
        if same {
            continue;
        }
        let shown = |e: &Examined<'_>, v: &Option<(String, descriptor::Field)>| match v {
            None => "missing".to_owned(),
            Some((k, descriptor::Field::Callable)) => callable_name(item(&e.dict, k).as_ref()),
            Some((_, field)) => field.shown(),
        };
        found.push(format!(
            "'{key}' is {} in the first and {} in {which}",
            shown(first, &a),
            shown(copy, &b)
        ));
    }
    found
}

fn item<'py>(dict: &Bound<'py, PyDict>, key: &str) -> Option<Bound<'py, PyAny>> {
    dict.get_item(key).ok().flatten()
}

/// The same function, or the same method of the same object (each
/// `obj.method` is a new object, equal but not identical).
fn same_callable<'py>(a: Option<&Bound<'py, PyAny>>, b: Option<&Bound<'py, PyAny>>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    if a.is(b) {
        return true;
    }
    let is_method = |c: &Bound<'_, PyAny>| {
        c.py()
            .import("types")
            .and_then(|t| t.getattr("MethodType"))
            .and_then(|t| c.is_instance(&t))
            .unwrap_or(false)
    };
    if !is_method(a) || !is_method(b) {
        return false;
    }
    let part = |m: &Bound<'py, PyAny>, name: &str| m.getattr(name).ok();
    match (
        part(a, "__func__"),
        part(b, "__func__"),
        part(a, "__self__"),
        part(b, "__self__"),
    ) {
        (Some(fa), Some(fb), Some(sa), Some(sb)) => fa.is(&fb) && sa.is(&sb),
        _ => false,
    }
}

/// A callable as a message names it: its type and qualified name
/// ("function read", "method Sampler.read"), or its type.
fn callable_name(callable: Option<&Bound<'_, PyAny>>) -> String {
    let Some(callable) = callable else {
        return "a callable".to_owned();
    };
    let kind = callable
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "callable".to_owned());
    match callable
        .getattr("__qualname__")
        .and_then(|n| n.extract::<String>())
    {
        Ok(name) => format!("{kind} {name}"),
        Err(_) => format!("a {kind}"),
    }
}

/// A module named like a standard-library or installed module would import
/// that one instead (the directory is last on sys.path), or replace it for
/// every other module if it came first. Refuse it, saying which is which.
fn check_not_shadowed(py: Python<'_>, dir: &Path, id: &ModuleRef) -> Result<(), String> {
    let origin = (|| -> PyResult<Option<String>> {
        let sys_modules = py.import("sys")?.getattr("modules")?;
        let spec = if let Ok(existing) = sys_modules.get_item(id.name.as_str()) {
            existing.getattr("__spec__").ok()
        } else {
            // importlib.util.find_spec(name) for a top-level name is
            // importlib._bootstrap._find_spec(name, None); the frozen
            // bootstrap is always loaded, importlib.util (and what it
            // imports) would cost ~1 MB and ~5 ms at start.
            py.import("_frozen_importlib")?
                .call_method1("_find_spec", (id.name.as_str(), py.None()))
                .ok()
        };
        let Some(spec) = spec.filter(|s| !s.is_none()) else {
            return Ok(None);
        };
        let origin = spec.getattr("origin")?;
        Ok(if origin.is_none() {
            Some("a namespace package".to_owned())
        } else {
            Some(origin.extract()?)
        })
    })()
    .map_err(|e| format!("cannot look up the module name: {e}"))?;
    let Some(origin) = origin else { return Ok(()) };
    let ours = Path::new(&origin)
        .parent()
        .map(|p| same_dir(p, dir))
        .unwrap_or(false);
    if ours {
        Ok(())
    } else {
        Err(format!(
            "the name '{}' is already taken by {origin} (a standard-library or installed module), which Python would import instead; rename {} and its module block",
            id.name,
            id.path.display()
        ))
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Checks one element of metric_init's result; `None` (reported) when it
/// is no mapping at all.
fn examine<'py>(
    py: Python<'py>,
    id: &ModuleRef,
    index: usize,
    item: &Bound<'py, PyAny>,
) -> Option<Examined<'py>> {
    let dict = match item.cast::<PyDict>() {
        Ok(d) => d.clone(),
        Err(_) => {
            // Other mappings (UserDict, OrderedDict subclasses…) work through dict().
            let is_mapping = py
                .import("collections.abc")
                .and_then(|abc| abc.getattr("Mapping"))
                .and_then(|mapping| item.is_instance(&mapping))
                .unwrap_or(false);
            let converted = if is_mapping {
                py.import("builtins")
                    .and_then(|b| b.getattr("dict"))
                    .and_then(|d| d.call1((item,)))
                    .ok()
            } else {
                None
            };
            match converted.and_then(|d| d.cast_into::<PyDict>().ok()) {
                Some(d) => d,
                None => {
                    let type_name = item
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default();
                    report(
                        log::Level::Error,
                        Some(id),
                        None,
                        format!(
                            "element {index} of metric_init's result is a {type_name}, not a descriptor dict; it is skipped"
                        ),
                    );
                    return None;
                }
            }
        }
    };
    let (entries, notes) = extract::descriptor_entries(&dict);
    let checked = descriptor::check(&entries);
    Some(Examined {
        dict,
        entries,
        checked,
        notes,
    })
}

/// Calls each module's `metric_cleanup()`, in load order; `progress` hears
/// of each module before its cleanup runs.
pub fn cleanup_modules(
    py: Python<'_>,
    modules: &[(ModuleRef, Py<PyModule>)],
    progress: &dyn Fn(CleanupStep<'_>),
) {
    for (id, module) in modules {
        progress(CleanupStep::Module(id));
        call_cleanup(py, id, module.bind(py).as_any());
    }
    // Python is never finalised (a non-daemon thread would hang gmond's exit
    // forever), so run the atexit hooks modules registered ourselves.
    progress(CleanupStep::AtExit);
    if let Err(e) = py
        .import("atexit")
        .and_then(|m| m.call_method0("_run_exitfuncs"))
    {
        log::warn!("Python atexit handlers failed: {}", errors::summary(py, &e));
    }
    for stream in ["stdout", "stderr"] {
        let _ = py
            .import("sys")
            .and_then(|s| s.getattr(stream))
            .and_then(|s| s.call_method0("flush"));
    }
}

/// Files a module block names only by ignoring case (`Foo.py` and `foo.py`
/// for `name = "foo"`): one block loads one file, the one spelt like the
/// block, or else the first; the others are reported and left alone.
fn case_twins(files: &[PythonFile], blocks: &[ModuleBlock]) -> Vec<PathBuf> {
    let mut skipped = Vec::new();
    for block in blocks.iter().filter(|b| b.is_python() && b.enabled) {
        let named: Vec<&PythonFile> = files.iter().filter(|f| block.names(&f.stem)).collect();
        if named.len() < 2 {
            continue;
        }
        let wanted = block.name.as_deref().unwrap_or_default();
        let chosen = named.iter().find(|f| f.stem == wanted).unwrap_or(&named[0]);
        for other in named.iter().filter(|f| f.path != chosen.path) {
            if skipped.contains(&other.path) {
                continue;
            }
            report(
                log::Level::Warn,
                None,
                None,
                format!(
                    "{} is not loaded: the module block '{wanted}' already loads {} (the names differ only in case); rename or remove one",
                    other.path.display(),
                    chosen.path.display()
                ),
            );
            skipped.push(other.path.clone());
        }
    }
    skipped
}

/// What the cleanup is doing, for a report when it does not finish.
#[derive(Debug, Clone, Copy)]
pub enum CleanupStep<'a> {
    /// A module's `metric_cleanup()`.
    Module(&'a ModuleRef),
    /// The `atexit` handlers modules registered.
    AtExit,
}

impl fmt::Display for CleanupStep<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CleanupStep::Module(id) => write!(f, "{id}: metric_cleanup"),
            CleanupStep::AtExit => {
                f.write_str("the Python atexit handlers that modules registered")
            }
        }
    }
}

/// Puts back gmond's signal handlers if the module's code changed them,
/// saying so with the module's name and file.
fn report_signal_changes(id: &ModuleRef) {
    for problem in signals::restore_changed() {
        report(log::Level::Warn, Some(id), None, problem);
    }
}

fn call_cleanup(py: Python<'_>, id: &ModuleRef, module: &Bound<'_, PyAny>) {
    let Ok(cleanup) = module.getattr("metric_cleanup") else {
        return;
    };
    let _scope = super::stdio::ModuleScope::enter(&id.name);
    if !cleanup.is_callable() {
        report(
            log::Level::Warn,
            Some(id),
            None,
            "metric_cleanup is not a function; not called".to_owned(),
        );
        return;
    }
    let result = cleanup.call0();
    super::fork_guard::exit_if_forked();
    if let Err(e) = result {
        report(
            log::Level::Error,
            Some(id),
            None,
            format!(
                "metric_cleanup raised an exception\n{}",
                errors::describe(py, &e)
            ),
        );
    }
    report_signal_changes(id);
}
