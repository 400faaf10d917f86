//! The C ABI boundary: the `python_module` record gmond looks up, and the
//! three functions it calls. Each is a thin shell around safe code in
//! `host`, run inside `guard::ffi_boundary` so no panic reaches gmond.

use std::ptr;

use libc::c_int;

use crate::ffi::{self, apr_pool_t, g_val_t, mmodule};
use crate::metric_table::GmondPool;
use crate::{config_files, gmond_config, gmond_log, guard, host};

/// The module record. gmond writes several fields into it before checking
/// the magic numbers, so it must be a writable static, not a constant.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static mut python_module: mmodule = mmodule {
    version: ffi::MMODULE_MAGIC_NUMBER_MAJOR as c_int,
    minor_version: ffi::MMODULE_MAGIC_NUMBER_MINOR as c_int,
    name: c"modpython".as_ptr(),
    dynamic_load_handle: ptr::null_mut(),
    module_name: ptr::null_mut(),
    metric_name: ptr::null_mut(),
    module_params: ptr::null_mut(),
    module_params_list: ptr::null_mut(),
    config_file: ptr::null_mut(),
    next: ptr::null_mut(),
    magic: ffi::MMODULE_MAGIC_COOKIE as libc::c_ulong,
    init: Some(init),
    cleanup: Some(cleanup),
    metrics_info: ptr::null_mut(),
    handler: Some(handler),
};

extern "C" fn init(pool: *mut apr_pool_t) -> c_int {
    guard::ffi_boundary(
        "init",
        || -1,
        || {
            gmond_log::install();
            let module = &raw mut python_module;
            // SAFETY: gmond filled these fields at load time and calls init on its
            // main thread; nothing else touches the record concurrently.
            let (params, list, config) = unsafe {
                (
                    (*module).module_params,
                    (*module).module_params_list,
                    (*module).config_file,
                )
            };
            let module_dir = if params.is_null() {
                None
            } else {
                // SAFETY: a NUL-terminated APR copy of the config's `params`.
                let text = unsafe { std::ffi::CStr::from_ptr(params) };
                Some(text.to_string_lossy().into_owned())
            };
            let input = host::InitInput {
                module_dir,
                // SAFETY: gmond's own module_params_list (an array of mmparam).
                host_params: unsafe { gmond_config::read_param_list(list) },
                // SAFETY: gmond's parsed configuration root, alive for the
                // process (both calls).
                blocks: config_files::located(
                    unsafe { gmond_config::config_file_name(config) },
                    unsafe { gmond_config::read_module_blocks(config) },
                ),
                // SAFETY: as above.
                gmond_user: unsafe { gmond_config::read_gmond_user(config) },
                // SAFETY: as above.
                collected: unsafe { gmond_config::read_collected_metrics(config) },
                debug_level: gmond_log::debug_level(),
                // SAFETY: the pool gmond passes to init lives until gmond exits.
                pool: unsafe { GmondPool::from_init(pool) },
            };
            let pool_handle = input.pool;
            // gmond's main thread makes every call into us (its TCP
            // listener thread never does, and allocates little), and our
            // threads (loading, calls, watchdog) hand work to one another
            // rather than allocate side by side; an arena per thread would
            // only cost memory (~0.35 MB at 1,500 metrics,
            // docs/performance.md).
            // SAFETY: mallopt only changes a malloc tuning parameter; it
            // limits arenas created from now on and touches no memory.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
            let result = host::init(input);
            // Loading leaves megabytes freed but still resident in glibc's
            // arenas (metric_init's descriptors were converted on the
            // loading thread, whose arena the call worker inherits).
            // SAFETY: malloc_trim only returns free memory to the kernel.
            unsafe { libc::malloc_trim(0) };
            match result {
                Ok(table) => {
                    pool_handle.on_shutdown(shutdown_hook);
                    // SAFETY: as above; gmond reads metrics_info right after init returns.
                    unsafe { (*module).metrics_info = table };
                    0
                }
                Err(message) => {
                    log::error!("{message}");
                    -1
                }
            }
        },
    )
}

extern "C" fn handler(index: c_int) -> g_val_t {
    guard::ffi_boundary(
        "handler",
        || host::fallback_value(index),
        || host::collect(index),
    )
}

/// Runs the modules' cleanup as soon as gmond starts tearing down its pool
/// (see `GmondPool::on_shutdown`); gmond's own `cleanup` call later finds
/// nothing left to do.
unsafe extern "C" fn shutdown_hook(_data: *mut libc::c_void) -> c_int {
    guard::ffi_boundary(
        "cleanup",
        || 0,
        || {
            host::cleanup();
            0
        },
    )
}

extern "C" fn cleanup() {
    guard::ffi_boundary("cleanup", || (), host::cleanup)
}
