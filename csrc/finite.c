/* finite.c: the finiteness scan of finite.h, in chunks scanned without a
 * branch (a vector loop); only the chunk that holds a non-finite value is
 * walked again for its index. */
#include "dispatch.h"
#include <float.h>
#include <math.h>
#include "finite.h"

#define CHUNK 1024

QF_MULTIVERSION
int64_t qf_first_non_finite(const float *x, int64_t n)
{
    for (int64_t j0 = 0; j0 < n; j0 += CHUNK) {
        int64_t m = n - j0 < CHUNK ? n - j0 : CHUNK;
        int bad = 0;
        for (int64_t j = 0; j < m; j++)
            bad |= !(fabsf(x[j0 + j]) <= FLT_MAX);
        if (bad)
            for (int64_t j = 0; j < m; j++)
                if (!isfinite(x[j0 + j]))
                    return j0 + j;
    }
    return -1;
}
