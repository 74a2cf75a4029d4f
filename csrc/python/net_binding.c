/* net_binding.c: qatfhe._core.Net, the Python face of qf_net (csrc/net.h):
 * layer spec parsing, lifecycle (built once, never re-initialised), the type
 * and its method table.  Every method converts and checks its buffers,
 * releases the GIL around one core call and maps the status through
 * qfpy_raise; net_binding.h describes the lock that makes one net safe to
 * share between threads, net_run_binding.c and net_state_binding.c hold the
 * methods. */
#include "net_binding.h"

/* ------------------------------------------------------------ spec parsing */

static int dict_int(PyObject *d, const char *key, int fallback, int *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) { *out = fallback; return 0; }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (x < -2147483647L || x > 2147483647L) {
        PyErr_Format(PyExc_ValueError, "layer field %s is out of range", key);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int dict_float(PyObject *d, const char *key, float fallback, float *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) { *out = fallback; return 0; }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) return -1;
    *out = (float)x;
    return 0;
}

static int parse_quant(PyObject *layer, const char *key, qf_quant_spec *q)
{
    memset(q, 0, sizeof *q);
    PyObject *d = PyDict_GetItemString(layer, key);
    if (!d || d == Py_None) return 0;
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dict", key);
        return -1;
    }
    if (dict_int(d, "kind", 0, &q->kind) < 0 || dict_int(d, "bits", 8, &q->bits) < 0 ||
        dict_int(d, "signed", 1, &q->is_signed) < 0 || dict_int(d, "narrow", 0, &q->narrow) < 0 ||
        dict_float(d, "threshold", 1.0f, &q->threshold) < 0 ||
        dict_int(d, "stats_steps", 300, &q->stats_steps) < 0 ||
        dict_float(d, "momentum", 0.1f, &q->momentum) < 0 ||
        dict_float(d, "percentile", 99.999f, &q->percentile) < 0)
        return -1;
    return 0;
}

static int dict_pair(PyObject *d, const char *key, int fallback, int out[2])
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) { out[0] = out[1] = fallback; return 0; }
    if (!PyArg_ParseTuple(v, "ii", &out[0], &out[1])) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "layer field %s must be a pair of integers", key);
        return -1;
    }
    return 0;
}

static int parse_layer(PyObject *layer, qf_layer_spec *s)
{
    memset(s, 0, sizeof *s);
    if (!PyDict_Check(layer)) {
        PyErr_SetString(PyExc_TypeError, "each layer spec must be a dict");
        return -1;
    }
    if (dict_int(layer, "kind", 0, &s->kind) < 0 ||
        dict_int(layer, "in_features", 0, &s->in_features) < 0 ||
        dict_int(layer, "out_features", 0, &s->out_features) < 0 ||
        dict_int(layer, "bias", 1, &s->has_bias) < 0 || dict_int(layer, "relu", 0, &s->relu) < 0 ||
        parse_quant(layer, "weight_quant", &s->weight_quant) < 0 ||
        parse_quant(layer, "act_quant", &s->act_quant) < 0 ||
        dict_int(layer, "per_channel", 0, &s->per_channel) < 0 ||
        dict_pair(layer, "kernel", 1, s->kernel) < 0 || dict_pair(layer, "stride", 1, s->stride) < 0 ||
        dict_pair(layer, "padding", 0, s->padding) < 0 || dict_pair(layer, "dims", 1, s->dims) < 0 ||
        dict_int(layer, "begin", -1, &s->begin) < 0 ||
        dict_float(layer, "eps", 1e-5f, &s->eps) < 0 ||
        dict_float(layer, "momentum", 0.1f, &s->momentum) < 0 ||
        dict_int(layer, "affine", 1, &s->affine) < 0 ||
        dict_int(layer, "track_running_stats", 1, &s->track_running_stats) < 0 ||
        dict_int(layer, "accumulator_bits", 0, &s->accumulator_bits) < 0 ||
        dict_int(layer, "accumulator_split", 0, &s->accumulator_split) < 0 ||
        dict_int(layer, "accumulator_round", 0, &s->accumulator_round) < 0 ||
        dict_int(layer, "groups", 1, &s->groups) < 0)
        return -1;
    PyObject *shape = PyDict_GetItemString(layer, "shape");
    if (shape && !PyArg_ParseTuple(shape, "iii", &s->shape[0], &s->shape[1], &s->shape[2])) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "layer field shape must be three integers");
        return -1;
    }
    return 0;
}

/* (C, H, W) from an int (features) or a 1- to 3-tuple; missing H, W are 1. */
int qfpy_net_parse_shape(PyObject *obj, int64_t shape[3])
{
    shape[0] = 0; shape[1] = 1; shape[2] = 1;
    if (PyLong_Check(obj)) {
        shape[0] = PyLong_AsLongLong(obj);
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) < 1 || PyTuple_GET_SIZE(obj) > 3) {
        PyErr_SetString(PyExc_TypeError, "in_shape must be an int or a tuple of 1 to 3 ints");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); i++) {
        shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(obj, i));
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

