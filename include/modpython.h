/*
 * modpython.h -- what modpython.so exports.
 *
 * gmond looks the module up by the configured `name`, so the one exported
 * data symbol is `python_module`. Everything else in the library is private.
 */
#ifndef MODPYTHON_H
#define MODPYTHON_H

#include "../ganglia-headers/gmond_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The module record gmond loads; its init/cleanup/handler are modpython's. */
extern mmodule python_module;

#ifdef __cplusplus
}
#endif

#endif /* MODPYTHON_H */
