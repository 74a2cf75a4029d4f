/* net_run_binding.c: the compute methods of qatfhe._core.Net (net_binding.h):
 * forward / infer, backward, zero_grad, step, the optimizer and whole epochs.
 * Eval-mode forwards are readers of the net's lock, each with its own
 * inference workspace; the rest are writers. */
#include "net_binding.h"

/* Convert X ((n, F) or (n, C, H, W)) and read its per-sample (C, H, W); the net is
 * not touched (its shape is set under the lock). */
static PyArrayObject *input_array(PyObject *arg, int64_t shape[3])
{
    PyArrayObject *x = qfpy_array(arg, "X", NPY_FLOAT32, -1, 0);
    if (!x) return NULL;
    int nd = PyArray_NDIM(x);
    if (nd != 2 && nd != 4) {
        PyErr_Format(PyExc_ValueError, "X must be 2-dimensional (n, features) or 4-dimensional "
                     "(n, channels, height, width), got %d dimensions", nd);
        Py_DECREF(x);
        return NULL;
    }
    shape[0] = PyArray_DIM(x, 1);
    shape[1] = nd == 4 ? PyArray_DIM(x, 2) : 1;
    shape[2] = nd == 4 ? PyArray_DIM(x, 3) : 1;
    if (PyArray_DIM(x, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "X is empty; expected at least one sample");
        Py_DECREF(x);
        return NULL;
    }
    return x;
}


