/* circuit_binding.c: qatfhe._core.Circuit, the Python face of qf_circuit
 * (csrc/circuit.h), and _core.bits_for_range (csrc/bitwidth.h).
 *
 *   Circuit(input_quant, in_shape, ops)
 *     input_quant  (scale, zero_point, qmin, qmax)
 *     in_shape     (C, H, W) of one input sample
 *     ops          list of dicts, one per op, key "kind" one of "dense", "conv",
 *                  "pool_sum", "round", "lookup", "reshape", "transpose",
 *                  "add", "decode" (the last op), "maxpool", and the keys its kind reads:
 *                  name (str), src, src2 (node indices), weight (int32 (out, in)
 *                  for dense, (OC, C, KH, KW) for conv), weight_zero_point (0),
 *                  kernel, stride, padding (pairs), pad_code, lsbs, offset
 *                  (int64 (C,) or None), scale (float32 (C,)), bias (float32
 *                  (C,) or None), relu (bool), quant ((scale, zero_point, qmin,
 *                  qmax)), shape ((C, H, W)), dims (pair of axes 0..2)
 *   run(X, ranges=True, engine="auto", n_threads=1) / run_codes(codes, ...)
 *       -> (out float32 (n, out), out_int int64 (n, out),
 *           ranges int64 (n_nodes, 2), or None with ranges=False)
 *     X and codes are (n, in_size); out_int: the integers the encrypted
 *     circuit returns (circuit.h); engine "auto" (float32 blocks when
 *     float_exact) or "int64" (the reference engine); n_threads in [1, 64]
 *     splits large batches over threads.  Every choice gives the same
 *     results bit for bit.
 *   float_exact: whether every value of the circuit stays below 2^24
 *   int8_ops: indices of the DENSE / CONV ops engine "auto" runs as 8-bit
 *     integer products (circuit_int8.c)
 *   quantize_input(X) -> int64 codes (n, in_size)
 *   nodes() -> list of dicts {name, op, kind, shape, static_min, static_max, static_bits}
 * A circuit is immutable once built, so runs from several threads may overlap;
 * each run borrows the object's kept workspace when no other run holds it
 * (so a single-sample call allocates nothing but its results), else its own. */
#include "bindings.h"
#include "../circuit.h"

typedef struct {
    PyObject_HEAD
    qf_circuit *circuit;
    int64_t *spare;           /* a run workspace kept for the next run, or NULL */
    int64_t spare_len;        /* its int64s                                      */
    int spare_busy;           /* lent to a run in progress (read and written with
                                 the GIL held; a concurrent run allocates its own) */
} CircuitObject;

_Static_assert(sizeof(qf_range) == 2 * sizeof(int64_t), "ranges are returned as (n_nodes, 2) int64");

static const char *NODE_KINDS[] = {"input", "accumulator", "pool_sum", "rounded",
                                   "lookup_output", "reshape", "transpose", "add", "maxpool"};
static const char *OP_KINDS[] = {"", "dense", "conv", "pool_sum", "round", "lookup", "reshape",
                                 "transpose", "add", "decode", "maxpool"};

/* ------------------------------------------------------------ spec parsing */

static int parse_quantizer(PyObject *obj, const char *what, qf_quantizer *q)
{
    double scale;
    long zp, qmin, qmax;
    if (!PyTuple_Check(obj) ||
        !PyArg_ParseTuple(obj, "dlll;quantizer must be (scale, zero_point, qmin, qmax)",
                          &scale, &zp, &qmin, &qmax)) {
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a tuple (scale, zero_point, qmin, qmax)",
                         what);
        }
        return -1;
    }
    long lim = QF_CIRCUIT_CODE_LIMIT;
    if (zp < -lim || zp > lim || qmin < -lim || qmin > lim || qmax < -lim || qmax > lim) {
        PyErr_Format(PyExc_ValueError, "%s: zero point, qmin and qmax must lie in [-%ld, %ld]",
                     what, lim, lim);
        return -1;
    }
    *q = (qf_quantizer){(float)scale, (int32_t)zp, (int32_t)qmin, (int32_t)qmax};
    return 0;
}

/* An int field of op k: fallback when absent or None. */
static int field_int(PyObject *d, int k, const char *key, long fallback, int *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    long x = fallback;
    if (v && v != Py_None) {
        x = PyLong_AsLong(v);
        if (x == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "op %d: field %s must be an integer", k, key);
            return -1;
        }
    }
    if (x < INT32_MIN || x > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "op %d: field %s = %ld does not fit int32", k, key, x);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* A tuple of n ints of op k (zeros when absent). */
