/* net_binding.h: the pieces of qatfhe._core.Net shared by its binding files:
 * net_binding.c (specs, lifecycle, the type), net_run_binding.c (forwards,
 * backward, optimizer, epochs) and net_state_binding.c (tensors, views,
 * masks, snapshots, shapes, scales, random streams, modes).
 *
 * Threads: a reader/writer lock guards the net.  Eval-mode forwards (infer,
 * forward in eval mode) and reads (tensors, snapshot, scales, shapes) are
 * readers: any number run at once, each inference with its own workspace
 * (net_infer.h).  Everything that changes the net (training forwards,
 * backward, step, epochs, optimizer, masks, shapes, modes, writes) is a
 * writer and waits for the others.  Blocking waits release the GIL, and the
 * lock is taken only after every argument is converted, so no Python code
 * runs while it is held.  During an epoch the tensor views handed out are
 * read-only, so writes through them are refused rather than torn. */
#ifndef QFPY_NET_BINDING_H
#define QFPY_NET_BINDING_H

#include <pthread.h>
#include "bindings.h"
#include "../net.h"
#include "../net_infer.h"

typedef struct {
    PyObject_HEAD
    qf_net *net;
    pthread_rwlock_t lock;  /* readers: inference and reads; writer: any change */
    int lock_ready;
    qf_net_infer *spare;    /* an inference workspace kept for the next call (GIL held) */
    PyObject *views;        /* list of weak references to the tensor views handed out */
    int epochs_running;     /* epochs in progress (their views are read-only)            */
    PyObject *frozen;       /* the views they made read-only, restored by the last one   */
} NetObject;

/* ------------------------------------------------------------ locking */

static inline void lock_read(NetObject *self)
{
    if (pthread_rwlock_tryrdlock(&self->lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_rwlock_rdlock(&self->lock);
    Py_END_ALLOW_THREADS
}

static inline void lock_write(NetObject *self)
{
    if (pthread_rwlock_trywrlock(&self->lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_rwlock_wrlock(&self->lock);
    Py_END_ALLOW_THREADS
}

static inline void unlock(NetObject *self)
{
    pthread_rwlock_unlock(&self->lock);
}

/* RuntimeError unless the net is built (0 then, else 1). */
static inline int ready(NetObject *self)
{
    if (!self->net) {
        PyErr_SetString(PyExc_RuntimeError, "network is not initialised");
        return 0;
    }
    return 1;
}

/* The exception for st with the net's last message (read it under the lock). */
static inline PyObject *raise_net(NetObject *self, qf_status st)
{
    return qfpy_raise(st, qf_net_error(self->net));
}

/* net_binding.c */
int qfpy_net_parse_shape(PyObject *obj, int64_t shape[3]);   /* int or 1..3-tuple */
PyObject *qfpy_net_shape_tuple(const int64_t s[3]);
int qfpy_net_same_shape(const qf_net *net, const int64_t shape[3]);

/* net_run_binding.c */
PyObject *Net_forward(NetObject *self, PyObject *arg);
PyObject *Net_infer(NetObject *self, PyObject *arg);
PyObject *Net_buffer_bytes(NetObject *self, void *closure);
PyObject *Net_backward_ce(NetObject *self, PyObject *arg);
PyObject *Net_backward(NetObject *self, PyObject *arg);
PyObject *Net_backward_dx(NetObject *self, PyObject *arg);
PyObject *Net_backward_ce_dx(NetObject *self, PyObject *arg);
PyObject *Net_tensor_steps(NetObject *self, PyObject *unused);
PyObject *Net_set_tensor_step(NetObject *self, PyObject *args);
PyObject *Net_zero_grad(NetObject *self, PyObject *unused);
PyObject *Net_step(NetObject *self, PyObject *unused);
PyObject *Net_set_optimizer(NetObject *self, PyObject *args, PyObject *kwds);
PyObject *Net_get_step(NetObject *self, void *closure);
int Net_set_step(NetObject *self, PyObject *value, void *closure);
PyObject *Net_set_lr(NetObject *self, PyObject *args);
PyObject *Net_train_epoch(NetObject *self, PyObject *args, PyObject *kwds);

/* net_state_binding.c */
int qfpy_net_freeze_views(NetObject *self);   /* an epoch starts: views read-only */
void qfpy_net_thaw_views(NetObject *self);    /* it ends: the last restores them   */
PyObject *Net_tensors(NetObject *self, PyObject *unused);
PyObject *Net_get_mask(NetObject *self, PyObject *args);
PyObject *Net_set_mask(NetObject *self, PyObject *args);
PyObject *Net_write_tensor(NetObject *self, PyObject *args);
PyObject *Net_snapshot(NetObject *self, PyObject *unused);
PyObject *Net_init_uniform(NetObject *self, PyObject *args);
PyObject *Net_act_scale(NetObject *self, PyObject *args);
PyObject *Net_weight_scale(NetObject *self, PyObject *args);
PyObject *Net_weight_codes(NetObject *self, PyObject *args);
PyObject *Net_a2q_budget(NetObject *self, PyObject *args);
PyObject *Net_set_accumulator_bits(NetObject *self, PyObject *args);
PyObject *Net_set_input_shape(NetObject *self, PyObject *args);
PyObject *Net_layer_output_shape(NetObject *self, PyObject *args);
PyObject *Net_get_in_shape(NetObject *self, void *closure);
PyObject *Net_rng_state(NetObject *self, PyObject *unused);
PyObject *Net_set_rng_state(NetObject *self, PyObject *args);
PyObject *Net_get_training(NetObject *self, void *closure);
int Net_set_training(NetObject *self, PyObject *value, void *closure);
PyObject *Net_get_in_size(NetObject *self, void *closure);
PyObject *Net_get_out_size(NetObject *self, void *closure);

#endif
