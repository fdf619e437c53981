"""Self-test of the demo's Python workers (no BEAM needed).

  .venv/bin/python -m unittest discover -s demo/python -p 'test_*.py'

Starts grpc_server.py against a fake BEAM callback server written here with grpcio,
calls every tool, checks the error JSON and the callbacks, then drives port_worker.py
with {packet,4} frames.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(HERE, "generated")
if not os.path.exists(os.path.join(GEN, "snakepit_bridge_pb2_grpc.py")):
    subprocess.check_call([sys.executable, os.path.join(HERE, "gen_proto.py")])
sys.path.insert(0, GEN)

import grpc  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402

import snakepit_bridge_pb2 as pb  # noqa: E402
import snakepit_bridge_pb2_grpc as pb_grpc  # noqa: E402

WORKER_ID = "default_worker_1_ab12"
MB = 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", 128 * MB),
    ("grpc.max_receive_message_length", 128 * MB),
]


class FakeBeam(pb_grpc.BridgeServiceServicer):
    """Records the worker's callbacks."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []  # (method, request, metadata dict)

    def _record(self, method, request, context):
        with self.lock:
            self.calls.append((method, request, dict(context.invocation_metadata())))

    def of(self, method):
        with self.lock:
            return [c for c in self.calls if c[0] == method]

    def Ping(self, request, context):
        self._record("Ping", request, context)
        return pb.PingResponse(message="pong")

    def InitializeSession(self, request, context):
        self._record("InitializeSession", request, context)
        return pb.InitializeSessionResponse(success=True)

    def RegisterTools(self, request, context):
        self._record("RegisterTools", request, context)
        return pb.RegisterToolsResponse(success=True)

    def Heartbeat(self, request, context):
        self._record("Heartbeat", request, context)
        return pb.HeartbeatResponse(session_valid=True)


