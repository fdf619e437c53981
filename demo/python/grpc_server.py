#!/usr/bin/env python3
"""Snakepit-shaped gRPC worker for the demo deployment (contract: demo/README.md).

Started by the BEAM through an Erlang port:
  grpc_server.py --adapter demo_adapter.DemoAdapter --port 0 \
      --elixir-address 127.0.0.1:<beam_port> --snakepit-run-id <id> \
      --snakepit-instance-name <name> [--snakepit-instance-token <tok>] [--max-workers N]
It binds [::]:<port>, writes the bound port to $SNAKEPIT_READY_FILE, serves
snakepit.bridge.BridgeService, calls the BEAM back (Ping, InitializeSession,
RegisterTools, Heartbeat) and exits on stdin EOF or SIGTERM.
"""
import argparse
import functools
import importlib
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.environ.get("SNAKEPIT_DEMO_GENERATED", "generated")))
sys.path.insert(0, HERE)

import grpc  # noqa: E402
import demo_split_tools  # noqa: E402
from google.protobuf import any_pb2, timestamp_pb2  # noqa: E402

try:
    import snakepit_bridge_pb2 as pb  # noqa: E402
    import snakepit_bridge_pb2_grpc as pb_grpc  # noqa: E402
except ImportError as exc:  # pragma: no cover - setup problem
    sys.stderr.write(
        "grpc_server: generated stubs missing (%s); run `python demo/python/gen_proto.py`\n" % exc
    )
    sys.exit(2)

try:
    if os.environ.get("SNAKEPIT_DEMO_JSON") == "stdlib":
        raise ImportError("stdlib json requested")
    import orjson

    STDLIB_JSON = False

    def json_loads(data):
        return orjson.loads(data)

    def json_dumps(value):
        return orjson.dumps(value, default=_json_default)

except ImportError:  # pragma: no cover - orjson is optional, as in Snakepit
    STDLIB_JSON = True

    def json_decode(text):
        """The C scanner's parse of a str: what json.loads runs after turning the bytes
        into a str (the agent probes this call, `scanner_call`, not that conversion)."""
        return _STDLIB_DECODER.decode(text)

    def json_loads(data):
        # json.loads(bytes), with its two steps apart.
        if isinstance(data, (bytes, bytearray)):
            data = data.decode(json.detect_encoding(data), "surrogatepass")
        return json_decode(data)

    def json_encode(value):
        """The C encoder's chunks: what json.dumps runs before joining them (the
        agent probes this call, `encoder_call`, not the join)."""
        return _STDLIB_ENCODER.iterencode(value, _one_shot=True)

    def json_dumps(value):
        # json.dumps(value, default=..., separators=(",", ":")), with its two steps apart.
        return "".join(json_encode(value)).encode()


def _timed_json():
    """With the split clock on, the JSON calls time themselves (only them: the same
    calls the agent probes, not the copies around them: for the stdlib json, the C
    scanner without the bytes-to-str conversion before it (2-10 % of a json.loads in
    the demo worker, mostly page faults on the new str), and the C encoder without the
    join of its chunks (about 15 % of a 20 MB document's dumps))."""
    global json_loads, json_dumps, json_decode, json_encode
    if SPLIT_CLOCK is not None:
        if STDLIB_JSON:
            json_decode = SPLIT_CLOCK.timed_json(json_decode, "decode")
            json_encode = SPLIT_CLOCK.timed_json(json_encode, "encode")
        else:
            # orjson's own functions, not the Python wrappers above: their frames'
            # set-up and tear-down (0.15 ms at times here) are not the call's.
            json_loads = SPLIT_CLOCK.timed_json(orjson.loads, "decode")
            json_dumps = SPLIT_CLOCK.timed_json(
                functools.partial(orjson.dumps, default=_json_default), "encode"
            )


def _json_default(value):
    # numpy scalars and arrays, without importing numpy here.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    raise TypeError("not JSON serializable: %s" % type(value).__name__)


