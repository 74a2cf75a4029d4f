/* check.h: a minimal test harness for the C core's test drivers.
 * CHECK(cond, fmt, ...) records a failure with its location; CHECK_CLOSE
 * compares with a relative+absolute tolerance.  CHECK_REPORT() prints
 * "N passed, N failed" and returns the process exit code. */
#ifndef QF_CHECK_H
#define QF_CHECK_H

#include <math.h>
#include <stdio.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            check_passed++;                                                \
        } else {                                                           \
            check_failed++;                                                \
            fprintf(stderr, "%s:%d: check failed: ", __FILE__, __LINE__);  \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)

#define CHECK_CLOSE(got, want, rtol, atol)                                 \
    CHECK(fabs((double)(got) - (double)(want)) <=                          \
              (atol) + (rtol) * fabs((double)(want)),                      \
          "%s = %.9g, expected %.9g", #got, (double)(got), (double)(want))

#define CHECK_REPORT()                                                     \
    (printf("%d passed, %d failed\n", check_passed, check_failed),         \
     check_failed ? 1 : 0)

#endif
