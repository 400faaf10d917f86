//! gmond's configuration as a metric host sees it: the `module { … }` blocks
//! of the parsed config (libconfuse), and the `param` list gmond hands to
//! the `python_module` block itself.
//!
//! The libconfuse walk is the only unsafe part; choosing the block for a
//! Python file is plain logic, shared with the tools.

use std::ffi::{CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};

use libc::c_char;

use crate::ffi;

/// One `param NAME { value = … }`. `value` is `None` when the block has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

/// Where a block was written: the file as gmond's include named it, and
/// the line of the block's `module` keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One `module { … }` block of the merged `modules` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleBlock {
    pub name: Option<String>,
    pub language: Option<String>,
    pub enabled: bool,
    /// `path`: a C module's shared object (Python blocks have none).
    pub path: Option<String>,
    pub params: Vec<Param>,
    /// Where the block was written, when the configuration's files could be
    /// read again and matched to the parsed blocks (`config_files::locate`, by the caller).
    pub origin: Option<Origin>,
}

impl ModuleBlock {
    /// Whether this block asks for a Python module (`language = "python"`, any case).
    pub fn is_python(&self) -> bool {
        self.language
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case("python"))
    }

    /// Whether this is the Python block for the file `stem`: language
    /// python and the same name, both ignoring case (as the original host).
    pub fn names(&self, stem: &str) -> bool {
        self.is_python()
            && self
                .name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(stem))
    }
}

/// What the scan of gmond's Python blocks found for one file stem.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection<'a> {
    /// The first enabled Python block whose name matches, ignoring case.
    Enabled(&'a ModuleBlock),
    /// Only disabled blocks name it: the file must not be imported.
    Disabled,
    /// No Python block names it: a helper file, left for other modules to import.
    Unconfigured,
}

/// Picks the configuration for the Python file `stem`, as the original host
/// did: language python, name equal ignoring case, enabled; first one wins.
pub fn select_block<'a>(blocks: &'a [ModuleBlock], stem: &str) -> Selection<'a> {
    let mut named = blocks.iter().filter(|b| b.names(stem)).peekable();
    if named.peek().is_none() {
        return Selection::Unconfigured;
    }
    named
        .find(|b| b.enabled)
        .map_or(Selection::Disabled, Selection::Enabled)
}

/// The module directory named by the python_module block's `params`, if it
/// is one.
pub fn check_module_dir(params: Option<&str>) -> Result<PathBuf, String> {
    let Some(dir) = params.filter(|d| !d.trim().is_empty()) else {
        return Err(
            "the python_module block has no params: set params = \"<directory of your Python metric modules>\"".to_owned(),
        );
    };
    check_dir(Path::new(dir), "params of the python_module block")
}

/// That `dir` is a directory we can look into; `origin` says where it was
/// named, for the message.
pub fn check_dir(dir: &Path, origin: &str) -> Result<PathBuf, String> {
    match std::fs::metadata(dir) {
        Err(e) => Err(format!(
            "cannot open the Python module directory {} ({origin}): {e}",
            dir.display()
        )),
        Ok(m) if !m.is_dir() => Err(format!("{} ({origin}) is not a directory", dir.display())),
        Ok(_) => Ok(dir.to_path_buf()),
    }
}

