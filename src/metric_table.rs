//! The array of `Ganglia_25metric` gmond reads after `init`, with each
//! metric's metadata (groups, extra keys) in an APR table.
//!
//! gmond keeps pointers into this storage for the rest of the process, so a
//! `MetricTable` is built once and never changed or moved out of its heap
//! buffers; the host keeps it alive until the process ends.

use std::collections::HashMap;
use std::ffi::CString;
use std::ptr;

use crate::descriptor::{MetricDescriptor, ValueType};
use crate::ffi;
use crate::gmond_config::c_string;

/// The metadata key gmond, gmetad and the web front end use for groups.
const GROUP_KEY: &std::ffi::CStr = c"GROUP";

pub struct MetricTable {
    entries: Vec<ffi::Ganglia_25metric>,
    /// Owns every string the entries point to.
    _strings: Vec<CString>,
}

fn value_type_code(t: ValueType) -> ffi::Ganglia_value_types {
    match t {
        ValueType::String => ffi::Ganglia_value_types::GANGLIA_VALUE_STRING,
        ValueType::Uint => ffi::Ganglia_value_types::GANGLIA_VALUE_UNSIGNED_INT,
        ValueType::Int => ffi::Ganglia_value_types::GANGLIA_VALUE_INT,
        ValueType::Float => ffi::Ganglia_value_types::GANGLIA_VALUE_FLOAT,
        ValueType::Double => ffi::Ganglia_value_types::GANGLIA_VALUE_DOUBLE,
    }
}

impl MetricTable {
    /// Builds the table; the metadata tables go into a sub-pool of `pool`.
    pub fn build<'a>(
        descriptors: impl IntoIterator<Item = &'a MetricDescriptor>,
        pool: GmondPool,
    ) -> MetricTable {
        let pool = pool.sub_pool();
        let mut strings = Vec::new();
        // Units, slopes, formats and often descriptions repeat from metric
        // to metric: one copy of each text (gmond only reads them).
        let mut shared: HashMap<String, *mut libc::c_char> = HashMap::new();
        let mut keep = |text: &str, share: bool| -> *mut libc::c_char {
            if let Some(p) = shared.get(text) {
                return *p;
            }
            let c = c_string(text);
            // The CString's heap buffer does not move when the CString does.
            let p = c.as_ptr() as *mut libc::c_char;
            strings.push(c);
            if share {
                shared.insert(text.to_owned(), p);
            }
            p
        };
        let descriptors = descriptors.into_iter();
        let mut entries = Vec::with_capacity(descriptors.size_hint().0 + 1);
        for d in descriptors {
            let metadata = if pool.is_null() {
                ptr::null_mut()
            } else {
                metadata_table(d, pool)
            };
            entries.push(ffi::Ganglia_25metric {
                key: 0,
                name: keep(&d.name, false),
                tmax: d.time_max,
                type_: value_type_code(d.value_type),
                units: keep(&d.units, true),
                slope: keep(&d.slope, true),
                fmt: keep(&d.format, true),
                msg_size: d.value_type.msg_size(),
                desc: keep(&d.description, true),
                metadata: metadata as *mut libc::c_int,
            });
        }
        // A NULL name ends the array for gmond.
        entries.push(ffi::Ganglia_25metric {
            key: 0,
            name: ptr::null_mut(),
            tmax: 0,
            type_: ffi::Ganglia_value_types::GANGLIA_VALUE_UNKNOWN,
            units: ptr::null_mut(),
            slope: ptr::null_mut(),
            fmt: ptr::null_mut(),
            msg_size: 0,
            desc: ptr::null_mut(),
            metadata: ptr::null_mut(),
        });
        MetricTable {
            entries,
            _strings: strings,
        }
    }

    /// What gmond stores in `mmodule.metrics_info`.
    pub fn as_ptr(&self) -> *mut ffi::Ganglia_25metric {
        self.entries.as_ptr() as *mut ffi::Ganglia_25metric
    }
}

/// One APR table per metric: a GROUP entry per group, then the extra keys.
fn metadata_table(d: &MetricDescriptor, pool: *mut ffi::apr_pool_t) -> *mut ffi::apr_table_t {
    let capacity = (d.groups.len() + d.extra.len()).max(2) as libc::c_int;
    // SAFETY: `pool` is a live APR pool that outlives the table (a sub-pool of
    // the pool gmond passed to init; gmond destroys it at shutdown, after its
    // last read of the metadata).
    let table = unsafe { ffi::apr_table_make(pool, capacity) };
    if table.is_null() {
        return table;
    }
    for group in &d.groups {
        let value = c_string(group);
        // SAFETY: apr_table_add copies key and value into the table's pool.
        unsafe { ffi::apr_table_add(table, GROUP_KEY.as_ptr(), value.as_ptr()) };
    }
    for (key, value) in &d.extra {
        let (key, value) = (c_string(key), c_string(value));
        // SAFETY: as above; both strings are NUL-terminated and live for the call.
        unsafe { ffi::apr_table_add(table, key.as_ptr(), value.as_ptr()) };
    }
    table
}

/// The APR pool gmond passed to `init`, which lives until gmond exits.
#[derive(Clone, Copy)]
pub struct GmondPool(*mut ffi::apr_pool_t);

impl GmondPool {
    /// # Safety
    /// `pool` must be null or the live pool gmond passed to `init`.
    pub unsafe fn from_init(pool: *mut ffi::apr_pool_t) -> GmondPool {
        GmondPool(pool)
    }

    /// Has APR call `hook` when gmond starts destroying this pool, before
    /// any of its sub-pools go. gmond destroys its global pool at shutdown
    /// while its XML thread, whose pool is one of those sub-pools, may still
    /// run: work done after that point races the thread's use of freed
    /// memory (observed: gmond then dies of SIGSEGV in apr_terminate when a
    /// module's cleanup takes 100 ms or more). Cleanup belongs before it.
    pub fn on_shutdown(self, hook: unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: `self.0` is gmond's live init pool; APR stores the function
        // pointer and calls it once, from apr_pool_destroy, with our null data.
        unsafe { ffi::apr_pool_pre_cleanup_register(self.0, ptr::null(), Some(hook)) };
    }

    /// A sub-pool for our metadata (null if APR refuses).
    fn sub_pool(self) -> *mut ffi::apr_pool_t {
        if self.0.is_null() {
            return ptr::null_mut();
        }
        let mut pool = ptr::null_mut();
        // SAFETY: `self.0` is gmond's live init pool (from_init's contract);
        // APR writes the new pool into `pool` or leaves it null on failure.
        let status =
            unsafe { ffi::apr_pool_create_ex(&mut pool, self.0, ptr::null_mut(), ptr::null_mut()) };
        if status != 0 { ptr::null_mut() } else { pool }
    }
}
