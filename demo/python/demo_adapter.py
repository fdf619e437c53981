"""Tools of the demo deployment (see demo/README.md, "Mix: tool names").

The adapter knows nothing about gRPC: grpc_server.py decodes parameters into plain
Python values, calls `execute_tool`, and encodes what comes back:
  * a plain JSON-able value -> ExecuteToolResponse.result
  * `bytes`                 -> ExecuteToolResponse.binary_result
  * for streaming tools, an iterator of `bytes` chunks -> ToolChunk.data each
"""
import importlib
import os
import sys
import time

# Modules `snakebridge.call` may reach: the demo must not run arbitrary code.
SNAKEBRIDGE_LIBRARIES = ("numpy", "math")


class UnknownToolError(Exception):
    """Raised for a tool name the adapter does not have."""


class Tool:
    def __init__(self, name, func, description, params, streaming=False):
        self.name = name
        self.func = func
        self.description = description
        self.params = params  # list of (name, type, required)
        self.streaming = streaming


class DemoAdapter:
    def __init__(self):
        self.tools = {}
        for tool in (
            Tool("echo", self.echo, "Returns `value` unchanged", [("value", "any", False)]),
            Tool("sleep", self.sleep, "Sleeps `ms` milliseconds", [("ms", "integer", False)]),
            Tool("cpu", self.cpu, "Pure-Python loop of `n` iterations", [("n", "integer", False)]),
            Tool("fail", self.fail, "Raises ValueError(message)", [("message", "string", False)]),
            Tool("large", self.large, "Returns `bytes` bytes in binary_result", [("bytes", "integer", True)]),
            Tool("upload", self.upload, "Counts the bytes of binary parameter `blob`", [("blob", "bytes", False)]),
            Tool(
                "stream",
                self.stream,
                "Streams `count` chunks of `chunk_bytes` bytes",
                [("count", "integer", False), ("chunk_bytes", "integer", False)],
                streaming=True,
            ),
            Tool("numpy_mean", self.numpy_mean, "numpy.arange(n).mean()", [("n", "integer", False)]),
            Tool(
                "ml_infer",
                self.ml_infer,
                "A small numpy MLP's forward pass over `batch_size` x `seq_len` tokens",
                [("model", "string", False), ("batch_size", "integer", True), ("seq_len", "integer", False)],
            ),
            Tool(
                "ml_train_step",
                self.ml_train_step,
                "One SGD step of a small numpy linear model",
                [("lr", "float", True), ("epoch", "integer", False), ("step", "integer", False)],
            ),
            Tool(
                "snakebridge.call",
                self.snakebridge_call,
                "Calls library.function(*args, **kwargs) (numpy or math only)",
                [
                    ("library", "string", True),
                    ("function", "string", True),
                    ("python_module", "string", False),
                    ("call_type", "string", False),
                    ("class", "string", False),
                    ("args", "list", False),
                    ("kwargs", "map", False),
                ],
            ),
            Tool("exit", self.exit, "Kills the worker with os._exit(code)", [("code", "integer", False)]),
            # Repro-script failures (issue 11): the message depends on every byte of `data`.
            Tool(
                "reject_blob",
                self.reject_blob,
                "Raises ValueError naming the length and sha256 of string `data`",
                [("data", "string", True)],
            ),
            # GPU tools (gpu_tools.py; torch or cupy, only for `cargo xtask gpu-check`).
            Tool("gpu_alloc", self.gpu_tool, "Allocates and holds `mb` MiB of GPU memory", [("mb", "integer", False)]),
            Tool("gpu_free", self.gpu_tool, "Frees what gpu_alloc holds", []),
            Tool("gpu_info", self.gpu_tool, "GPU backend and MiB held", []),
        ):
            self.tools[tool.name] = tool
        # Tools with a known time split (demo_split_tools.py).
        import demo_split_tools

        for name, func, description, params in demo_split_tools.TOOLS:
            self.tools[name] = Tool(name, func, description, params)
        # Profiler demo (demo_hot.py): a call whose CPU time is ~70 % pure Python
        # (demo_hot.spin) and ~30 % numpy.dot, by construction.
        import demo_hot

        self.tools["hot_path"] = Tool(
            "hot_path", demo_hot.hot_path, "CPU budget `ms`: `python_share` (0.7) in demo_hot.spin, the rest in numpy.dot",
            [("ms", "integer", False), ("python_share", "float", False)],
        )

    # ---- interface used by grpc_server.py ----

    def get_tools(self):
        return list(self.tools.values())

    def is_streaming(self, tool_name):
        tool = self.tools.get(tool_name)
        return tool is not None and tool.streaming

    def execute_tool(self, tool_name, params, binary_params, context):
        tool = self.tools.get(tool_name)
        if tool is None:
            raise UnknownToolError("Unknown tool: %s" % tool_name)
        return tool.func(params, binary_params, context)

    # ---- tools ----

    def echo(self, params, _binary, _ctx):
        return params.get("value")

    def sleep(self, params, _binary, _ctx):
        ms = int(params.get("ms", 20))
        time.sleep(max(ms, 0) / 1000.0)
        return {"slept_ms": ms}

    def cpu(self, params, _binary, _ctx):
        n = int(params.get("n", 200000))
        acc = 0
        for i in range(n):
            acc = (acc + i * i) % 1000003
        return {"n": n, "result": acc}

    def fail(self, params, _binary, _ctx):
        raise ValueError(str(params.get("message", "boom")))

    def large(self, params, _binary, _ctx):
        size = int(params.get("bytes", 1048576))
        if size < 0:
            raise ValueError("bytes must be >= 0")
        pattern = b"snakepit-demo-payload-0123456789"
        reps = size // len(pattern) + 1
        return (pattern * reps)[:size]

    def upload(self, _params, binary, _ctx):
        blob = binary.get("blob", b"")
        return {"received": len(blob), "parts": len(binary)}

    def stream(self, params, _binary, _ctx):
        count = int(params.get("count", 5))
        chunk_bytes = int(params.get("chunk_bytes", 1024))
        delay_ms = int(params.get("delay_ms", 0))

        def chunks():
            for i in range(count):
                if delay_ms > 0:
                    time.sleep(delay_ms / 1000.0)
                yield bytes([65 + i % 26]) * chunk_bytes

        return chunks()

    def numpy_mean(self, params, _binary, _ctx):
        import numpy

        n = int(params.get("n", 10000))
        return float(numpy.arange(n, dtype=numpy.float64).mean()) if n > 0 else 0.0

    def ml_infer(self, params, _binary, ctx):
        import numpy

        started = time.monotonic_ns()
        batch = int(params.get("batch_size", 1))
        seq_len = int(params.get("seq_len", 16))
        rng = numpy.random.default_rng(batch)
        x = rng.standard_normal((batch * seq_len, 32))
        hidden = numpy.maximum(x @ rng.standard_normal((32, 64)), 0.0)
        logits = hidden @ rng.standard_normal((64, 10))
        emit = (ctx or {}).get("emit")
        if emit:
            model = params.get("model", "tiny-mlp")
            emit(["memory", "allocate"], {"bytes": int(x.nbytes + hidden.nbytes)}, {"type": "cpu", "device": "cpu"})
            emit(
                ["ml", "inference"],
                {"duration": time.monotonic_ns() - started, "batch_size": batch, "tokens": batch * seq_len},
                {"model": str(model), "device": "cpu"},
            )
        return {
            "model": params.get("model", "tiny-mlp"),
            "batch_size": batch,
            "tokens": batch * seq_len,
            "predictions": int(logits.argmax(axis=1).sum()),
        }

    def ml_train_step(self, params, _binary, _ctx):
        import numpy

        lr = float(params.get("lr", 0.01))
        step = int(params.get("step", 0))
        rng = numpy.random.default_rng(step)
        x = rng.standard_normal((64, 8))
        y = x @ numpy.arange(1.0, 9.0)
        w = numpy.zeros(8)
        grad = -2.0 * x.T @ (y - x @ w) / len(y)
        w -= lr * grad
        loss = float(numpy.mean((y - x @ w) ** 2))
        return {"loss": loss, "step": step, "epoch": int(params.get("epoch", 0))}

    def snakebridge_call(self, params, _binary, _ctx):
        library = params.get("library") or params.get("python_module")
        module_name = params.get("python_module") or library
        if library not in SNAKEBRIDGE_LIBRARIES or module_name not in SNAKEBRIDGE_LIBRARIES:
            raise ValueError("library not allowed in the demo: %r" % (library,))
        function = params.get("function")
        if not isinstance(function, str) or not function or function.startswith("_"):
            raise ValueError("bad function name: %r" % (function,))
        module = importlib.import_module(module_name)
        call_type = params.get("call_type") or "function"
        args = params.get("args") or []
        kwargs = params.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("args must be a list and kwargs an object")
        if call_type == "module_attr":
            return to_jsonable(getattr(module, function))
        target = module
        if call_type == "class_method":
            cls = params.get("class")
            if not isinstance(cls, str) or not cls or cls.startswith("_"):
                raise ValueError("bad class name: %r" % (cls,))
            target = getattr(module, cls)
        elif call_type != "function":
            raise ValueError("unsupported call_type: %r" % (call_type,))
        func = getattr(target, function)
        if not callable(func):
            raise TypeError("%s.%s is not callable" % (module_name, function))
        return to_jsonable(func(*args, **kwargs))

    def reject_blob(self, params, _binary, _ctx):
        import hashlib

        data = str(params.get("data", "")).encode("utf-8")
        raise ValueError("rejected %d bytes, sha256 %s" % (len(data), hashlib.sha256(data).hexdigest()[:16]))

    def gpu_tool(self, params, _binary, ctx):
        import gpu_tools  # imported on first use: torch/cupy are not demo dependencies

        return getattr(gpu_tools, ctx["tool_name"])(params)

    def exit(self, params, _binary, _ctx):
        code = int(params.get("code", 1))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def to_jsonable(value):
    """numpy scalars/arrays -> plain Python values, so any JSON encoder takes them."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value