static int field_ints(PyObject *d, int k, const char *key, int n, int *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    for (int i = 0; i < n; i++)
        out[i] = 0;
    if (!v || v == Py_None)
        return 0;
    PyObject *seq = PySequence_Fast(v, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != n) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "op %d: field %s must be a sequence of %d integers", k,
                     key, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if ((x == -1 && PyErr_Occurred()) || x < INT32_MIN || x > INT32_MAX) {
            Py_DECREF(seq);
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "op %d: field %s must hold %d int32 integers", k,
                         key, n);
            return -1;
        }
        out[i] = (int)x;
    }
    Py_DECREF(seq);
    return 0;
}

/* *out = array field `key` of op k as dtype with ndim dims (NULL when absent
 * or None); the array is appended to keep, which outlives the call to
 * qf_circuit_create that copies it. */
static int field_array(PyObject *d, int k, const char *key, int dtype, int ndim,
                       PyObject *keep, PyArrayObject **out)
{
    *out = NULL;
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v || v == Py_None)
        return 0;
    char what[48];
    snprintf(what, sizeof what, "op %d %s", k, key);
    PyArrayObject *a = qfpy_array(v, what, dtype, ndim, 0);
    if (!a)
        return -1;
    int rc = PyList_Append(keep, (PyObject *)a);
    Py_DECREF(a);
    if (rc < 0)
        return -1;
    if (PyArray_SIZE(a) > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "op %d: %s is too large", k, key);
        return -1;
    }
    *out = a;
    return 0;
}

static int op_kind(PyObject *d, int k)
{
    PyObject *v = PyDict_GetItemString(d, "kind");
    const char *s = v && PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
    for (int i = QF_OP_DENSE; s && i <= QF_OP_MAXPOOL; i++)
        if (strcmp(s, OP_KINDS[i]) == 0)
            return i;
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "op %d: kind must be one of dense, conv, pool_sum, round, "
                 "lookup, reshape, transpose, add, decode, maxpool", k);
    return -1;
}

/* Fill spec from one op dict. */
static int parse_op(PyObject *d, int k, qf_op_spec *spec, PyObject *keep)
{
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "op %d must be a dict", k);
        return -1;
    }
    memset(spec, 0, sizeof *spec);
    if ((spec->kind = op_kind(d, k)) < 0)
        return -1;
    PyObject *name = PyDict_GetItemString(d, "name");
    spec->name = name && PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : "";
    if (!spec->name)
        return -1;
    int zw, pad, lsbs, relu;
    if (field_int(d, k, "src", -1, &spec->src) < 0 || field_int(d, k, "src2", -1, &spec->src2) < 0 ||
        field_int(d, k, "weight_zero_point", 0, &zw) < 0 ||
        field_int(d, k, "pad_code", 0, &pad) < 0 || field_int(d, k, "lsbs", 0, &lsbs) < 0 ||
        field_int(d, k, "relu", 0, &relu) < 0 ||
        field_ints(d, k, "kernel", 2, spec->kernel) < 0 ||
        field_ints(d, k, "stride", 2, spec->stride) < 0 ||
        field_ints(d, k, "padding", 2, spec->padding) < 0 ||
        field_ints(d, k, "shape", 3, spec->shape) < 0 || field_ints(d, k, "dims", 2, spec->dims) < 0)
        return -1;
    spec->weight_zero_point = zw;
    spec->pad_code = pad;
    spec->lsbs = lsbs;
    spec->relu = relu != 0;

    PyArrayObject *w = NULL, *offset = NULL, *scale = NULL, *bias = NULL;
    int w_ndim = spec->kind == QF_OP_CONV ? 4 : 2;
    if (field_array(d, k, "weight", NPY_INT32, w_ndim, keep, &w) < 0 ||
        field_array(d, k, "offset", NPY_INT64, 1, keep, &offset) < 0 ||
        field_array(d, k, "scale", NPY_FLOAT32, 1, keep, &scale) < 0 ||
        field_array(d, k, "bias", NPY_FLOAT32, 1, keep, &bias) < 0)
        return -1;
    if (w) {
        spec->weight = PyArray_DATA(w);
        for (int i = 0; i < 4; i++)
            spec->weight_shape[i] = i < w_ndim ? (int)PyArray_DIM(w, i) : 1;
    }
    if (scale) {
        spec->scale = PyArray_DATA(scale);
        spec->n_channels = (int)PyArray_DIM(scale, 0);
    }
    if ((offset && (!scale || PyArray_DIM(offset, 0) != spec->n_channels)) ||
        (bias && (!scale || PyArray_DIM(bias, 0) != spec->n_channels))) {
        PyErr_Format(PyExc_ValueError, "op %d: offset, scale and bias must have one entry per "
                     "channel each", k);
        return -1;
    }
    spec->offset = offset ? PyArray_DATA(offset) : NULL;
    spec->bias = bias ? PyArray_DATA(bias) : NULL;
    PyObject *q = PyDict_GetItemString(d, "quant");
    if (q && q != Py_None && parse_quantizer(q, "quant", &spec->quant) < 0)
        return -1;
    return 0;
}