PyObject *qfpy_net_shape_tuple(const int64_t s[3])
{
    return Py_BuildValue("(LLL)", (long long)s[0], (long long)s[1], (long long)s[2]);
}

int qfpy_net_same_shape(const qf_net *net, const int64_t shape[3])
{
    int64_t s[3];
    qf_net_input_shape(net, s);
    return qf_net_out_size(net) > 0 && s[0] == shape[0] && s[1] == shape[1] && s[2] == shape[2];
}

/* ------------------------------------------------------------ lifecycle */

static PyObject *Net_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    NetObject *self = (NetObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
#ifdef PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP
    /* a waiting fit is not starved by a stream of inferences */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    int rc = pthread_rwlock_init(&self->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->lock_ready = 1;
    self->views = PyList_New(0);
    if (!self->views) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int Net_init(NetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"layers", "in_shape", "seed", NULL};
    PyObject *layers, *shape_obj;
    unsigned long long seed;
    int64_t in_shape[3];
    if (self->net) {   /* views and running calls point into it: never rebuilt in place */
        PyErr_SetString(PyExc_RuntimeError, "a Net cannot be re-initialised; build a new one");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OK", kwlist, &PyList_Type, &layers,
                                     &shape_obj, &seed))
        return -1;
    if (qfpy_net_parse_shape(shape_obj, in_shape) < 0)
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(layers);
    qf_layer_spec *specs = PyMem_Calloc((size_t)(n ? n : 1), sizeof *specs);
    if (!specs) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_layer(PyList_GET_ITEM(layers, i), &specs[i]) < 0) {
            PyMem_Free(specs);
            return -1;
        }
    }
    char err[256] = "";
    qf_net *net = NULL;
    qf_status st = qf_net_create_shaped(&net, specs, (int)n, in_shape, seed, err, sizeof err);
    PyMem_Free(specs);
    if (st != QF_OK) {
        qfpy_raise(st, err);
        return -1;
    }
    if (self->net) {   /* another thread initialised it meanwhile */
        qf_net_free(net);
        PyErr_SetString(PyExc_RuntimeError, "a Net cannot be re-initialised; build a new one");
        return -1;
    }
    self->net = net;
    return 0;
}

