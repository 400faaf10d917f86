//! gmond's own regular expressions: `collection_group { metric { name_match } }`
//! is matched by gmond with libpcre (`pcre_compile(pattern, 0, …)`, then
//! `pcre_exec` on the metric name). gmond links libpcre, so the host uses the
//! very same functions, found at run time, and `modpython-check` loads the
//! same library: exact gmond semantics for both, and no Python `re` (18
//! modules, ~1.2 MB, ~9 ms) imported at gmond's start.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_void};

type Compile = unsafe extern "C" fn(
    *const c_char,
    c_int,
    *mut *const c_char,
    *mut c_int,
    *const u8,
) -> *mut c_void;
type Exec = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_char,
    c_int,
    c_int,
    c_int,
    *mut c_int,
    c_int,
) -> c_int;

/// libpcre's functions if the process has them (gmond does) or the
/// system's libpcre3 can be loaded (the checker), with each pattern
/// compiled once.
pub struct Matcher {
    functions: Option<(Compile, Exec)>,
    compiled: RefCell<HashMap<String, Result<*mut c_void, String>>>,
}

impl Matcher {
    pub fn in_process() -> Matcher {
        Matcher {
            functions: functions(libc::RTLD_DEFAULT).or_else(|| {
                // SAFETY: loading a shared library by its NUL-terminated name.
                let handle = unsafe { libc::dlopen(c"libpcre.so.3".as_ptr(), libc::RTLD_NOW) };
                (!handle.is_null()).then(|| functions(handle)).flatten()
            }),
            compiled: RefCell::new(HashMap::new()),
        }
    }

    pub fn available(&self) -> bool {
        self.functions.is_some()
    }

    /// Whether `pattern` compiles, and PCRE's message if not.
    pub fn check(&self, pattern: &str) -> Result<(), String> {
        self.compiled_pattern(pattern).map(|_| ())
    }

    /// Whether `pattern` matches `name` as gmond decides it (`pcre_exec`
    /// finds a match); false if the pattern does not compile (gmond then
    /// selects nothing either) or libpcre is not there.
    pub fn search(&self, pattern: &str, name: &str) -> bool {
        let Some((_, exec)) = self.functions else {
            return false;
        };
        let Ok(length) = c_int::try_from(name.len()) else {
            return false;
        };
        let Ok(re) = self.compiled_pattern(pattern) else {
            return false;
        };
        let mut ovector = [0 as c_int; 30];
        // SAFETY: a pattern pcre_compile returned (never freed: one per
        // distinct name_match, for the life of the process), the subject
        // and its length, and an ovector of 30 ints.
        let rc = unsafe {
            exec(
                re,
                std::ptr::null(),
                name.as_ptr().cast(),
                length,
                0,
                0,
                ovector.as_mut_ptr(),
                30,
            )
        };
        rc >= 0
    }

    fn compiled_pattern(&self, pattern: &str) -> Result<*mut c_void, String> {
        let Some((compile, _)) = self.functions else {
            return Err("libpcre is not available".to_owned());
        };
        let mut cache = self.compiled.borrow_mut();
        cache
            .entry(pattern.to_owned())
            .or_insert_with(|| {
                let p = CString::new(pattern)
                    .map_err(|_| "the expression contains a NUL byte".to_owned())?;
                let mut error: *const c_char = std::ptr::null();
                let mut offset: c_int = 0;
                // SAFETY: a NUL-terminated pattern, valid out-pointers, default tables.
                let re =
                    unsafe { compile(p.as_ptr(), 0, &mut error, &mut offset, std::ptr::null()) };
                if !re.is_null() {
                    return Ok(re);
                }
                let message = if error.is_null() {
                    "it does not compile".to_owned()
                } else {
                    // SAFETY: PCRE's error texts are static NUL-terminated strings.
                    unsafe { std::ffi::CStr::from_ptr(error) }
                        .to_string_lossy()
                        .into_owned()
                };
                Err(format!("{message} at offset {offset}"))
            })
            .clone()
    }
}

/// pcre_compile and pcre_exec from `handle` (or RTLD_DEFAULT), if there.
fn functions(handle: *mut c_void) -> Option<(Compile, Exec)> {
    // SAFETY: dlsym with a handle dlopen returned (or RTLD_DEFAULT) and
    // NUL-terminated names.
    let (compile, exec) = unsafe {
        (
            libc::dlsym(handle, c"pcre_compile".as_ptr()),
            libc::dlsym(handle, c"pcre_exec".as_ptr()),
        )
    };
    (!compile.is_null() && !exec.is_null()).then(|| {
        // SAFETY: these are libpcre's pcre_compile and pcre_exec, whose C
        // signatures (pcre.h, libpcre3) the two types spell out.
        unsafe {
            (
                std::mem::transmute::<*mut c_void, Compile>(compile),
                std::mem::transmute::<*mut c_void, Exec>(exec),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_as_gmond_does_with_its_own_libpcre() {
        // gmond links libpcre (Debian's libpcre3, which ganglia-monitor
        // depends on); a test program loads it.
        let m = Matcher::in_process();
        assert!(m.available());
        assert!(m.search("^bm_", "bm_00001"));
        assert!(!m.search("^bm_", "xbm_00001"));
        assert!(
            m.search("load", "cpu_load_one"),
            "unanchored, as pcre_exec searches"
        );
        assert!(m.search("^(a|b)_[0-9]+$", "b_12"));
        assert!(!m.search("^(a|b)_[0-9]+$", "b_12x"));
        assert!(m.search("\\d{3}", "disk_123"), "PCRE syntax");
        assert!(
            !m.search("(", "anything"),
            "a pattern that does not compile selects nothing"
        );
    }
}
