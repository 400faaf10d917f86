//! gmond's configuration as a metric host sees it: the `module { … }` blocks
//! of the parsed config (libconfuse), and the `param` list gmond hands to
//! the `python_module` block itself.
//!
//! The libconfuse walk is the only unsafe part; choosing the block for a
//! Python file is plain logic, shared with the tools.

use std::ffi::{CStr, CString};

use libc::c_char;

use crate::ffi;

/// One `param NAME { value = … }`. `value` is `None` when the block has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

/// One `module { … }` block of the merged `modules` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleBlock {
    pub name: Option<String>,
    pub language: Option<String>,
    pub enabled: bool,
    pub params: Vec<Param>,
}

impl ModuleBlock {
    /// Whether this block asks for a Python module (`language = "python"`, any case).
    pub fn is_python(&self) -> bool {
        self.language
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case("python"))
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
    let mut named = blocks
        .iter()
        .filter(|b| {
            b.is_python()
                && b.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(stem))
        })
        .peekable();
    if named.peek().is_none() {
        return Selection::Unconfigured;
    }
    named
        .find(|b| b.enabled)
        .map_or(Selection::Disabled, Selection::Enabled)
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

/// Reads every `modules { module { … } }` block of gmond's parsed config.
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
        params,
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
    }
}