def wait_for(pred, timeout, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


class Worker:
    """One grpc_server.py subprocess with its ready-file handshake."""

    def __init__(self, tmpdir, elixir_address, worker_id=WORKER_ID, heartbeat_ms=200, extra_args=()):
        self.ready = os.path.join(tmpdir, "snakepit_ready_%s_1" % worker_id)
        env = dict(os.environ)
        env.update(
            SNAKEPIT_READY_FILE=self.ready,
            SNAKEPIT_HEARTBEAT_CONFIG=json.dumps({"enabled": True, "interval_ms": heartbeat_ms}),
            SNAKEPIT_LOG_LEVEL="info",
            GRPC_POLL_STRATEGY="poll",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "grpc_server.py"),
                "--adapter", "demo_adapter.DemoAdapter",
                "--port", "0",
                "--elixir-address", elixir_address,
                "--snakepit-run-id", "k3x9a2z",
                "--snakepit-instance-name", "demo",
            ]
            + list(extra_args),
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        if not wait_for(lambda: os.path.exists(self.ready) or self.proc.poll() is not None, 20):
            raise AssertionError("worker never wrote its ready file")
        if self.proc.poll() is not None:
            raise AssertionError("worker died at start-up:\n" + self.output())
        with open(self.ready) as f:
            text = f.read()
        os.unlink(self.ready)  # as the BEAM does
        assert text.endswith("\n"), repr(text)
        self.port = int(text)
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.port, options=OPTIONS)
        self.stub = pb_grpc.BridgeServiceStub(self.channel)

    def output(self):
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def close(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.log.close()


def params(**kw):
    return {
        k: any_pb2.Any(
            type_url="type.googleapis.com/google.protobuf.StringValue", value=json.dumps(v).encode()
        )
        for k, v in kw.items()
    }


def result_of(resp):
    return resp.result.type_url.rsplit(".", 1)[-1], json.loads(resp.result.value)


class GrpcWorkerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.beam = FakeBeam()
        cls.beam_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
        pb_grpc.add_BridgeServiceServicer_to_server(cls.beam, cls.beam_server)
        cls.beam_port = cls.beam_server.add_insecure_port("127.0.0.1:0")
        cls.beam_server.start()
        cls.worker = Worker(cls.tmp.name, "127.0.0.1:%d" % cls.beam_port)

    @classmethod
    def tearDownClass(cls):
        cls.worker.close()
        cls.beam_server.stop(0)
        cls.tmp.cleanup()

    def call(self, tool, session="sess_1", binary=None, metadata=None, **kw):
        req = pb.ExecuteToolRequest(
            session_id=session, tool_name=tool, parameters=params(**kw), binary_parameters=binary or {}
        )
        return self.worker.stub.ExecuteTool(req, timeout=30, metadata=metadata)

    def test_process_shape(self):
        pid = self.worker.proc.pid
        self.assertEqual(os.getsid(pid), pid, "worker must call os.setsid()")
        self.assertEqual(os.getpgid(pid), pid)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        self.assertTrue(any(a.endswith(b"grpc_server.py") for a in argv))
        self.assertIn(b"--snakepit-run-id", argv)

    def test_ping_and_heartbeat_served(self):
        resp = self.worker.stub.Ping(pb.PingRequest(message="hi"), timeout=5)
        self.assertIn("hi", resp.message)
        self.assertGreater(resp.server_time.seconds, 0)
        hb = self.worker.stub.Heartbeat(pb.HeartbeatRequest(session_id="sess_9"), timeout=5)
        self.assertTrue(hb.session_valid)
        init = self.worker.stub.InitializeSession(pb.InitializeSessionRequest(session_id="sess_9"), timeout=5)
        self.assertTrue(init.success)
        got = self.worker.stub.GetSession(pb.GetSessionRequest(session_id="sess_9"), timeout=5)
        self.assertTrue(got.found)
        clean = self.worker.stub.CleanupSession(pb.CleanupSessionRequest(session_id="sess_9"), timeout=5)
        self.assertTrue(clean.success)
        self.assertEqual(clean.resources_cleaned, 1)

    def test_simple_tools(self):
        resp = self.call("echo", value="hello")
        self.assertTrue(resp.success, resp.error_message)
        self.assertEqual(result_of(resp), ("string", "hello"))
        self.assertEqual(resp.metadata["worker_id"], WORKER_ID)

        resp = self.call("echo", value={"a": [1, 2]})
        self.assertEqual(result_of(resp), ("map", {"a": [1, 2]}))

        resp = self.call("sleep", ms=50)
        self.assertTrue(resp.success, resp.error_message)
        self.assertGreaterEqual(resp.execution_time_ms, 45)

        resp = self.call("cpu", n=200000)
        self.assertTrue(resp.success, resp.error_message)
        self.assertEqual(result_of(resp)[1]["n"], 200000)

        resp = self.call("numpy_mean", n=10000)
        self.assertTrue(resp.success, resp.error_message)
        self.assertEqual(result_of(resp), ("float", 4999.5))

    def test_snakebridge_call(self):
        resp = self.call(
            "snakebridge.call",
            library="numpy", function="mean", python_module="numpy", call_type="function",
            args=[[1, 2, 3, 4]], kwargs={},
        )
        self.assertTrue(resp.success, resp.error_message)
        self.assertEqual(result_of(resp), ("float", 2.5))
        resp = self.call("snakebridge.call", library="math", function="sqrt", args=[16], kwargs={})
        self.assertEqual(result_of(resp), ("float", 4.0))
        resp = self.call("snakebridge.call", library="os", function="getcwd", args=[], kwargs={})
        self.assertFalse(resp.success)
        self.assertEqual(json.loads(resp.error_message)["type"], "ValueError")

    def test_large_and_upload(self):
        resp = self.call("large", bytes=MB)
        self.assertTrue(resp.success, resp.error_message)
        self.assertEqual(len(resp.binary_result), MB)
        resp = self.call("large", bytes=50 * MB)
        self.assertTrue(resp.success, resp.error_message)
        self.assertEqual(len(resp.binary_result), 50 * MB)
        resp = self.call("upload", binary={"blob": b"\x01" * MB})
        self.assertTrue(resp.success, resp.error_message)
        self.assertEqual(result_of(resp)[1]["received"], MB)

    def test_fail_error_json(self):
        resp = self.call("fail", session="sess_2", message="boom")
        self.assertFalse(resp.success)
        err = json.loads(resp.error_message)
        self.assertEqual(err["type"], "ValueError")
        self.assertEqual(err["message"], "boom")
        self.assertIsInstance(err["stacktrace"], list)
        self.assertTrue(err["stacktrace"])
        self.assertIn("ValueError: boom", err["traceback"])
        self.assertEqual(err["context"]["tool_name"], "fail")
        self.assertEqual(err["context"]["session_id"], "sess_2")

    def test_unknown_tool(self):
        resp = self.call("no_such_tool")
        self.assertFalse(resp.success)
        err = json.loads(resp.error_message)
        self.assertEqual(err["type"], "UnknownTool")
        self.assertEqual(err["context"]["tool_name"], "no_such_tool")

    def test_correlation_id(self):
        call = self.worker.stub.ExecuteTool.with_call
        resp, rpc = call(
            pb.ExecuteToolRequest(session_id="sess_1", tool_name="echo", parameters=params(value=1)),
            timeout=10,
            metadata=(("x-snakepit-correlation-id", "c-123"),),
        )
        self.assertEqual(resp.metadata["correlation_id"], "c-123")
        self.assertIn(("x-snakepit-correlation-id", "c-123"), tuple(rpc.initial_metadata()))
        resp = self.worker.stub.ExecuteTool(
            pb.ExecuteToolRequest(
                session_id="sess_1", tool_name="echo", parameters=params(value=1),
                metadata={"correlation_id": "c-456"},
            ),
            timeout=10,
        )
        self.assertEqual(resp.metadata["correlation_id"], "c-456")

    def test_streaming(self):
        req = pb.ExecuteToolRequest(
            session_id="sess_3", tool_name="stream", parameters=params(count=5, chunk_bytes=1024), stream=True
        )
        chunks = list(self.worker.stub.ExecuteStreamingTool(req, timeout=10))
        self.assertEqual(len(chunks), 5)
        self.assertEqual([c.chunk_id for c in chunks], ["stream-%d" % i for i in range(1, 6)])
        self.assertTrue(all(len(c.data) == 1024 for c in chunks))
        self.assertEqual([c.is_final for c in chunks], [False] * 4 + [True])

    def test_streaming_failure(self):
        req = pb.ExecuteToolRequest(session_id="sess_3", tool_name="fail", parameters=params(message="sboom"))
        with self.assertRaises(grpc.RpcError) as cm:
            list(self.worker.stub.ExecuteStreamingTool(req, timeout=10))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INTERNAL)
        err = json.loads(cm.exception.details())
        self.assertEqual(err["type"], "ValueError")
        self.assertEqual(err["message"], "sboom")

    def test_telemetry_stream(self):
        controls = iter([pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=True))] + [])

        def control_stream():
            yield from controls
            time.sleep(3)  # keep the inbound side open while events flow

        events = self.worker.stub.StreamTelemetry(control_stream(), timeout=5)
        time.sleep(0.3)
        self.call("echo", session="sess_4", value="t", metadata=(("x-snakepit-correlation-id", "c-tel"),))
        first = next(events)
        self.assertEqual(list(first.event_parts), ["python", "call", "start"])
        self.assertEqual(first.correlation_id, "c-tel")
        events.cancel()

    def test_zz_callbacks(self):
        # Named zz so it runs after the tool calls that create sessions.
        self.call("echo", session="sess_1", value="x")
        self.assertTrue(wait_for(lambda: self.beam.of("Ping"), 10), "no Ping callback")
        self.assertTrue(
            wait_for(lambda: [c for c in self.beam.of("RegisterTools") if c[1].session_id == "sess_1"], 10),
            "no RegisterTools for sess_1",
        )
        inits = [c for c in self.beam.of("InitializeSession") if c[1].session_id == "sess_1"]
        self.assertEqual(len(inits), 1, "InitializeSession once per session")
        with self.beam.lock:
            order = [c[0] for c in self.beam.calls if getattr(c[1], "session_id", "") == "sess_1" and c[0] != "Heartbeat"]
        self.assertEqual(order[:2], ["InitializeSession", "RegisterTools"])
        reg = [c for c in self.beam.of("RegisterTools") if c[1].session_id == "sess_1"][0][1]
        self.assertEqual(reg.worker_id, WORKER_ID)
        names = {t.name for t in reg.tools}
        self.assertTrue({"echo", "stream", "snakebridge.call", "large"} <= names)
        self.assertTrue(
            wait_for(lambda: len([c for c in self.beam.of("Heartbeat") if c[1].session_id == "sess_1"]) >= 2, 5),
            "fewer than 2 heartbeats for sess_1",
        )
        hb = self.beam.of("Heartbeat")[0]
        self.assertIn("x-snakepit-correlation-id", hb[2])


