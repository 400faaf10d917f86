//! Raw declarations of everything modpython shares with gmond: the generated
//! module ABI types, and the gmond, APR and libconfuse functions we call.
//! Nothing here has logic; the safe wrappers live with the code that owns them.

#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]
#![allow(clippy::all, clippy::undocumented_unsafe_blocks)]

use libc::{c_char, c_int, c_uint, c_void};

include!(concat!(env!("OUT_DIR"), "/gmond_abi.rs"));

/// libconfuse's boolean (`cfg_bool_t`), a 4-byte enum: 0 false, 1 true.
pub type cfg_bool_t = c_uint;

/// The leading fields of libconfuse 3.x's `struct cfg_t` (confuse.h), up
/// to `line`; the rest of the struct is not needed. Only valid for
/// libconfuse 3 (checked with `confuse_version` before use).
#[repr(C)]
pub struct CfgHead {
    pub flags: c_int,
    pub name: *mut c_char,
    pub comment: *mut c_char,
    pub opts: *mut c_void,
    pub title: *mut c_char,
    pub filename: *mut c_char,
    pub line: c_int,
}

/// An APR table (`apr_table_t`); opaque, we only add entries to it.
#[repr(C)]
pub struct apr_table_t {
    _private: [u8; 0],
}

unsafe extern "C" {
    // libganglia: gmond's logger. Both take a printf format; we always pass "%s".
    pub fn err_msg(fmt: *const c_char, ...);
    pub fn debug_msg(fmt: *const c_char, ...);
    pub fn get_debug_msg_level() -> c_int;

    // APR (libapr-1), for the metadata tables gmond reads from Ganglia_25metric.
    pub fn apr_pool_create_ex(
        newpool: *mut *mut apr_pool_t,
        parent: *mut apr_pool_t,
        abort_fn: *mut c_void,
        allocator: *mut c_void,
    ) -> c_int;
    pub fn apr_pool_pre_cleanup_register(
        pool: *mut apr_pool_t,
        data: *const c_void,
        plain_cleanup: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    );
    pub fn apr_table_make(pool: *mut apr_pool_t, nelts: c_int) -> *mut apr_table_t;
    pub fn apr_table_add(table: *mut apr_table_t, key: *const c_char, val: *const c_char);

    // libconfuse, for walking gmond's parsed configuration.
    pub fn cfg_getsec(cfg: *mut cfg_t, name: *const c_char) -> *mut cfg_t;
    pub fn cfg_getnsec(cfg: *mut cfg_t, name: *const c_char, index: c_uint) -> *mut cfg_t;
    pub fn cfg_size(cfg: *mut cfg_t, name: *const c_char) -> c_uint;
    pub fn cfg_getstr(cfg: *mut cfg_t, name: *const c_char) -> *mut c_char;
    pub fn cfg_getbool(cfg: *mut cfg_t, name: *const c_char) -> cfg_bool_t;
    pub fn cfg_title(cfg: *mut cfg_t) -> *const c_char;
    pub fn cfg_name(cfg: *mut cfg_t) -> *const c_char;
    /// libconfuse's version string, e.g. "3.3" (a char array).
    pub static confuse_version: c_char;

    // For the tools: gmond's own config parser (libganglia; the result is a
    // `cfg_t*` of gmond's schema, `Ganglia_gmond_config` in ganglia.h; it
    // exits the process on a parse error), which needs APR initialised:
    // libganglia's pool constructor initialises it first.
    pub fn Ganglia_gmond_config_create(
        path: *mut c_char,
        fallback_to_default: c_int,
    ) -> *mut c_void;
    pub fn Ganglia_pool_create(parent: *mut c_void) -> *mut c_void;
}

/// APR's formatter, `apr_snprintf`: gmond prints metric values with it, so
/// the checker and the format rule's tests use it too (it differs from
/// libc's).
pub type AprSnprintf = unsafe extern "C" fn(*mut c_char, usize, *const c_char, ...) -> c_int;

/// [`AprSnprintf`], found at run time in the libapr that libganglia brings
/// into every process of ours (gmond's, the checker's; loaded here if not),
/// rather than linked:
/// a link from `modpython-check` would give the package a second, older
/// `libapr1` dependency beside the library's.
pub fn apr_snprintf() -> Option<AprSnprintf> {
    static FOUND: std::sync::OnceLock<Option<AprSnprintf>> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
        let mut symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"apr_snprintf".as_ptr()) };
        if symbol.is_null() {
            // A program that uses nothing else of APR (a unit test) loads it.
            // SAFETY: loading a shared library by its NUL-terminated name, and
            // dlsym on the handle it returned.
            symbol = unsafe {
                let handle = libc::dlopen(c"libapr-1.so.0".as_ptr(), libc::RTLD_NOW);
                if handle.is_null() {
                    std::ptr::null_mut()
                } else {
                    libc::dlsym(handle, c"apr_snprintf".as_ptr())
                }
            };
        }
        // SAFETY: the symbol is APR's apr_snprintf, whose C signature
        // (apr_strings.h) the type spells out.
        (!symbol.is_null())
            .then(|| unsafe { std::mem::transmute::<*mut c_void, AprSnprintf>(symbol) })
    })
}
