"""Tools whose time split is known by construction (issue "why is this call slow"):
the agent's serialization and scheduling split is checked against them.

  big_json        returns its `data` parameter (N MB of JSON in, N MB out)
  cpu_spin        a pure-Python loop for `ms` milliseconds (on CPU)
  io_wait         a blocking read of the FIFO `fifo` until its writer closes it (I/O)
  io_wait_offloaded  io_wait on a helper thread (as asyncio.to_thread runs a sync tool)
  gil_contention  a second thread and this one run Python in turn for `ms` (GIL waits)
  (sleep is the adapter's own: time.sleep)
"""
import gc
import sys
import threading
import time


def big_json(params, _binary, _ctx):
    return params.get("data")


def cpu_spin(params, _binary, _ctx):
    end = time.perf_counter() + int(params.get("ms", 200)) / 1000.0
    n = 0
    while time.perf_counter() < end:
        n += 1
    return {"iterations": n}


def io_wait(params, _binary, _ctx):
    path = str(params["fifo"])
    total = 0
    # open() blocks until the test opens the writing end; read() until it closes it.
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(65536)
            if not chunk:
                break
            total += len(chunk)
    return {"bytes": total}


_OFFLOAD = None


def io_wait_offloaded(params, binary, ctx):
    """io_wait run on another thread while this one waits for it, as a sync tool
    under `asyncio.to_thread` or an executor: the blocking read is the call's."""
    global _OFFLOAD
    if _OFFLOAD is None:
        import concurrent.futures

        _OFFLOAD = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="offload")
    return _OFFLOAD.submit(io_wait, params, binary, ctx).result()


def _spin_until(end):
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def gil_contention(params, _binary, _ctx):
    end = time.perf_counter() + int(params.get("ms", 300)) / 1000.0
    other = threading.Thread(target=_spin_until, args=(end,), name="gil-hog")
    other.start()
    n = _spin_until(end)
    other.join()
    return {"iterations": n}


TOOLS = (
    ("big_json", big_json, "Returns its `data` parameter (JSON of any size)", [("data", "any", True)]),
    ("cpu_spin", cpu_spin, "Pure-Python loop for `ms` milliseconds", [("ms", "integer", False)]),
    ("io_wait", io_wait, "Reads the FIFO `fifo` until EOF", [("fifo", "string", True)]),
    (
        "io_wait_offloaded",
        io_wait_offloaded,
        "io_wait on a helper thread, this one waiting for it",
        [("fifo", "string", True)],
    ),
    (
        "gil_contention",
        gil_contention,
        "Runs Python in this and a second thread for `ms` milliseconds",
        [("ms", "integer", False)],
    ),
)


class SerializationClock:
    """The worker's own ground truth for the split (`SNAKEPIT_DEMO_SPLIT_TRUTH=path`):
    the time spent in the same protobuf and JSON calls the agent probes, measured with
    perf_counter_ns, one JSON line per call. The agent never reads it; tests compare."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.local = threading.local()
        self.pending = {}

    @staticmethod
    def _clocked(fn, arg, *args, **kwargs):
        """(fn's result, ns it took, ns of those off the CPU), with what would land in
        this clock but not in the
        call held off meanwhile:
        - the cyclic GC: a pass that the call's allocations trigger runs inside the C
          call (3.11) or right after it returns, before the clock is read (3.12+, at the
          next eval-breaker check). Held off, it runs after both clocks.
        - the GIL hand-over: a call longer than the switch interval (5 ms) returns to
          an eval loop asked to drop the GIL, and this thread waits for another to give
          it back before it reads the clock. A long interval keeps the GIL here until
          the clock is read. A thread that began waiting under the old interval still
          asks after it: sleep(0) hands the GIL over once before the clock starts, so
          that each waiter has either run or waits again under the long interval (one
          that timed out meanwhile sees the switch and asks nothing)."""
        was_on = gc.isenabled()
        interval = sys.getswitchinterval()
        gc.disable()
        sys.setswitchinterval(10.0)
        try:
            time.sleep(0)
            c = time.thread_time_ns()
            t = time.perf_counter_ns()
            out = fn(arg, *args, **kwargs)
            wall = time.perf_counter_ns() - t
            # The part of the clock this thread was not running (preempted, or
            # blocked): it may lie outside the probed call, where only this clock
            # sees it.
            off_cpu = max(0, wall - (time.thread_time_ns() - c))
            return out, wall, off_cpu
        finally:
            sys.setswitchinterval(interval)
            if was_on:
                gc.enable()

    def _entry(self, cid):
        return self.pending.setdefault(cid, _new_entry())

    def timed_deserializer(self, deserialize):
        def run(raw):
            msg, d, off = self._clocked(deserialize, raw)
            cid = msg.metadata.get("correlation_id", "") if hasattr(msg, "metadata") else ""
            with self.lock:
                e = self._entry(cid)
                e["decode_ns"] += d
                e["decode_off_cpu_ns"] += off
                e["decode_protobuf_ns"] += d
            return msg

        return run

    def timed_serializer(self, serialize):
        def run(msg):
            raw, d, off = self._clocked(serialize, msg)
            cid = msg.metadata.get("correlation_id", "") if hasattr(msg, "metadata") else ""
            with self.lock:
                e = self.pending.pop(cid, None) or _new_entry()
                e["encode_ns"] += d
                e["encode_off_cpu_ns"] += off
                e["encode_protobuf_ns"] += d
                e["correlation_id"] = cid
                e["bytes_out"] = len(raw)
                with open(self.path, "a") as f:
                    f.write("%s\n" % _json_line(e))
            return raw

        return run

    def timed_json(self, fn, direction):
        """`fn` (json_loads / json_dumps) timed into this thread's running total."""

        def run(value, *args, **kwargs):
            d, off = 0, 0
            try:
                out, d, off = self._clocked(fn, value, *args, **kwargs)
                return out
            finally:
                wall, off_cpu = getattr(self.local, direction, (0, 0))
                setattr(self.local, direction, (wall + d, off_cpu + off))

        return run

    def take(self, direction):
        """This thread's JSON time since the last take: (ns, ns of those off the CPU)."""
        v = getattr(self.local, direction, (0, 0))
        setattr(self.local, direction, (0, 0))
        return v

    def add(self, cid, direction, taken):
        """Adds what `take` returned to call `cid`'s totals."""
        wall, off_cpu = taken
        with self.lock:
            e = self._entry(cid)
            e[direction + "_ns"] += wall
            e[direction + "_off_cpu_ns"] += off_cpu


def _new_entry():
    # (*_protobuf_ns: the protobuf call's share of *_ns; the rest is the JSON's.)
    return {
        "decode_ns": 0,
        "encode_ns": 0,
        "decode_off_cpu_ns": 0,
        "encode_off_cpu_ns": 0,
        "decode_protobuf_ns": 0,
        "encode_protobuf_ns": 0,
    }


def _json_line(d):
    import json

    return json.dumps(d, separators=(",", ":"))


def timing_interceptor(clock):
    """A server interceptor that times ExecuteTool's request decoding and response
    encoding (it wraps the method handler's (de)serializers)."""
    import grpc

    class Interceptor(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            handler = continuation(details)
            if handler is None or not details.method.endswith("/ExecuteTool"):
                return handler
            return handler._replace(
                request_deserializer=clock.timed_deserializer(handler.request_deserializer),
                response_serializer=clock.timed_serializer(handler.response_serializer),
            )

    return Interceptor()