class PerCallSessionTest(unittest.TestCase):
    """--init-session-per-call: each tool call waits for its own InitializeSession."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.beam = FakeBeam()
        self.beam_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
        pb_grpc.add_BridgeServiceServicer_to_server(self.beam, self.beam_server)
        port = self.beam_server.add_insecure_port("127.0.0.1:0")
        self.beam_server.start()
        self.worker = Worker(
            self.tmp.name, "127.0.0.1:%d" % port, heartbeat_ms=60000, extra_args=["--init-session-per-call"]
        )

    def tearDown(self):
        self.worker.close()
        self.beam_server.stop(0)
        self.tmp.cleanup()

    def inits(self, session):
        return [c for c in self.beam.of("InitializeSession") if c[1].session_id == session]

    def test_initialize_session_before_each_reply(self):
        for i in range(1, 4):
            resp = self.worker.stub.ExecuteTool(
                pb.ExecuteToolRequest(session_id="sess_p", tool_name="echo", parameters=params(value=i)),
                timeout=10,
            )
            self.assertTrue(resp.success)
            # Synchronous: already at the BEAM when the reply arrives (the queued
            # first-of-session callback may add one more).
            self.assertGreaterEqual(len(self.inits("sess_p")), i)
        self.assertTrue(wait_for(lambda: len(self.inits("sess_p")) == 4, 5), len(self.inits("sess_p")))
        self.assertIn("x-snakepit-correlation-id", self.inits("sess_p")[0][2])


class LifecycleTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        # Nothing listens on port 1: the worker must survive an absent BEAM.
        self.worker = Worker(self.tmp.name, "127.0.0.1:1", worker_id="default_worker_2_cd34")

    def tearDown(self):
        self.worker.close()
        self.tmp.cleanup()

    def test_stdin_eof_exits(self):
        resp = self.worker.stub.ExecuteTool(
            pb.ExecuteToolRequest(session_id="s", tool_name="echo", parameters=params(value=1)), timeout=10
        )
        self.assertTrue(resp.success)
        self.worker.proc.stdin.close()
        self.assertEqual(self.worker.proc.wait(timeout=10), 0)
        self.assertIn("stdin EOF", self.worker.output())

    def test_sigterm_exits(self):
        self.worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.worker.proc.wait(timeout=10), 0)
        self.assertIn("SIGTERM", self.worker.output())

    def test_exit_tool(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.worker.stub.ExecuteTool(
                pb.ExecuteToolRequest(session_id="s", tool_name="exit", parameters=params(code=3)), timeout=10
            )
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.worker.proc.wait(timeout=10), 3)


class PortWorkerTest(unittest.TestCase):
    def test_packet4_json(self):
        env = dict(os.environ, SNAKEPIT_WORKER_ID="legacy_worker_1_cd34")
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "port_worker.py"), "--pool", "legacy"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            reqs = [
                {"id": 1, "command": "echo", "args": {"value": "hi"}},
                {"id": 2, "command": "sleep", "args": {"ms": 20}},
                {"id": 3, "command": "cpu", "args": {"n": 1000}},
                {"id": 4, "command": "fail", "args": {"message": "boom"}},
                {"id": 5, "command": "nope", "args": {}},
            ]
            for r in reqs:
                body = json.dumps(r).encode()
                proc.stdin.write(struct.pack(">I", len(body)) + body)
            proc.stdin.flush()
            replies = {}
            for _ in reqs:
                (n,) = struct.unpack(">I", proc.stdout.read(4))
                msg = json.loads(proc.stdout.read(n))
                replies[msg["id"]] = msg
            self.assertEqual(replies[1], {"id": 1, "success": True, "result": "hi"})
            self.assertTrue(replies[2]["success"])
            self.assertEqual(replies[3]["result"]["n"], 1000)
            self.assertEqual(replies[4]["success"], False)
            self.assertEqual(replies[4]["error"], {"type": "ValueError", "message": "boom"})
            self.assertEqual(replies[5]["error"]["type"], "UnknownCommand")
            proc.stdin.close()
            self.assertEqual(proc.wait(timeout=10), 0)
            self.assertEqual(proc.stdout.read(), b"")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()


if __name__ == "__main__":
    unittest.main()