/* A new (n, out) or (n, C, H, W) float32 array for the net's output. */
static PyArrayObject *output_array(NetObject *self, npy_intp n)
{
    int64_t s[3];
    qf_net_output_shape(self->net, s);
    if (s[1] == 1 && s[2] == 1) {
        npy_intp dims[2] = {n, (npy_intp)s[0]};
        return (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    }
    npy_intp dims[4] = {n, (npy_intp)s[0], (npy_intp)s[1], (npy_intp)s[2]};
    return (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
}

/* Forward of X: in eval mode (or with always_eval) through an inference workspace
 * under the read lock (the write lock when the input shape must change first); in
 * training mode through the net's own buffers under the write lock. */
static PyObject *run_forward(NetObject *self, PyObject *arg, int always_eval)
{
    if (!ready(self)) return NULL;
    int64_t shape[3];
    PyArrayObject *x = input_array(arg, shape);
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0);
    lock_read(self);
    int eval = always_eval || !qf_net_training(self->net);
    if (!eval || !qfpy_net_same_shape(self->net, shape)) {
        unlock(self);
        lock_write(self);
        eval = always_eval || !qf_net_training(self->net);
        qf_status st = qf_net_set_input_shape(self->net, shape[0], shape[1], shape[2]);
        if (st != QF_OK) {
            raise_net(self, st);
            unlock(self);
            Py_DECREF(x);
            return NULL;
        }
    }
    PyArrayObject *out = output_array(self, n);
    qf_net_infer *ws = NULL;
    if (eval && out) {
        ws = self->spare ? self->spare : qf_net_infer_create();
        self->spare = NULL;
        if (!ws) PyErr_NoMemory();
    }
    if (!out || (eval && !ws)) {
        unlock(self);
        Py_DECREF(x);
        Py_XDECREF(out);
        return NULL;
    }
    qf_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eval ? qf_net_infer_forward(ws, self->net, PyArray_DATA(x), n, PyArray_DATA(out))
              : qf_net_forward(self->net, PyArray_DATA(x), n, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (st != QF_OK)
        qfpy_raise(st, eval ? qf_net_infer_error(ws) : qf_net_error(self->net));
    unlock(self);
    Py_DECREF(x);
    if (ws && !self->spare) self->spare = ws;   /* bounded: the core runs big batches in chunks */
    else qf_net_infer_free(ws);
    if (st != QF_OK) { Py_DECREF(out); return NULL; }
    return (PyObject *)out;
}

PyObject *Net_forward(NetObject *self, PyObject *arg)
{
    return run_forward(self, arg, 0);
}

PyObject *Net_infer(NetObject *self, PyObject *arg)
{
    return run_forward(self, arg, 1);
}

PyObject *Net_buffer_bytes(NetObject *self, void *closure)
{
    if (!ready(self)) return NULL;
    lock_read(self);
    long long bytes = (long long)qf_net_buffer_bytes(self->net);
    unlock(self);
    if (self->spare) bytes += (long long)qf_net_infer_bytes(self->spare);
    return PyLong_FromLongLong(bytes);
}

PyObject *Net_backward_ce(NetObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *y = qfpy_array(arg, "y", NPY_INT32, 1, 0);
    if (!y) return NULL;
    double loss = 0.0;
    int64_t correct = 0;
    qf_status st = QF_OK;
    /* the label count must match the last forward; the core checks the values */
    lock_write(self);
    Py_BEGIN_ALLOW_THREADS
    st = qf_net_backward_ce(self->net, PyArray_DATA(y), PyArray_DIM(y, 0), &loss, &correct);
    if (st == QF_OK)
        qf_net_trim_buffers(self->net);
    Py_END_ALLOW_THREADS
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    Py_DECREF(y);
    if (st != QF_OK) return NULL;
    return Py_BuildValue("dL", loss, (long long)correct);
}

PyObject *Net_backward(NetObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *d = qfpy_array(arg, "grad_output", NPY_FLOAT32, -1, 1);
    if (!d) return NULL;
    lock_write(self);
    qf_status st = QF_OK;
    long long out_size = (long long)qf_net_out_size(self->net);
    if (PyArray_NDIM(d) < 1 || PyArray_SIZE(d) != PyArray_DIM(d, 0) * out_size) {
        unlock(self);
        PyErr_Format(PyExc_ValueError, "grad_output must hold %lld values per sample", out_size);
        Py_DECREF(d);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    st = qf_net_backward(self->net, PyArray_DATA(d), PyArray_DIM(d, 0));
    if (st == QF_OK)
        qf_net_trim_buffers(self->net);
    Py_END_ALLOW_THREADS
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    Py_DECREF(d);
    if (st != QF_OK) return NULL;
    Py_RETURN_NONE;
}

PyObject *Net_zero_grad(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    lock_write(self);
    qf_net_zero_grad(self->net);
    unlock(self);
    Py_RETURN_NONE;
}

PyObject *Net_step(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    qf_status st;
    lock_write(self);
    Py_BEGIN_ALLOW_THREADS
    st = qf_net_step(self->net);
    Py_END_ALLOW_THREADS
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    if (st != QF_OK) return NULL;
    Py_RETURN_NONE;
}

PyObject *Net_set_optimizer(NetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "lr", "beta1", "beta2", "eps", "weight_decay", "momentum",
                             "dampening", "nesterov", NULL};
    const char *kind;
    double lr, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.0, mom = 0.0, damp = 0.0;
    int nesterov = 0;
    if (!ready(self)) return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sd|ddddddp", kwlist, &kind, &lr, &b1, &b2,
                                     &eps, &wd, &mom, &damp, &nesterov))
        return NULL;
    qf_optimizer o = {0};
    if (strcmp(kind, "adamw") == 0) o.kind = QF_OPT_ADAMW;
    else if (strcmp(kind, "sgd") == 0) o.kind = QF_OPT_SGD;
    o.lr = (float)lr; o.beta1 = (float)b1; o.beta2 = (float)b2; o.eps = (float)eps;
    o.weight_decay = (float)wd; o.momentum = (float)mom; o.dampening = (float)damp;
    o.nesterov = nesterov;
    lock_write(self);
    qf_status st = qf_net_set_optimizer(self->net, &o);
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    if (st != QF_OK) return NULL;
    Py_RETURN_NONE;
}

PyObject *Net_get_step(NetObject *self, void *closure)
{
    if (!ready(self)) return NULL;
    lock_read(self);
    long long step = (long long)qf_net_optimizer(self->net)->step;
    unlock(self);
    return PyLong_FromLongLong(step);
}