fn owned(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: libconfuse and gmond hand us NUL-terminated strings that they
    // own and keep alive for the whole process; we copy before returning.
    Some(
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Reads every `modules { module { … } }` block of gmond's parsed config,
/// with the file and line each was written at when they can be found.
///
/// # Safety
/// `config` must be the `cfg_t*` gmond stored in `mmodule.config_file`
/// (or null), parsed with gmond's own schema.
pub unsafe fn read_module_blocks(config: *mut ffi::cfg_t) -> Vec<ModuleBlock> {
    if config.is_null() {
        return Vec::new();
    }
    // SAFETY: `config` is a live cfg_t per the contract; "modules" exists in
    // gmond's schema, so libconfuse returns the merged section (never freed).
    let modules = unsafe { ffi::cfg_getsec(config, c"modules".as_ptr()) };
    if modules.is_null() {
        return Vec::new();
    }
    // SAFETY: `modules` is a live section with a "module" sub-section list.
    let count = unsafe { ffi::cfg_size(modules, c"module".as_ptr()) };
    (0..count)
        .filter_map(|i| {
            // SAFETY: i < cfg_size, so libconfuse returns a live section.
            let block = unsafe { ffi::cfg_getnsec(modules, c"module".as_ptr(), i) };
            // SAFETY: `block` is a live module section from gmond's schema.
            (!block.is_null()).then(|| unsafe { read_block(block) })
        })
        .collect()
}

/// The file libconfuse parsed `config` from: the `-c` file for gmond's
/// configuration, as gmond was given it. libconfuse has no accessor for it,
/// so it is read from `struct cfg_t`, whose leading fields are stable
/// across libconfuse 3.x; the version is checked, and the layout is checked
/// against the `name` field that `cfg_name()` returns. `None` for another
/// libconfuse, or a configuration parsed from memory (gmond's built-in one).
///
/// # Safety
/// `config` must be null or a live `cfg_t*` (any section).
pub unsafe fn config_file_name(config: *mut ffi::cfg_t) -> Option<PathBuf> {
    if config.is_null() {
        return None;
    }
    // SAFETY: confuse_version is a NUL-terminated string constant of the
    // libconfuse gmond and we are linked with.
    let version = unsafe { CStr::from_ptr((&raw const ffi::confuse_version).cast()) };
    if !version.to_bytes().starts_with(b"3.") {
        return None;
    }
    // SAFETY: in libconfuse 3.x a cfg_t begins with the fields of CfgHead
    // (confuse.h), and `config` is live; cfg_name only reads the section.
    let (head, name) = unsafe { (&*(config as *const ffi::CfgHead), ffi::cfg_name(config)) };
    if head.name.cast_const() != name {
        return None;
    }
    owned(head.filename).map(PathBuf::from)
}

/// # Safety
/// `block` must be a live `module` section of gmond's schema.
unsafe fn read_block(block: *mut ffi::cfg_t) -> ModuleBlock {
    let text = |opt: &CStr| -> Option<String> {
        // SAFETY: `opt` names a string option of the module schema.
        owned(unsafe { ffi::cfg_getstr(block, opt.as_ptr()) })
    };
    // SAFETY: "enabled" is a boolean option of the module schema.
    let enabled = unsafe { ffi::cfg_getbool(block, c"enabled".as_ptr()) } != 0;
    // SAFETY: "param" is a titled multi-section of the module schema.
    let count = unsafe { ffi::cfg_size(block, c"param".as_ptr()) };
    let params = (0..count)
        .filter_map(|i| {
            // SAFETY: i < cfg_size, so this is a live param section.
            let param = unsafe { ffi::cfg_getnsec(block, c"param".as_ptr(), i) };
            if param.is_null() {
                return None;
            }
            // SAFETY: cfg_title is the supported accessor (the struct layout
            // changed between libconfuse 2 and 3); "value" is a string option.
            let (title, value) = unsafe {
                (
                    ffi::cfg_title(param),
                    ffi::cfg_getstr(param, c"value".as_ptr()),
                )
            };
            Some(Param {
                name: owned(title).unwrap_or_default(),
                value: owned(value),
            })
        })
        .collect();
    ModuleBlock {
        name: text(c"name"),
        language: text(c"language"),
        enabled,
        path: text(c"path"),
        params,
        origin: None,
    }
}

/// gmond's `globals { setuid user }`: the user it drops to after init, if it does.
///
/// # Safety
/// As for [`read_module_blocks`].
pub unsafe fn read_gmond_user(config: *mut ffi::cfg_t) -> Option<String> {
    if config.is_null() {
        return None;
    }
    // SAFETY: "globals" is a section of gmond's schema, always present.
    let globals = unsafe { ffi::cfg_getsec(config, c"globals".as_ptr()) };
    if globals.is_null() {
        return None;
    }
    // SAFETY: "setuid" (bool) and "user" (string) are options of globals.
    let (setuid, user) = unsafe {
        (
            ffi::cfg_getbool(globals, c"setuid".as_ptr()),
            ffi::cfg_getstr(globals, c"user".as_ptr()),
        )
    };
    if setuid == 0 { None } else { owned(user) }
}

/// Reads the `param` list gmond gives the `python_module` block itself.
///
/// # Safety
/// `list` must be null or the `module_params_list` gmond stored in our
/// `mmodule`: an APR array whose elements are `mmparam`.
pub unsafe fn read_param_list(list: *const ffi::apr_array_header_t) -> Vec<Param> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract `list` points to a live APR array header.
    let header = unsafe { &*list };
    if header.elts.is_null()
        || header.nelts <= 0
        || header.elt_size as usize != std::mem::size_of::<ffi::mmparam>()
    {
        return Vec::new();
    }
    // SAFETY: the array holds `nelts` contiguous mmparam records (element
    // size checked above), alive for the whole process.
    let items = unsafe {
        std::slice::from_raw_parts(header.elts as *const ffi::mmparam, header.nelts as usize)
    };
    items
        .iter()
        .map(|p| Param {
            name: owned(p.name).unwrap_or_default(),
            value: owned(p.value),
        })
        .collect()
}

/// A C string for libconfuse/APR, with interior NULs (impossible in gmond's
/// config) replaced rather than panicking.
pub fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).unwrap_or_default()
}