static int parse_shape(PyObject *obj, int64_t shape[3])
{
    long long s[3];
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "LLL", &s[0], &s[1], &s[2])) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "in_shape must be a tuple (C, H, W) of integers");
        return -1;
    }
    for (int d = 0; d < 3; d++)
        shape[d] = s[d];
    return 0;
}

/* ------------------------------------------------------------ lifecycle */

static int Circuit_init(CircuitObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"input_quant", "in_shape", "ops", NULL};
    PyObject *iq, *shape_obj, *ops;
    if (self->circuit) {   /* runs in other threads may hold it, views may point into it */
        PyErr_SetString(PyExc_RuntimeError, "a Circuit cannot be re-initialised; build a new one");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!", kwlist, &iq, &shape_obj, &PyList_Type,
                                     &ops))
        return -1;
    qf_quantizer input;
    int64_t in_shape[3];
    if (parse_quantizer(iq, "input_quant", &input) < 0 || parse_shape(shape_obj, in_shape) < 0)
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(ops);
    if (n < 1 || n > 100000) {
        PyErr_SetString(PyExc_ValueError, "ops must be a list of 1 to 100000 op dicts");
        return -1;
    }
    qf_op_spec *specs = PyMem_Calloc((size_t)n, sizeof *specs);
    PyObject *keep = PyList_New(0);
    int rc = -1;
    if (!specs || !keep) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        if (parse_op(PyList_GET_ITEM(ops, k), (int)k, &specs[k], keep) < 0)
            goto done;
    char err[256] = "";
    qf_circuit *c = NULL;
    qf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qf_circuit_create(&c, &input, in_shape, specs, (int)n, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != QF_OK) {
        qfpy_raise(st, err);
        goto done;
    }
    self->circuit = c;
    rc = 0;
done:
    PyMem_Free(specs);
    Py_XDECREF(keep);
    return rc;
}