int Net_set_step(NetObject *self, PyObject *value, void *closure)
{
    if (!ready(self)) return -1;
    long long step = PyLong_AsLongLong(value);
    if (step == -1 && PyErr_Occurred()) return -1;
    if (step < 0) { PyErr_SetString(PyExc_ValueError, "step must be >= 0"); return -1; }
    lock_write(self);
    qf_net_set_optimizer_step(self->net, step);
    unlock(self);
    return 0;
}

PyObject *Net_set_lr(NetObject *self, PyObject *args)
{
    double lr;
    if (!ready(self) || !PyArg_ParseTuple(args, "d", &lr)) return NULL;
    lock_write(self);
    qf_status st = qf_net_set_learning_rate(self->net, (float)lr);
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    if (st != QF_OK) return NULL;
    Py_RETURN_NONE;
}

PyObject *Net_train_epoch(NetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"X", "y", "batch_size", "seed", NULL};
    PyObject *xo, *yo, *seed_obj = Py_None;
    long long batch;
    if (!ready(self)) return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOL|O", kwlist, &xo, &yo, &batch, &seed_obj))
        return NULL;
    qf_rng own;
    int own_seed = seed_obj != Py_None;
    if (own_seed) {
        unsigned long long seed = PyLong_AsUnsignedLongLongMask(seed_obj);
        if (PyErr_Occurred()) return NULL;
        qf_rng_seed(&own, seed, 2);
    }
    int64_t shape[3];
    PyArrayObject *x = input_array(xo, shape);
    if (!x) return NULL;
    PyArrayObject *y = qfpy_array(yo, "y", NPY_INT32, 1, 0);
    if (!y) { Py_DECREF(x); return NULL; }
    npy_intp n = PyArray_DIM(x, 0);
    if (PyArray_DIM(y, 0) != n) {
        PyErr_Format(PyExc_ValueError, "y has %zd labels but X has %zd samples",
                     (Py_ssize_t)PyArray_DIM(y, 0), (Py_ssize_t)n);
        Py_DECREF(x); Py_DECREF(y);
        return NULL;
    }
    if (qfpy_net_freeze_views(self) < 0) { Py_DECREF(x); Py_DECREF(y); return NULL; }
    double loss_sum = 0.0;
    int64_t correct = 0;
    lock_write(self);
    qf_rng *rng = own_seed ? &own : qf_net_shuffle_rng(self->net);
    qf_status st = qf_net_set_input_shape(self->net, shape[0], shape[1], shape[2]);
    if (st == QF_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = qf_net_train_epoch(self->net, PyArray_DATA(x), PyArray_DATA(y), n, batch, rng,
                                &loss_sum, &correct);
        qf_net_trim_buffers(self->net);   /* huge batches do not stay allocated */
        Py_END_ALLOW_THREADS
    }
    if (st != QF_OK) raise_net(self, st);
    unlock(self);
    qfpy_net_thaw_views(self);
    Py_DECREF(x); Py_DECREF(y);
    if (st != QF_OK) return NULL;
    return Py_BuildValue("dL", loss_sum, (long long)correct);
}

/* ------------------------------------------------------------ input gradients */

/* A new (n, in_size) float32 array for d loss / d X, allocated before the lock
 * (*in_size: the size it was made for, checked again under the lock). */
static PyArrayObject *input_grad_array(NetObject *self, npy_intp n, int64_t *in_size)
{
    lock_read(self);
    *in_size = qf_net_in_size(self->net);
    unlock(self);
    npy_intp dims[2] = {n, (npy_intp)*in_size};
    return (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
}

static int same_in_size(NetObject *self, int64_t in_size)
{
    if (qf_net_in_size(self->net) == in_size)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "the network's input shape changed during the call");
    return 0;
}

