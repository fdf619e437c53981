"""Profiler demo (tool `hot_path`): where a call's CPU time goes is known by
construction. Of each call's thread CPU time budget (`ms`, default 200), a share
(`python_share`, default 0.7) is spent in the pure-Python loop `spin` and the rest in
`numpy.dot` on a 256 x 256 matrix (BLAS). The split is measured with the thread's own CPU clock, so it holds on a loaded
machine too.

OpenBLAS is kept to the calling thread (OPENBLAS_NUM_THREADS=1, set before numpy is
first imported) so the numpy share is the calling thread's, not a pool's.
"""
import os
import sys
import time

if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

PYTHON_SHARE = 0.7
_MATRICES = None


def _matrices():
    global _MATRICES
    if _MATRICES is None:
        import numpy

        rng = numpy.random.default_rng(7)
        _MATRICES = (rng.random((256, 256)), rng.random((256, 256)))
    return _MATRICES


def spin(until):
    """Pure Python until the thread's CPU clock reaches `until`."""
    x = 0
    while time.thread_time() < until:
        for i in range(2000):
            x += i * i
    return x


def matmul(until):
    """numpy.dot until the thread's CPU clock reaches `until`."""
    import numpy

    a, b = _matrices()
    n = 0
    while time.thread_time() < until:
        numpy.dot(a, b)
        n += 1
    return n


def hot_path(params, _binary=None, _ctx=None):
    budget = max(1, int(params.get("ms", 200))) / 1000.0
    share = min(1.0, max(0.0, float(params.get("python_share", PYTHON_SHARE))))
    _matrices()
    start = time.thread_time()
    spin(start + share * budget)
    products = matmul(start + budget)
    return {"cpu_ms": round((time.thread_time() - start) * 1000, 3), "products": products}