static void Circuit_dealloc(CircuitObject *self)
{
    PyMem_Free(self->spare);
    qf_circuit_free(self->circuit);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(CircuitObject *self)
{
    if (!self->circuit) {
        PyErr_SetString(PyExc_RuntimeError, "circuit is not initialised");
        return 0;
    }
    return 1;
}

/* A C-contiguous (n, in_size) array of dtype from obj, or NULL. */
static PyArrayObject *batch(CircuitObject *self, PyObject *obj, const char *name, int dtype)
{
    PyArrayObject *a = qfpy_array(obj, name, dtype, 2, 0);
    if (!a) return NULL;
    int64_t in = qf_circuit_in_size(self->circuit);
    if (PyArray_DIM(a, 1) != in) {
        PyErr_Format(PyExc_ValueError, "%s must have %lld values per sample, got %zd", name,
                     (long long)in, (Py_ssize_t)PyArray_DIM(a, 1));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

/* ------------------------------------------------------------ compute */

static const char *ENGINES[] = {"auto", "int64"};

/* A workspace of len int64s: the kept one when no other run holds it (grown
 * as needed), else a new one; *kept says which.  NULL with MemoryError. */
static int64_t *take_workspace(CircuitObject *self, int64_t len, int *kept)
{
    *kept = 0;
    if (!self->spare_busy) {
        if (self->spare_len < len) {
            PyMem_Free(self->spare);
            self->spare = PyMem_Malloc((size_t)len * sizeof(int64_t));
            self->spare_len = self->spare ? len : 0;
        }
        if (self->spare) {
            self->spare_busy = 1;
            *kept = 1;
            return self->spare;
        }
    }
    int64_t *ws = PyMem_Malloc((size_t)len * sizeof(int64_t));
    if (!ws)
        PyErr_NoMemory();
    return ws;
}

static void give_back_workspace(CircuitObject *self, int64_t *ws, int kept)
{
    if (kept)
        self->spare_busy = 0;
    else
        PyMem_Free(ws);
}

/* run(X or codes, ranges=True, engine="auto", n_threads=1). */
static PyObject *run_common(CircuitObject *self, PyObject *args, PyObject *kwds, int from_codes)
{
    static char *kwlist[] = {"", "ranges", "engine", "n_threads", NULL};
    PyObject *arg;
    int want_ranges = 1, n_threads = 1;
    const char *engine_name = "auto";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|psi", kwlist, &arg, &want_ranges,
                                     &engine_name, &n_threads))
        return NULL;
    if (!ready(self)) return NULL;
    qf_circuit_run_opts opts = {-1, n_threads};
    for (int e = 0; e < 2; e++)
        if (strcmp(engine_name, ENGINES[e]) == 0)
            opts.engine = e;
    if (opts.engine < 0) {
        PyErr_Format(PyExc_ValueError, "engine must be 'auto' or 'int64', got '%s'", engine_name);
        return NULL;
    }
    if (n_threads < 1 || n_threads > QF_CIRCUIT_MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "n_threads must be an integer in [1, %d], got %d",
                     QF_CIRCUIT_MAX_THREADS, n_threads);
        return NULL;
    }
    const qf_circuit *c = self->circuit;
    PyArrayObject *x = batch(self, arg, from_codes ? "codes" : "X",
                             from_codes ? NPY_INT64 : NPY_FLOAT32);
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0);
    npy_intp out_dims[2] = {n, (npy_intp)qf_circuit_out_size(c)};
    npy_intp range_dims[2] = {qf_circuit_n_nodes(c), 2};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, out_dims, NPY_FLOAT32);
    PyArrayObject *out_int = (PyArrayObject *)PyArray_SimpleNew(2, out_dims, NPY_INT64);
    PyArrayObject *ranges = want_ranges ? (PyArrayObject *)PyArray_SimpleNew(2, range_dims,
                                                                             NPY_INT64) : NULL;
    int kept = 0;
    int64_t *ws = out && out_int && (ranges || !want_ranges)
                      ? take_workspace(self, qf_circuit_workspace_len(c, n_threads), &kept)
                      : NULL;
    PyObject *result = NULL;
    if (!out || !out_int || (want_ranges && !ranges) || !ws) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    qf_range *r = want_ranges ? PyArray_DATA(ranges) : NULL;   /* (min, max) pairs of int64 */
    if (r)
        qf_range_reset(r, qf_circuit_n_nodes(c));
    char err[256] = "";
    qf_status st;
    Py_BEGIN_ALLOW_THREADS
    if (from_codes)
        st = qf_circuit_run_codes(c, PyArray_DATA(out), PyArray_DATA(out_int), r,
                                  PyArray_DATA(x), n, &opts, ws, err, sizeof err);
    else
        st = qf_circuit_run(c, PyArray_DATA(out), PyArray_DATA(out_int), r, PyArray_DATA(x), n,
                            &opts, ws, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != QF_OK) {
        qfpy_raise(st, err);
        goto done;
    }
    result = PyTuple_Pack(3, out, out_int, want_ranges ? (PyObject *)ranges : Py_None);
done:
    if (ws)
        give_back_workspace(self, ws, kept);
    Py_DECREF(x);
    Py_XDECREF(out);
    Py_XDECREF(out_int);
    Py_XDECREF(ranges);
    return result;
}

static PyObject *Circuit_run(CircuitObject *self, PyObject *args, PyObject *kwds)
{
    return run_common(self, args, kwds, 0);
}

static PyObject *Circuit_run_codes(CircuitObject *self, PyObject *args, PyObject *kwds)
{
    return run_common(self, args, kwds, 1);
}

static PyObject *Circuit_quantize_input(CircuitObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *x = batch(self, arg, "X", NPY_FLOAT32);
    if (!x) return NULL;
    PyArrayObject *codes = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_INT64);
    if (!codes) { Py_DECREF(x); return NULL; }
    char err[256] = "";
    qf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qf_circuit_quantize_input(self->circuit, PyArray_DATA(codes), PyArray_DATA(x),
                                   PyArray_DIM(x, 0), err, sizeof err);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    if (st != QF_OK) {
        Py_DECREF(codes);
        return qfpy_raise(st, err);
    }
    return (PyObject *)codes;
}

static PyObject *Circuit_nodes(CircuitObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    const qf_circuit *c = self->circuit;
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int j = 0; j < qf_circuit_n_nodes(c); j++) {
        const qf_node_info *nd = qf_circuit_node(c, j);
        PyObject *d = Py_BuildValue(
            "{s:s,s:i,s:s,s:(LLL),s:L,s:L,s:i}", "name", qf_circuit_op_name(c, nd->op),
            "op", nd->op, "kind", NODE_KINDS[nd->kind], "shape", (long long)nd->shape[0],
            (long long)nd->shape[1], (long long)nd->shape[2],
            "static_min", (long long)nd->static_min, "static_max", (long long)nd->static_max,
            "static_bits", qf_bits_for_range(nd->static_min, nd->static_max));
        if (!d || PyList_Append(list, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(d);
    }
    return list;
}

static PyObject *Circuit_get_in(CircuitObject *self, void *unused)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLongLong(qf_circuit_in_size(self->circuit));
}

