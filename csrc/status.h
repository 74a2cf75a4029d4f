/* status.h: status codes returned by every fallible function of the qatfhe C core.
 *
 * The core never exits or aborts: a function that can fail returns a qf_status,
 * and where a detail helps (which argument, which value) it writes a message
 * into a caller-supplied or object-owned buffer.  The Python binding maps each
 * code to one exception type (see csrc/python/module.c). */
#ifndef QF_STATUS_H
#define QF_STATUS_H

typedef enum {
    QF_OK = 0,
    QF_ERR_NOMEM = 1,        /* an allocation failed                           */
    QF_ERR_ARG = 2,          /* an argument's value is out of its valid range  */
    QF_ERR_SHAPE = 3,        /* sizes do not agree                             */
    QF_ERR_NONFINITE = 4,    /* NaN or infinity in an input                    */
    QF_ERR_LABEL = 5,        /* a class label outside [0, n_classes)           */
    QF_ERR_STATE = 6,        /* call out of order (backward before forward)    */
    QF_ERR_OVERFLOW = 7,     /* an integer value exceeds what it may hold      */
    QF_ERR_UNSUPPORTED = 8,  /* a valid request this build cannot do           */
    QF_ERR_DIVERGED = 9      /* training produced NaN or infinity (rolled back) */
} qf_status;

/* A short fixed description of a status code; never NULL. */
const char *qf_status_string(qf_status status);

#endif
