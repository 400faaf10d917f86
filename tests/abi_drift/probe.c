/*
 * Prints the layout facts modpython.so relies on, one "key value" per line.
 * tests/abi_drift.rs builds this twice -- against Ganglia's installed headers
 * (-DUSE_SYSTEM) and against our ganglia-headers/gmond_abi.h -- and requires
 * identical output, so our hand-written header cannot drift from gmond's.
 */
#include <stddef.h>
#include <stdio.h>

#if defined(USE_SYSTEM)
#include <gm_metric.h>
#include <gm_mmn.h>
#elif !defined(PROBE_PREINCLUDED) /* else: modpython.h came in via -include */
#include "gmond_abi.h"
#endif

#define SIZE(t) printf("sizeof %s %zu\n", #t, sizeof(t))
#define ALIGN(t) printf("alignof %s %zu\n", #t, (size_t)_Alignof(t))
/* Offset and size together: a field changing type at the same offset counts. */
#define FIELD(t, f)                                                            \
    printf("field %s.%s %zu %zu\n", #t, #f, offsetof(t, f),                    \
           sizeof(((t *)0)->f))
#define VALUE(e) printf("value %s %lld\n", #e, (long long)(e))

int main(void)
{
    SIZE(mmodule);
    ALIGN(mmodule);
    FIELD(mmodule, version);
    FIELD(mmodule, minor_version);
    FIELD(mmodule, name);
    FIELD(mmodule, dynamic_load_handle);
    FIELD(mmodule, module_name);
    FIELD(mmodule, metric_name);
    FIELD(mmodule, module_params);
    FIELD(mmodule, module_params_list);
    FIELD(mmodule, config_file);
    FIELD(mmodule, next);
    FIELD(mmodule, magic);
    FIELD(mmodule, init);
    FIELD(mmodule, cleanup);
    FIELD(mmodule, metrics_info);
    FIELD(mmodule, handler);

    SIZE(Ganglia_25metric);
    ALIGN(Ganglia_25metric);
    FIELD(Ganglia_25metric, key);
    FIELD(Ganglia_25metric, name);
    FIELD(Ganglia_25metric, tmax);
    FIELD(Ganglia_25metric, type);
    FIELD(Ganglia_25metric, units);
    FIELD(Ganglia_25metric, slope);
    FIELD(Ganglia_25metric, fmt);
    FIELD(Ganglia_25metric, msg_size);
    FIELD(Ganglia_25metric, desc);
    FIELD(Ganglia_25metric, metadata);

    SIZE(g_val_t);
    ALIGN(g_val_t);
    FIELD(g_val_t, int8);
    FIELD(g_val_t, uint8);
    FIELD(g_val_t, int16);
    FIELD(g_val_t, uint16);
    FIELD(g_val_t, int32);
    FIELD(g_val_t, uint32);
    FIELD(g_val_t, f);
    FIELD(g_val_t, d);
    FIELD(g_val_t, str);

    SIZE(mmparam);
    ALIGN(mmparam);
    FIELD(mmparam, name);
    FIELD(mmparam, value);

    SIZE(apr_array_header_t);
    ALIGN(apr_array_header_t);
    FIELD(apr_array_header_t, pool);
    FIELD(apr_array_header_t, elt_size);
    FIELD(apr_array_header_t, nelts);
    FIELD(apr_array_header_t, nalloc);
    FIELD(apr_array_header_t, elts);

    SIZE(Ganglia_value_types);
    VALUE(GANGLIA_VALUE_UNKNOWN);
    VALUE(GANGLIA_VALUE_STRING);
    VALUE(GANGLIA_VALUE_UNSIGNED_SHORT);
    VALUE(GANGLIA_VALUE_SHORT);
    VALUE(GANGLIA_VALUE_UNSIGNED_INT);
    VALUE(GANGLIA_VALUE_INT);
    VALUE(GANGLIA_VALUE_FLOAT);
    VALUE(GANGLIA_VALUE_DOUBLE);

    VALUE(MMODULE_MAGIC_NUMBER_MAJOR);
    VALUE(MMODULE_MAGIC_NUMBER_MINOR);
    VALUE(MMODULE_MAGIC_COOKIE);
    VALUE(MAX_G_STRING_SIZE);
    VALUE(GANGLIA_MAX_MESSAGE_LEN);
    return 0;
}
