/* status.c: descriptions of the core's status codes. */
#include "status.h"

const char *qf_status_string(qf_status status)
{
    switch (status) {
    case QF_OK: return "ok";
    case QF_ERR_NOMEM: return "out of memory";
    case QF_ERR_ARG: return "invalid argument";
    case QF_ERR_SHAPE: return "shape mismatch";
    case QF_ERR_NONFINITE: return "NaN or infinity in input";
    case QF_ERR_LABEL: return "label out of range";
    case QF_ERR_STATE: return "call out of order";
    case QF_ERR_OVERFLOW: return "integer overflow";
    case QF_ERR_UNSUPPORTED: return "unsupported";
    case QF_ERR_DIVERGED: return "training diverged";
    }
    return "unknown status";
}