# The stdlib path's encoder (json.dumps's own, built once) and decoder (json.loads's).
_STDLIB_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"))
_STDLIB_DECODER = json.JSONDecoder()

# Both directions carry up to 100 MB per message in real deployments.
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
TYPE_URL_PREFIX = "type.googleapis.com/snakepit."
CORRELATION_HEADER = "x-snakepit-correlation-id"

log = logging.getLogger("snakepit.worker")

# The worker's own measurement of its (de)serialization, for the agent's tests only.
SPLIT_CLOCK = (
    demo_split_tools.SerializationClock(os.environ["SNAKEPIT_DEMO_SPLIT_TRUTH"])
    if os.environ.get("SNAKEPIT_DEMO_SPLIT_TRUTH")
    else None
)
_timed_json()


def now_timestamp():
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def encode_result(value):
    """A Python value -> Any(type_url snakepit.<kind>, value = JSON bytes)."""
    if isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, (int, float)):
        kind = "float"
    elif isinstance(value, str):
        kind = "string"
    elif isinstance(value, (list, tuple)):
        kind = "list"
    else:
        kind = "map"
    return any_pb2.Any(type_url=TYPE_URL_PREFIX + kind, value=json_dumps(value))


def decode_params(parameters):
    """map<string, Any> whose Any.value holds raw JSON -> dict of Python values."""
    out = {}
    for key, anyv in parameters.items():
        raw = anyv.value
        if not raw:
            out[key] = None
            continue
        try:
            out[key] = json_loads(raw)
        except ValueError:
            # Not JSON: hand the text over as a plain string.
            out[key] = raw.decode("utf-8", "replace")
    return out


def correlation_id_of(request, context):
    for key, value in context.invocation_metadata() or ():
        if key == CORRELATION_HEADER:
            return value
    return request.metadata.get("correlation_id", "")


def error_payload(exc, tool_name, session_id, correlation_id, worker_id, type_name=None):
    tb = exc.__traceback__
    return json_dumps(
        {
            "type": type_name or type(exc).__name__,
            "message": str(exc),
            "stacktrace": [line.rstrip("\n") for line in traceback.format_tb(tb)],
            "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
            "context": {
                "tool_name": tool_name,
                "session_id": session_id,
                "correlation_id": correlation_id,
                "worker_id": worker_id,
            },
        }
    ).decode("utf-8")


def is_unknown_tool(exc):
    return type(exc).__name__ in ("UnknownToolError", "UnknownTool")


def worker_id_from_env():
    explicit = os.environ.get("SNAKEPIT_WORKER_ID")
    if explicit:
        return explicit
    ready = os.environ.get("SNAKEPIT_READY_FILE", "")
    m = re.match(r"^snakepit_ready_(.+)_(\d+)$", os.path.basename(ready))
    if m:
        return m.group(1)
    return "worker_%d" % os.getpid()


def heartbeat_config():
    raw = os.environ.get("SNAKEPIT_HEARTBEAT_CONFIG", "")
    interval_ms, enabled = 2000, True
    if raw:
        try:
            cfg = json.loads(raw)
            if isinstance(cfg, dict):
                interval_ms = int(cfg.get("interval_ms", interval_ms))
                enabled = bool(cfg.get("enabled", True))
        except (ValueError, TypeError):
            log.warning("ignoring bad SNAKEPIT_HEARTBEAT_CONFIG %r", raw)
    return max(interval_ms, 50), enabled