/// The `module` block gmond loads modpython from, as gmond picks it: named
/// `python_module` (the symbol it looks up), language unset or `C`, enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBlock {
    /// `path`: the modpython.so gmond loads.
    pub path: Option<String>,
    /// `params`: the directory of Python metric modules.
    pub params: Option<String>,
    /// Its `param` list: the host settings.
    pub param_list: Vec<Param>,
}

/// Reads the first [`HostBlock`] of a parsed config, if there is one.
///
/// # Safety
/// As for [`read_module_blocks`].
pub unsafe fn read_host_block(config: *mut ffi::cfg_t) -> Option<HostBlock> {
    if config.is_null() {
        return None;
    }
    // SAFETY: as in read_module_blocks.
    let modules = unsafe { ffi::cfg_getsec(config, c"modules".as_ptr()) };
    if modules.is_null() {
        return None;
    }
    // SAFETY: `modules` is a live section with a "module" sub-section list.
    let count = unsafe { ffi::cfg_size(modules, c"module".as_ptr()) };
    (0..count).find_map(|i| {
        // SAFETY: i < cfg_size, so libconfuse returns a live section.
        let raw = unsafe { ffi::cfg_getnsec(modules, c"module".as_ptr(), i) };
        if raw.is_null() {
            return None;
        }
        // SAFETY: `raw` is a live module section of gmond's schema.
        let block = unsafe { read_block(raw) };
        let is_c = block
            .language
            .as_deref()
            .is_none_or(|l| l.eq_ignore_ascii_case("c"));
        if block.name.as_deref() != Some("python_module") || !is_c || !block.enabled {
            return None;
        }
        // SAFETY: "path" and "params" are string options of the module schema.
        let (path, params) = unsafe {
            (
                owned(ffi::cfg_getstr(raw, c"path".as_ptr())),
                owned(ffi::cfg_getstr(raw, c"params".as_ptr())),
            )
        };
        Some(HostBlock {
            path,
            params,
            param_list: block.params,
        })
    })
}

/// One `metric { … }` of a `collection_group`: gmond collects the metrics
/// named exactly, or whose name matches the regular expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedMetric {
    /// Which `collection_group` (in config order) the entry belongs to:
    /// gmond collects a group's metrics together, one after the other.
    pub group: usize,
    pub name: Option<String>,
    pub name_match: Option<String>,
}

