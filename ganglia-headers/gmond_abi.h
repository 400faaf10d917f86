/*
 * gmond_abi.h -- the part of Ganglia gmond 3.7.2's metric-module ABI that
 * modpython.so depends on, declared by this project from the documented
 * layouts (x86_64, LP64). It is NOT a copy of Ganglia's headers: it names
 * only what a metric module touches, and keeps APR and libconfuse opaque.
 *
 * tests/abi_drift.rs compiles a probe against this file and another against
 * the system's /usr/include/gm_metric.h and requires identical sizes and
 * offsets, so a change on gmond's side cannot slip by unnoticed.
 */
#ifndef MODPYTHON_GMOND_ABI_H
#define MODPYTHON_GMOND_ABI_H

#include <stdint.h>

/* Magic numbers gmond checks after loading a module (gm_mmn.h facts). */
#define MMODULE_MAGIC_NUMBER_MAJOR 20080913
#define MMODULE_MAGIC_NUMBER_MINOR 0
#define MMODULE_MAGIC_COOKIE 0x474D3332UL /* "GM32" */

/* Capacity of g_val_t.str, the terminating NUL included. */
#define MAX_G_STRING_SIZE 64

/* One UDP datagram's worth of XDR: what a metadata message must fit in. */
#define GANGLIA_MAX_MESSAGE_LEN 1464

/* Opaque host types: we only ever hold pointers to them. */
typedef struct apr_pool_t apr_pool_t;
typedef struct cfg_t cfg_t;

/* APR 1.x array header (apr_tables.h); gmond hands us module_params_list. */
typedef struct apr_array_header_t {
    apr_pool_t *pool;
    int elt_size;
    int nelts;
    int nalloc;
    char *elts;
} apr_array_header_t;

/* The type of a metric's value; selects the g_val_t member gmond reads. */
enum Ganglia_value_types {
    GANGLIA_VALUE_UNKNOWN = 0,
    GANGLIA_VALUE_STRING = 1,
    GANGLIA_VALUE_UNSIGNED_SHORT = 2,
    GANGLIA_VALUE_SHORT = 3,
    GANGLIA_VALUE_UNSIGNED_INT = 4,
    GANGLIA_VALUE_INT = 5,
    GANGLIA_VALUE_FLOAT = 6,
    GANGLIA_VALUE_DOUBLE = 7
};
typedef enum Ganglia_value_types Ganglia_value_types;

/* A metric's value, returned by value from the handler. */
typedef union {
    int8_t int8;
    uint8_t uint8;
    int16_t int16;
    uint16_t uint16;
    int32_t int32;
    uint32_t uint32;
    float f;
    double d;
    char str[MAX_G_STRING_SIZE];
} g_val_t;

/* One metric description; an entry with name == NULL ends the array. */
typedef struct Ganglia_25metric {
    int key;
    char *name;
    int tmax;
    Ganglia_value_types type;
    char *units;
    char *slope;
    char *fmt;
    int msg_size;
    char *desc;
    int *metadata; /* really an apr_table_t * */
} Ganglia_25metric;

/* A `param NAME { value = ... }` of the module's own config block. */
typedef struct mmodule_param {
    char *name;
    char *value; /* NULL when the block has no value */
} mmparam;

typedef g_val_t (*metric_func)(int metric_index);

/* The exported module record; gmond writes several fields before checking it. */
typedef struct mmodule_struct {
    int version;
    int minor_version;
    const char *name;
    void *dynamic_load_handle;
    char *module_name;
    char *metric_name;
    char *module_params;
    apr_array_header_t *module_params_list;
    cfg_t *config_file;
    struct mmodule_struct *next;
    unsigned long magic;
    int (*init)(apr_pool_t *p);
    void (*cleanup)(void);
    Ganglia_25metric *metrics_info;
    metric_func handler;
} mmodule;

#endif /* MODPYTHON_GMOND_ABI_H */