PyObject *Net_backward_dx(NetObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *d = qfpy_array(arg, "grad_output", NPY_FLOAT32, -1, 1);
    if (!d) return NULL;
    npy_intp n = PyArray_NDIM(d) < 1 ? 0 : PyArray_DIM(d, 0);
    int64_t in_size;
    PyArrayObject *dx = input_grad_array(self, n, &in_size);
    if (!dx) { Py_DECREF(d); return NULL; }
    lock_write(self);
    qf_status st = QF_OK;
    long long out_size = (long long)qf_net_out_size(self->net);
    int ok = same_in_size(self, in_size);
    if (ok && (PyArray_NDIM(d) < 1 || PyArray_SIZE(d) != n * out_size)) {
        PyErr_Format(PyExc_ValueError, "grad_output must hold %lld values per sample", out_size);
        ok = 0;
    }
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        st = qf_net_backward_dx(self->net, PyArray_DATA(d), n, PyArray_DATA(dx));
        if (st == QF_OK)
            qf_net_trim_buffers(self->net);
        Py_END_ALLOW_THREADS
        if (st != QF_OK) raise_net(self, st);
    }
    unlock(self);
    Py_DECREF(d);
    if (!ok || st != QF_OK) { Py_DECREF(dx); return NULL; }
    return (PyObject *)dx;
}

PyObject *Net_backward_ce_dx(NetObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    PyArrayObject *y = qfpy_array(arg, "y", NPY_INT32, 1, 0);
    if (!y) return NULL;
    int64_t in_size;
    PyArrayObject *dx = input_grad_array(self, PyArray_DIM(y, 0), &in_size);
    if (!dx) { Py_DECREF(y); return NULL; }
    double loss = 0.0;
    int64_t correct = 0;
    qf_status st = QF_OK;
    lock_write(self);
    int ok = same_in_size(self, in_size);
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        st = qf_net_backward_ce_dx(self->net, PyArray_DATA(y), PyArray_DIM(y, 0), &loss,
                                   &correct, PyArray_DATA(dx));
        if (st == QF_OK)
            qf_net_trim_buffers(self->net);
        Py_END_ALLOW_THREADS
        if (st != QF_OK) raise_net(self, st);
    }
    unlock(self);
    Py_DECREF(y);
    if (!ok || st != QF_OK) { Py_DECREF(dx); return NULL; }
    return Py_BuildValue("dLN", loss, (long long)correct, (PyObject *)dx);
}

/* {parameter name: optimizer steps it took} */
PyObject *Net_tensor_steps(NetObject *self, PyObject *unused)
{
    if (!ready(self)) return NULL;
    int nt = qf_net_n_tensors(self->net);
    long long *steps = PyMem_Calloc((size_t)nt + 1, sizeof *steps);
    if (!steps) return PyErr_NoMemory();
    lock_read(self);
    for (int i = 0; i < nt; i++)
        steps[i] = (long long)qf_net_tensor(self->net, i)->opt_step;
    unlock(self);
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < nt; i++) {
        const qf_tensor *t = qf_net_tensor(self->net, i);
        if (t->kind != QF_TENSOR_PARAM) continue;
        PyObject *v = PyLong_FromLongLong(steps[i]);
        if (!v || PyDict_SetItemString(d, t->name, v) < 0) { Py_XDECREF(v); Py_CLEAR(d); break; }
        Py_DECREF(v);
    }
    PyMem_Free(steps);
    return d;
}

PyObject *Net_set_tensor_step(NetObject *self, PyObject *args)
{
    const char *name;
    long long step;
    if (!ready(self) || !PyArg_ParseTuple(args, "sL", &name, &step)) return NULL;
    int index = qf_net_find_tensor(self->net, name);
    if (index < 0 || qf_net_tensor(self->net, index)->kind != QF_TENSOR_PARAM || step < 0) {
        PyErr_Format(PyExc_ValueError, "a step count is set on a parameter of the network and "
                     "must be >= 0, got '%s' and %lld", name, step);
        return NULL;
    }
    lock_write(self);
    qf_net_tensor(self->net, index)->opt_step = step;
    unlock(self);
    Py_RETURN_NONE;
}