/// Every `collection_group { metric { … } }` entry of a parsed config.
///
/// # Safety
/// As for [`read_module_blocks`].
pub unsafe fn read_collected_metrics(config: *mut ffi::cfg_t) -> Vec<CollectedMetric> {
    if config.is_null() {
        return Vec::new();
    }
    let mut found = Vec::new();
    // SAFETY: "collection_group" is a multi-section of gmond's schema.
    let groups = unsafe { ffi::cfg_size(config, c"collection_group".as_ptr()) };
    for g in 0..groups {
        // SAFETY: g < cfg_size.
        let group = unsafe { ffi::cfg_getnsec(config, c"collection_group".as_ptr(), g) };
        if group.is_null() {
            continue;
        }
        // SAFETY: "metric" is a multi-section of collection_group.
        let metrics = unsafe { ffi::cfg_size(group, c"metric".as_ptr()) };
        for m in 0..metrics {
            // SAFETY: m < cfg_size.
            let metric = unsafe { ffi::cfg_getnsec(group, c"metric".as_ptr(), m) };
            if metric.is_null() {
                continue;
            }
            // SAFETY: "name" and "name_match" are string options of metric.
            let (name, name_match) = unsafe {
                (
                    owned(ffi::cfg_getstr(metric, c"name".as_ptr())),
                    owned(ffi::cfg_getstr(metric, c"name_match".as_ptr())),
                )
            };
            found.push(CollectedMetric {
                group: g as usize,
                name,
                name_match,
            });
        }
    }
    found
}

/// A configuration parsed by libganglia's parser; kept for the process's life.
pub struct ParsedConfig(*mut ffi::cfg_t);

impl ParsedConfig {
    pub fn module_blocks(&self) -> Vec<ModuleBlock> {
        // SAFETY: the cfg_t came from Ganglia_gmond_config_create (gmond's
        // schema) and is never freed.
        unsafe { read_module_blocks(self.0) }
    }

    /// The file this configuration was parsed from, if libconfuse says.
    pub fn file_name(&self) -> Option<PathBuf> {
        // SAFETY: as above, a live root section.
        unsafe { config_file_name(self.0) }
    }

    pub fn host_block(&self) -> Option<HostBlock> {
        // SAFETY: as above.
        unsafe { read_host_block(self.0) }
    }

    pub fn gmond_user(&self) -> Option<String> {
        // SAFETY: as above.
        unsafe { read_gmond_user(self.0) }
    }

    pub fn collected_metrics(&self) -> Vec<CollectedMetric> {
        // SAFETY: as above.
        unsafe { read_collected_metrics(self.0) }
    }
}

/// Parses a gmond configuration file, or a `.pyconf` fragment, with
/// libganglia's own parser (`Ganglia_gmond_config_create`), so `include`s,
/// case rules and defaults are exactly gmond's. Relative `include` paths are
/// relative to the working directory, as for gmond.
///
/// libganglia exits the process on a parse error, so the file is parsed
/// first in a forked child ([`try_parse`]), whose error output becomes the
/// `Err`. Call it before starting threads, as [`try_parse`] requires.
pub fn parse_config_file(path: &Path) -> Result<ParsedConfig, String> {
    std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let ParserVerdict::Rejected(output) = try_parse(path)? {
        let output = output.trim();
        return Err(format!(
            "gmond's parser rejects {}: {}",
            path.display(),
            if output.is_empty() {
                "no message"
            } else {
                output
            }
        ));
    }
    let c_path = c_string(&path.display().to_string());
    // SAFETY: the same call succeeded in the child, so it returns here too;
    // the result is a `cfg_t*` of gmond's schema (ganglia.h hides the type).
    let config =
        unsafe { ffi::Ganglia_gmond_config_create(c_path.as_ptr() as *mut libc::c_char, 0) };
    Ok(ParsedConfig(config as *mut ffi::cfg_t))
}

/// What gmond's parser made of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParserVerdict {
    Accepted,
    /// What the parser printed before gmond would have exited.
    Rejected(String),
}