static PyObject *Circuit_get_out(CircuitObject *self, void *unused)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLongLong(qf_circuit_out_size(self->circuit));
}

static PyObject *Circuit_get_float_exact(CircuitObject *self, void *unused)
{
    if (!ready(self)) return NULL;
    return PyBool_FromLong(qf_circuit_float_exact(self->circuit));
}

static PyObject *Circuit_get_int8_ops(CircuitObject *self, void *unused)
{
    if (!ready(self)) return NULL;
    PyObject *list = PyList_New(0);
    for (int k = 0; list && k < qf_circuit_n_ops(self->circuit); k++) {
        if (!qf_circuit_op_int8(self->circuit, k))
            continue;
        PyObject *index = PyLong_FromLong(k);
        if (!index || PyList_Append(list, index) < 0) {
            Py_XDECREF(index);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(index);
    }
    return list;
}

static PyObject *Circuit_get_n_nodes(CircuitObject *self, void *unused)
{
    if (!ready(self)) return NULL;
    return PyLong_FromLong(qf_circuit_n_nodes(self->circuit));
}

static PyObject *bits_for_range(PyObject *module, PyObject *args)
{
    long long lo, hi;
    if (!PyArg_ParseTuple(args, "LL", &lo, &hi)) return NULL;
    if (lo > hi) {
        PyErr_Format(PyExc_ValueError, "bits_for_range needs lo <= hi, got [%lld, %lld]", lo, hi);
        return NULL;
    }
    return PyLong_FromLong(qf_bits_for_range(lo, hi));
}

static PyMethodDef Circuit_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Circuit_run, METH_VARARGS | METH_KEYWORDS,
     "run(X, ranges=True, engine='auto', n_threads=1) -> (out float32 (n, out), out_int int64 "
     "(n, out), ranges int64 (n_nodes, 2) or None)"},
    {"run_codes", (PyCFunction)(void (*)(void))Circuit_run_codes, METH_VARARGS | METH_KEYWORDS,
     "run_codes(codes, ranges=True, engine='auto', n_threads=1) -> (out, out_int, ranges): "
     "run on integer input codes (n, in)"},
    {"quantize_input", (PyCFunction)Circuit_quantize_input, METH_O,
     "quantize_input(X) -> int64 codes (n, in)"},
    {"nodes", (PyCFunction)Circuit_nodes, METH_NOARGS,
     "nodes() -> list of {name, op, kind, shape, static_min, static_max, static_bits}"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Circuit_getset[] = {
    {"in_features", (getter)Circuit_get_in, NULL, "input values per sample (C * H * W)", NULL},
    {"out_features", (getter)Circuit_get_out, NULL, "output values per sample", NULL},
    {"n_nodes", (getter)Circuit_get_n_nodes, NULL, "number of integer value nodes", NULL},
    {"float_exact", (getter)Circuit_get_float_exact, NULL,
     "whether engine 'auto' runs the circuit in float32 blocks (every value below 2^24)", NULL},
    {"int8_ops", (getter)Circuit_get_int8_ops, NULL,
     "indices of the dense / conv ops engine 'auto' runs as 8-bit integer products", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CircuitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qatfhe._core.Circuit",
    .tp_doc = "An exact integer circuit (csrc/circuit.h).",
    .tp_basicsize = sizeof(CircuitObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Circuit_init,
    .tp_dealloc = (destructor)Circuit_dealloc,
    .tp_methods = Circuit_methods,
    .tp_getset = Circuit_getset,
};

static PyMethodDef circuit_functions[] = {
    {"bits_for_range", bits_for_range, METH_VARARGS,
     "bits_for_range(lo, hi) -> bits an FHE integer needs to hold [lo, hi]"},
    {NULL, NULL, 0, NULL},
};

int qfpy_register_circuit(PyObject *module)
{
    if (PyType_Ready(&CircuitType) < 0) return -1;
    Py_INCREF(&CircuitType);
    if (PyModule_AddObject(module, "Circuit", (PyObject *)&CircuitType) < 0) {
        Py_DECREF(&CircuitType);
        return -1;
    }
    return PyModule_AddFunctions(module, circuit_functions);
}