static void Net_dealloc(NetObject *self)
{
    qf_net_infer_free(self->spare);
    qf_net_free(self->net);
    if (self->lock_ready)
        pthread_rwlock_destroy(&self->lock);
    Py_XDECREF(self->views);
    Py_XDECREF(self->frozen);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Net_methods[] = {
    {"forward", (PyCFunction)Net_forward, METH_O,
     "forward(X) -> outputs (n, out_size); in eval mode as infer(X)"},
    {"infer", (PyCFunction)Net_infer, METH_O,
     "infer(X) -> eval-mode outputs, whatever the mode; safe from several threads at once"},
    {"backward_ce", (PyCFunction)Net_backward_ce, METH_O,
     "backward_ce(y) -> (mean loss, n_correct): cross-entropy of the last training forward"},
    {"backward", (PyCFunction)Net_backward, METH_O, "backward(grad_output)"},
    {"zero_grad", (PyCFunction)Net_zero_grad, METH_NOARGS, "zero every gradient"},
    {"step", (PyCFunction)Net_step, METH_NOARGS, "one optimizer step"},
    {"set_optimizer", (PyCFunction)Net_set_optimizer, METH_VARARGS | METH_KEYWORDS,
     "set_optimizer(kind, lr, beta1, beta2, eps, weight_decay, momentum, dampening, nesterov)"},
    {"set_lr", (PyCFunction)Net_set_lr, METH_VARARGS, "set_lr(lr): keep the optimizer state"},
    {"train_epoch", (PyCFunction)Net_train_epoch, METH_VARARGS | METH_KEYWORDS,
     "train_epoch(X, y, batch_size, seed=None) -> (loss sum, n_correct)"},
    {"tensors", (PyCFunction)Net_tensors, METH_NOARGS, "list of tensor dicts with NumPy views"},
    {"get_mask", (PyCFunction)Net_get_mask, METH_VARARGS, "get_mask(name) -> uint8 copy or None"},
    {"set_mask", (PyCFunction)Net_set_mask, METH_VARARGS, "set_mask(name, mask or None)"},
    {"init_uniform", (PyCFunction)Net_init_uniform, METH_VARARGS, "init_uniform(name, a, b)"},
    {"act_scale", (PyCFunction)Net_act_scale, METH_VARARGS, "act_scale(layer) -> eval scale"},
    {"weight_scale", (PyCFunction)Net_weight_scale, METH_VARARGS,
     "weight_scale(layer) -> float32 (out_channels,) scales of the current weights"},
    {"weight_codes", (PyCFunction)Net_weight_codes, METH_VARARGS,
     "weight_codes(layer) -> (float32 codes shaped as the weight, float32 (out,) scales), "
     "as an eval-mode forward uses them (A2Q included)"},
    {"a2q_budget", (PyCFunction)Net_a2q_budget, METH_VARARGS,
     "a2q_budget(layer) -> None, or (L1 budget T, input bits N, input signed) of an A2Q layer"},
    {"set_accumulator_bits", (PyCFunction)Net_set_accumulator_bits, METH_VARARGS,
     "set_accumulator_bits(layer, P, relax=1): change an A2Q layer's accumulator budget"},
    {"set_input_shape", (PyCFunction)Net_set_input_shape, METH_VARARGS,
     "set_input_shape((C, H, W)): check every layer against this sample shape"},
    {"layer_output_shape", (PyCFunction)Net_layer_output_shape, METH_VARARGS,
     "layer_output_shape(i) -> (C, H, W) under the current input shape"},
    {"write_tensor", (PyCFunction)Net_write_tensor, METH_VARARGS,
     "write_tensor(name, values): copy values into a tensor (waits for a running epoch)"},
    {"snapshot", (PyCFunction)Net_snapshot, METH_NOARGS,
     "copies of every tensor, mask, random state and the step, taken at one moment"},
    {"rng_state", (PyCFunction)Net_rng_state, METH_NOARGS, "(init stream, shuffle stream)"},
    {"backward_dx", (PyCFunction)Net_backward_dx, METH_O,
     "backward_dx(grad_output) -> gradient w.r.t. the last forward's input (n, in_size)"},
    {"backward_ce_dx", (PyCFunction)Net_backward_ce_dx, METH_O,
     "backward_ce_dx(y) -> (mean loss, n_correct, input gradient (n, in_size))"},
    {"tensor_steps", (PyCFunction)Net_tensor_steps, METH_NOARGS,
     "{parameter name: optimizer steps it took}"},
    {"set_tensor_step", (PyCFunction)Net_set_tensor_step, METH_VARARGS,
     "set_tensor_step(name, step): restore a parameter's step count"},
    {"set_rng_state", (PyCFunction)Net_set_rng_state, METH_VARARGS, "restore rng_state()"},
    {NULL}
};

static PyGetSetDef Net_getset[] = {
    {"training", (getter)Net_get_training, (setter)Net_set_training, "training mode", NULL},
    {"optimizer_step", (getter)Net_get_step, (setter)Net_set_step, "optimizer steps taken", NULL},
    {"in_size", (getter)Net_get_in_size, NULL, "features per input sample", NULL},
    {"in_shape", (getter)Net_get_in_shape, NULL, "current (C, H, W) of input samples", NULL},
    {"out_size", (getter)Net_get_out_size, NULL, "outputs per sample", NULL},
    {"buffer_bytes", (getter)Net_buffer_bytes, NULL,
     "heap bytes of batch buffers and the kept inference workspace", NULL},
    {NULL}
};

static PyTypeObject NetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qatfhe._core.Net",
    .tp_basicsize = sizeof(NetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Net(layers, in_size, seed): a C network (see qatfhe.nn.Sequential)",
    .tp_new = Net_new,
    .tp_init = (initproc)Net_init,
    .tp_dealloc = (destructor)Net_dealloc,
    .tp_methods = Net_methods,
    .tp_getset = Net_getset,
};

int qfpy_register_net(PyObject *module)
{
    if (PyType_Ready(&NetType) < 0) return -1;
    Py_INCREF(&NetType);
    if (PyModule_AddObject(module, "Net", (PyObject *)&NetType) < 0) {
        Py_DECREF(&NetType);
        return -1;
    }
    PyModule_AddIntConstant(module, "LAYER_LINEAR", QF_LAYER_LINEAR);
    PyModule_AddIntConstant(module, "LAYER_RELU", QF_LAYER_RELU);
    PyModule_AddIntConstant(module, "LAYER_ACT_QUANT", QF_LAYER_ACT_QUANT);
    PyModule_AddIntConstant(module, "LAYER_CONV2D", QF_LAYER_CONV2D);
    PyModule_AddIntConstant(module, "LAYER_AVGPOOL2D", QF_LAYER_AVGPOOL2D);
    PyModule_AddIntConstant(module, "LAYER_RESHAPE", QF_LAYER_RESHAPE);
    PyModule_AddIntConstant(module, "LAYER_TRANSPOSE", QF_LAYER_TRANSPOSE);
    PyModule_AddIntConstant(module, "LAYER_RESIDUAL_ADD", QF_LAYER_RESIDUAL_ADD);
    PyModule_AddIntConstant(module, "LAYER_BATCHNORM2D", QF_LAYER_BATCHNORM2D);
    PyModule_AddIntConstant(module, "LAYER_MAXPOOL2D", QF_LAYER_MAXPOOL2D);
    PyModule_AddIntConstant(module, "QUANT_NONE", QF_QUANT_NONE);
    PyModule_AddIntConstant(module, "QUANT_CONST", QF_QUANT_CONST);
    PyModule_AddIntConstant(module, "QUANT_ABSMAX", QF_QUANT_ABSMAX);
    PyModule_AddIntConstant(module, "QUANT_LEARNED", QF_QUANT_LEARNED);
    return 0;
}
