"""Builds the one extension module qatfhe._core from csrc/.

Default flags are portable (-O3). QATFHE_NATIVE=1 adds -march=native for the
machine that builds. -ffp-contract=off keeps float32 arithmetic un-fused so
the training forward and the integer circuit round identically everywhere."""
import glob
import os

import numpy
from setuptools import Extension, setup

flags = ["-O3", "-std=c11", "-D_GNU_SOURCE", "-ffp-contract=off", "-fno-math-errno",
         "-fno-trapping-math"]
if os.environ.get("QATFHE_NATIVE") == "1":
    flags.append("-march=native")

sources = sorted(glob.glob("csrc/*.c")) + sorted(glob.glob("csrc/python/*.c"))

setup(
    ext_modules=[
        Extension(
            "qatfhe._core",
            sources=sources,
            include_dirs=["csrc", numpy.get_include()],
            extra_compile_args=flags,
            libraries=["m", "pthread"],
        )
    ]
)