/// Parses `path` with libganglia's parser in a forked child, because the
/// parser exits the process on an error; `Err` when the child cannot be
/// run. A forked child of a multi-threaded process may deadlock on a lock
/// (malloc, stdio) another thread held, so this refuses to run unless the
/// process has a single thread: call it before starting threads (the tools
/// do, first thing).
pub fn try_parse(path: &Path) -> Result<ParserVerdict, String> {
    use std::io::Read;
    use std::os::fd::FromRawFd;

    // Only this thread could start another one, so the count cannot go up
    // between this check and the fork.
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count())
        .map_err(|e| format!("cannot count this process's threads in /proc/self/task: {e}"))?;
    if threads != 1 {
        return Err(format!(
            "cannot parse {} with libganglia's parser: the process already runs {threads} threads, and the parser must run in a forked child of a single-threaded process",
            path.display()
        ));
    }
    let c_path = c_string(&path.display().to_string());
    // The parser needs APR initialised. libganglia's pool constructor does
    // that (as in gmond), so the tools link no APR function of their own:
    // the Debian package's Depends then names libapr1 once, with the .so's
    // version (cargo-deb lists each binary's dependencies separately).
    static APR: std::sync::Once = std::sync::Once::new();
    // SAFETY: Ganglia_pool_create takes a parent pool or null and has no
    // other precondition; Once makes it run once, and the pool is kept.
    APR.call_once(|| unsafe {
        ffi::Ganglia_pool_create(std::ptr::null_mut());
    });

    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the child only redirects its output, parses and `_exit`s; the
    // process has a single thread (checked above), so no lock is held.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the child: plain descriptor calls, then the parser on a
        // path we own; `_exit` skips the parent's atexit handlers.
        unsafe {
            libc::close(fds[0]);
            libc::dup2(fds[1], 1);
            libc::dup2(fds[1], 2);
            ffi::Ganglia_gmond_config_create(c_path.as_ptr() as *mut libc::c_char, 0);
            libc::_exit(0);
        }
    }
    // SAFETY: fds[1] is ours to close; fds[0] is an open descriptor that the
    // File takes ownership of.
    let mut reader = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut output = String::new();
    let _ = reader.read_to_string(&mut output);
    let mut status: libc::c_int = 0;
    // SAFETY: waiting for the child we forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            ParserVerdict::Accepted
        } else {
            ParserVerdict::Rejected(output)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(name: &str, language: Option<&str>, enabled: bool, value: &str) -> ModuleBlock {
        ModuleBlock {
            name: Some(name.to_owned()),
            language: language.map(str::to_owned),
            enabled,
            params: vec![Param {
                name: "which".into(),
                value: Some(value.into()),
            }],
            ..ModuleBlock::default()
        }
    }

    #[test]
    fn selection_follows_the_original_rules() {
        let blocks = vec![
            block("diskio", None, true, "c-module"),
            block("DiskIO", Some("Python"), false, "disabled"),
            block("diskio", Some("python"), true, "first-enabled"),
            block("diskio", Some("PYTHON"), true, "second-enabled"),
            block("off", Some("python"), false, "off"),
        ];
        let Selection::Enabled(b) = select_block(&blocks, "diskIO") else {
            panic!("expected a block")
        };
        assert_eq!(b.params[0].value.as_deref(), Some("first-enabled"));
        assert_eq!(select_block(&blocks, "off"), Selection::Disabled);
        assert_eq!(select_block(&blocks, "helper"), Selection::Unconfigured);
        assert!(blocks[2].names("DISKIO") && !blocks[0].names("diskio"));
    }

    #[test]
    fn module_directory_is_checked() {
        assert!(
            check_module_dir(None)
                .unwrap_err()
                .contains("has no params")
        );
        assert!(
            check_module_dir(Some("  "))
                .unwrap_err()
                .contains("has no params")
        );
        assert!(
            check_module_dir(Some("/nonexistent/modules"))
                .unwrap_err()
                .starts_with("cannot open the Python module directory /nonexistent/modules (params of the python_module block): ")
        );
        assert_eq!(
            check_dir(Path::new("/etc/passwd"), "--dir").unwrap_err(),
            "/etc/passwd (--dir) is not a directory"
        );
        assert_eq!(check_module_dir(Some("/")), Ok(PathBuf::from("/")));
    }
}