class BeamCallbacks:
    """Worker -> BEAM calls. Every failure is logged and swallowed."""

    def __init__(self, address, worker_id, adapter, interval_ms, heartbeats_enabled, per_call=False):
        self.address = address
        # Real Snakepit workers call InitializeSession synchronously on every tool call.
        self.per_call = per_call
        self.worker_id = worker_id
        self.adapter = adapter
        self.interval_s = interval_ms / 1000.0
        self.heartbeats_enabled = heartbeats_enabled
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen = set()  # sessions queued for InitializeSession
        self.live = []  # sessions that get heartbeats, in order of arrival
        self.pending = queue.Queue()
        self.channel = None
        self.stub = None
        if address:
            self.channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
            self.stub = pb_grpc.BridgeServiceStub(self.channel)

    def start(self):
        if self.stub is None:
            log.info("no --elixir-address: callbacks disabled")
            return
        threading.Thread(target=self._ping_at_startup, name="cb-ping", daemon=True).start()
        threading.Thread(target=self._session_loop, name="cb-session", daemon=True).start()
        if self.heartbeats_enabled:
            threading.Thread(target=self._heartbeat_loop, name="cb-heartbeat", daemon=True).start()

    def _metadata(self):
        return ((CORRELATION_HEADER, "w-" + uuid.uuid4().hex[:16]),)

    def _ping_at_startup(self):
        delay = 0.2
        for attempt in range(1, 7):
            if self.stop.is_set():
                return
            try:
                resp = self.stub.Ping(
                    pb.PingRequest(message="hello from %s" % self.worker_id),
                    timeout=2.0,
                    metadata=self._metadata(),
                )
                log.info("ping to BEAM %s ok: %r", self.address, resp.message)
                return
            except grpc.RpcError as exc:
                log.warning("ping to BEAM %s failed (try %d): %s", self.address, attempt, exc.code())
            self.stop.wait(delay)
            delay = min(delay * 2, 3.0)

    def note_session(self, session_id):
        """Called on every tool call; the first call of a new session queues callbacks.

        With `per_call`, every call also waits for its own InitializeSession first.
        """
        if not session_id or self.stub is None:
            return
        if self.per_call:
            self._initialize_session(session_id)
        with self.lock:
            if session_id in self.seen:
                return
            self.seen.add(session_id)
        self.pending.put(session_id)

    def forget_session(self, session_id):
        with self.lock:
            self.seen.discard(session_id)
            if session_id in self.live:
                self.live.remove(session_id)

    def _session_loop(self):
        while not self.stop.is_set():
            try:
                session_id = self.pending.get(timeout=0.5)
            except queue.Empty:
                continue
            self._initialize(session_id)
            with self.lock:
                if session_id in self.seen and session_id not in self.live:
                    self.live.append(session_id)

    def _initialize_session(self, session_id):
        try:
            self.stub.InitializeSession(
                pb.InitializeSessionRequest(
                    session_id=session_id,
                    metadata={"worker_id": self.worker_id, "pid": str(os.getpid())},
                    config=pb.SessionConfig(ttl_seconds=3600),
                ),
                timeout=5.0,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            log.warning("InitializeSession(%s) to BEAM failed: %s", session_id, exc.code())

    def _initialize(self, session_id):
        self._initialize_session(session_id)
        try:
            tools = []
            for tool in self.adapter.get_tools():
                tools.append(
                    pb.ToolRegistration(
                        name=tool.name,
                        description=tool.description,
                        parameters=[
                            pb.ParameterSpec(name=n, type=t, required=r) for (n, t, r) in tool.params
                        ],
                        supports_streaming=tool.streaming,
                    )
                )
            self.stub.RegisterTools(
                pb.RegisterToolsRequest(session_id=session_id, tools=tools, worker_id=self.worker_id),
                timeout=5.0,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            log.warning("RegisterTools(%s) to BEAM failed: %s", session_id, exc.code())
        except Exception:  # adapter without get_tools(): never fatal
            log.exception("RegisterTools(%s) could not be built", session_id)

    def _heartbeat_loop(self):
        failing = False
        while not self.stop.wait(self.interval_s):
            with self.lock:
                sessions = list(self.live)
            for session_id in sessions:
                try:
                    self.stub.Heartbeat(
                        pb.HeartbeatRequest(session_id=session_id, client_time=now_timestamp()),
                        timeout=max(min(self.interval_s, 2.0), 0.5),
                        metadata=self._metadata(),
                    )
                    if failing:
                        log.info("heartbeats to BEAM recovered")
                        failing = False
                except grpc.RpcError as exc:
                    # Log the first failure of a streak only: the BEAM may be gone for good.
                    if not failing:
                        log.warning("heartbeat(%s) to BEAM failed: %s", session_id, exc.code())
                        failing = True

    def close(self):
        self.stop.set()
        if self.channel is not None:
            self.channel.close()


class TelemetryHub:
    """Fans python.call.* events out to StreamTelemetry subscribers (if any)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.subscribers = []

    def subscribe(self):
        sub = {"queue": queue.Queue(maxsize=10000), "enabled": True}
        with self.lock:
            self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub):
        with self.lock:
            if sub in self.subscribers:
                self.subscribers.remove(sub)

    def emit(self, parts, measurements, metadata, correlation_id):
        with self.lock:
            subs = [s for s in self.subscribers if s["enabled"]]
        if not subs:
            return
        event = pb.TelemetryEvent(
            event_parts=parts,
            metadata=metadata,
            timestamp_ns=time.time_ns(),
            correlation_id=correlation_id or "",
        )
        for key, value in measurements.items():
            if isinstance(value, int):
                event.measurements[key].int_value = value
            elif isinstance(value, float):
                event.measurements[key].float_value = value
            else:
                event.measurements[key].string_value = str(value)
        for sub in subs:
            try:
                sub["queue"].put_nowait(event)
            except queue.Full:
                pass


class BridgeServicer(pb_grpc.BridgeServiceServicer):
    def __init__(self, adapter, adapter_name, worker_id, callbacks, telemetry):
        self.adapter = adapter
        self.adapter_name = adapter_name
        self.worker_id = worker_id
        self.callbacks = callbacks
        self.telemetry = telemetry
        self.sessions_lock = threading.Lock()
        self.sessions = {}  # session_id -> (created Timestamp, metadata)

    # ---- health ----

    def Ping(self, request, context):
        return pb.PingResponse(message="pong: %s" % request.message, server_time=now_timestamp())

    def Heartbeat(self, request, context):
        return pb.HeartbeatResponse(server_time=now_timestamp(), session_valid=True)

    # ---- sessions ----

    def InitializeSession(self, request, context):
        with self.sessions_lock:
            self.sessions[request.session_id] = (now_timestamp(), dict(request.metadata))
        return pb.InitializeSessionResponse(success=True, metadata={"worker_id": self.worker_id})

    def CleanupSession(self, request, context):
        with self.sessions_lock:
            existed = self.sessions.pop(request.session_id, None) is not None
        self.callbacks.forget_session(request.session_id)
        return pb.CleanupSessionResponse(success=True, resources_cleaned=1 if existed else 0)

    def GetSession(self, request, context):
        with self.sessions_lock:
            entry = self.sessions.get(request.session_id)
        if entry is None:
            return pb.GetSessionResponse(session_id=request.session_id, found=False)
        created, metadata = entry
        return pb.GetSessionResponse(
            session_id=request.session_id,
            metadata=metadata,
            created_at=created,
            tool_count=len(self.adapter.get_tools()) if hasattr(self.adapter, "get_tools") else 0,
            found=True,
        )

    # ---- tools ----

    def _prologue(self, request, context):
        cid = correlation_id_of(request, context)
        if cid:
            context.send_initial_metadata(((CORRELATION_HEADER, cid),))
        self.callbacks.note_session(request.session_id)
        self.telemetry.emit(
            ["python", "call", "start"],
            {"system_time": time.time_ns()},
            {"tool": request.tool_name, "session_id": request.session_id, "worker_id": self.worker_id},
            cid,
        )
        return cid, {
            "session_id": request.session_id,
            "correlation_id": cid,
            "tool_name": request.tool_name,
            "worker_id": self.worker_id,
            # Tools may publish their own telemetry (ML steps, memory) on StreamTelemetry.
            "emit": lambda parts, measurements, metadata: self.telemetry.emit(
                ["python"] + list(parts), measurements, metadata, cid
            ),
        }

    def _epilogue(self, request, cid, started, ok):
        self.telemetry.emit(
            ["python", "call", "stop" if ok else "exception"],
            {"duration_ns": time.monotonic_ns() - started},
            {"tool": request.tool_name, "session_id": request.session_id, "worker_id": self.worker_id},
            cid,
        )

    def ExecuteTool(self, request, context):
        started = time.monotonic_ns()
        cid, ctx = self._prologue(request, context)
        resp = pb.ExecuteToolResponse()
        if cid:
            resp.metadata["correlation_id"] = cid
        resp.metadata["worker_id"] = self.worker_id
        ok = False
        try:
            if SPLIT_CLOCK is not None:
                SPLIT_CLOCK.take("decode")
            params = decode_params(request.parameters)
            if SPLIT_CLOCK is not None:
                SPLIT_CLOCK.add(cid, "decode", SPLIT_CLOCK.take("decode"))
            value = self.adapter.execute_tool(
                request.tool_name, params, dict(request.binary_parameters), ctx
            )
            if hasattr(value, "__next__"):
                # A streaming tool called through the unary RPC: gather its chunks.
                value = b"".join(_chunk_bytes(c) for c in value)
            if isinstance(value, (bytes, bytearray, memoryview)):
                resp.binary_result = bytes(value)
                resp.result.CopyFrom(encode_result({"binary_bytes": len(resp.binary_result)}))
            else:
                if SPLIT_CLOCK is not None:
                    SPLIT_CLOCK.take("encode")
                encoded = encode_result(value)
                if SPLIT_CLOCK is not None:
                    SPLIT_CLOCK.add(cid, "encode", SPLIT_CLOCK.take("encode"))
                resp.result.CopyFrom(encoded)
            resp.success = True
            ok = True
        except Exception as exc:
            unknown = is_unknown_tool(exc)
            resp.success = False
            resp.error_message = error_payload(
                exc,
                request.tool_name,
                request.session_id,
                cid,
                self.worker_id,
                "UnknownTool" if unknown else None,
            )
            log.debug("tool %s failed: %s: %s", request.tool_name, type(exc).__name__, exc)
        resp.execution_time_ms = (time.monotonic_ns() - started) // 1_000_000
        self._epilogue(request, cid, started, ok)
        return resp

    def ExecuteStreamingTool(self, request, context):
        started = time.monotonic_ns()
        cid, ctx = self._prologue(request, context)
        name = request.tool_name
        try:
            params = decode_params(request.parameters)
            value = self.adapter.execute_tool(name, params, dict(request.binary_parameters), ctx)
            chunks = value if hasattr(value, "__next__") else iter([value])
            n = 0
            held = None
            # Hold one chunk back so the last one can carry is_final.
            for item in chunks:
                data = _chunk_bytes(item)
                if held is not None:
                    yield pb.ToolChunk(chunk_id="%s-%d" % (name, n), data=held)
                held = data
                n += 1
            final_meta = {"chunks": str(max(n, 1)), "worker_id": self.worker_id}
            if cid:
                final_meta["correlation_id"] = cid
            yield pb.ToolChunk(
                chunk_id="%s-%d" % (name, max(n, 1)),
                data=held if held is not None else b"",
                is_final=True,
                metadata=final_meta,
            )
            self._epilogue(request, cid, started, True)
        except Exception as exc:
            unknown = is_unknown_tool(exc)
            details = error_payload(
                exc, name, request.session_id, cid, self.worker_id, "UnknownTool" if unknown else None
            )
            self._epilogue(request, cid, started, False)
            log.debug("streaming tool %s failed: %s: %s", name, type(exc).__name__, exc)
            context.abort(grpc.StatusCode.NOT_FOUND if unknown else grpc.StatusCode.INTERNAL, details)

    # ---- telemetry ----

    def StreamTelemetry(self, request_iterator, context):
        sub = self.telemetry.subscribe()
        done = threading.Event()

        def read_controls():
            try:
                for control in request_iterator:
                    which = control.WhichOneof("control")
                    if which == "toggle":
                        sub["enabled"] = control.toggle.enabled
            except grpc.RpcError:
                pass
            except Exception:
                log.exception("telemetry control stream failed")
            done.set()

        threading.Thread(target=read_controls, name="telemetry-in", daemon=True).start()
        try:
            while context.is_active() and not done.is_set():
                try:
                    yield sub["queue"].get(timeout=0.5)
                except queue.Empty:
                    continue
        finally:
            self.telemetry.unsubscribe(sub)


def _chunk_bytes(item):
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    return json_dumps(item)


def load_adapter(spec):
    module_name, _, class_name = spec.rpartition(".")
    if not module_name:
        raise ValueError("--adapter must be module.Class, got %r" % spec)
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Snakepit demo gRPC worker")
    p.add_argument("--adapter", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--elixir-address", default="")
    p.add_argument("--snakepit-run-id", "--run-id", dest="run_id", default="")
    p.add_argument("--snakepit-instance-name", dest="instance_name", default="")
    p.add_argument("--snakepit-instance-token", dest="instance_token", default="")
    p.add_argument("--max-workers", type=int, default=8)
    p.add_argument(
        "--init-session-per-call",
        action="store_true",
        help="call InitializeSession on the BEAM synchronously on every tool call, as Snakepit does",
    )
    # Unknown flags are tolerated, as newer BEAM sides may add some.
    args, unknown = p.parse_known_args(argv)
    return args, unknown


def write_ready_file(path, port):
    # Write under another name, then rename: the BEAM never sees half a file.
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    args, unknown = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader (e.g. started by a test harness with setsid)

    worker_id = worker_id_from_env()
    level = os.environ.get("SNAKEPIT_LOG_LEVEL", "info").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s [%(levelname)s] worker " + worker_id + " pid " + str(os.getpid()) + ": %(message)s",
    )
    if unknown:
        log.info("ignoring unknown flags %s", unknown)

    adapter = load_adapter(args.adapter)
    interval_ms, hb_enabled = heartbeat_config()
    callbacks = BeamCallbacks(
        args.elixir_address, worker_id, adapter, interval_ms, hb_enabled, args.init_session_per_call
    )
    telemetry = TelemetryHub()

    interceptors = []
    if SPLIT_CLOCK is not None:
        interceptors.append(demo_split_tools.timing_interceptor(SPLIT_CLOCK))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(args.max_workers, 2), thread_name_prefix="rpc"),
        options=GRPC_OPTIONS,
        interceptors=interceptors,
    )
    pb_grpc.add_BridgeServiceServicer_to_server(
        BridgeServicer(adapter, args.adapter, worker_id, callbacks, telemetry), server
    )
    port = 0
    for address in ("[::]:%d" % args.port, "0.0.0.0:%d" % args.port):
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port:
            break
    if not port:
        log.error("could not bind port %d", args.port)
        return 1
    server.start()

    stop = threading.Event()
    reason = []

    def on_signal(signum, _frame):
        reason.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin():
        # The Erlang port closing our stdin means the BEAM let go of us.
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        reason.append("stdin EOF")
        stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    ready = os.environ.get("SNAKEPIT_READY_FILE")
    if ready:
        try:
            write_ready_file(ready, port)
        except OSError as exc:
            log.error("cannot write ready file %s: %s", ready, exc)
            return 1
    print("GRPC_READY:%d" % port, flush=True)
    log.info(
        "serving on port %d (adapter %s, run id %s, instance %s, BEAM %s)",
        port, args.adapter, args.run_id, args.instance_name, args.elixir_address or "-",
    )
    callbacks.start()

    # Wake up now and then so signal handlers run promptly.
    while not stop.wait(0.5):
        pass
    log.info("shutting down: %s", reason[0] if reason else "?")
    callbacks.close()
    server.stop(grace=1.0).wait(3.0)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: grpc's threads can make it slow.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
