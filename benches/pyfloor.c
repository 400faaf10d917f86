/*
 * pyfloor.c -- the physical floor for a Python metric host: the cost of the
 * handler's own Python call made from C, with nothing else around it.
 *
 *   pyfloor ITERATIONS  -> prints one line per case, "case  WALL ns/call"
 *
 * Cases, each calling `def h(name): return 42` with a prebuilt name string
 * and converting the result with PyLong_AsUnsignedLong:
 *   held      the GIL is held across all calls (a worker thread that keeps
 *             it for a burst of calls can do this)
 *   gilstate  PyGILState_Ensure/Release around every call (what a host on
 *             gmond's thread does if it gives the GIL back between calls,
 *             so Python threads started by modules keep running)
 *   string    held, handler returns a str, copied out with PyUnicode_AsUTF8AndSize
 *
 * Build: gcc -O2 $(python3-config --includes) -o pyfloor benches/pyfloor.c -lpython3.11
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0;
    PyStatus st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) { fprintf(stderr, "Python init failed\n"); return 1; }
    PyObject *globals = PyDict_New();
    PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
    PyObject *r = PyRun_String("def h(name):\n    return 42\n"
                               "def s(name):\n    return 'hello from python'\n",
                               Py_file_input, globals, globals);
    if (!r) { PyErr_Print(); return 1; }
    Py_DECREF(r);
    PyObject *h = PyDict_GetItemString(globals, "h");
    PyObject *s = PyDict_GetItemString(globals, "s");
    PyObject *name = PyUnicode_FromString("bm_trivial");
    unsigned long sink = 0;
    char buf[64];

    /* held */
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        PyObject *v = PyObject_CallOneArg(h, name);
        sink += PyLong_AsUnsignedLong(v);
        Py_DECREF(v);
    }
    double t1 = now_ns();
    printf("%-10s %10.1f ns/call\n", "held", (t1 - t0) / n);

    /* string */
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        PyObject *v = PyObject_CallOneArg(s, name);
        Py_ssize_t len;
        const char *p = PyUnicode_AsUTF8AndSize(v, &len);
        if (len > 63) len = 63;
        memcpy(buf, p, (size_t)len);
        buf[len] = 0;
        sink += (unsigned char)buf[0];
        Py_DECREF(v);
    }
    t1 = now_ns();
    printf("%-10s %10.1f ns/call\n", "string", (t1 - t0) / n);

    /* gilstate: give the GIL up first, then take it per call */
    PyThreadState *main_state = PyEval_SaveThread();
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        PyGILState_STATE g = PyGILState_Ensure();
        PyObject *v = PyObject_CallOneArg(h, name);
        sink += PyLong_AsUnsignedLong(v);
        Py_DECREF(v);
        PyGILState_Release(g);
    }
    t1 = now_ns();
    printf("%-10s %10.1f ns/call\n", "gilstate", (t1 - t0) / n);
    PyEval_RestoreThread(main_state);
    if (sink == 1) printf("\n");
    return 0;
}
