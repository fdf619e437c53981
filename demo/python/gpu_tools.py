"""GPU tools of the demo (for `cargo xtask gpu-check`): allocate and hold known amounts
of GPU memory in the worker process, so the agent's per-worker NVML figures can be
compared with what was allocated.

Backend: PyTorch when importable with CUDA, else CuPy. Neither is a demo dependency:
gpu-check installs one when missing. Allocations stay in a module-level list until
`gpu_free`.

As a script it is gpu-check's client:
  gpu_tools.py backend                       -> prints {"backend": "torch"|"cupy"|null}
  gpu_tools.py call --port P --tool T [--mb N] -> calls tool T on the worker at
                                               127.0.0.1:P over gRPC, prints its result
"""
import json
import os
import sys

MIB = 1 << 20

_held = []  # the allocations, kept alive on purpose
_state = {"backend": None, "held_mb": 0}


def _backend():
    """("torch", module) or ("cupy", module); raises RuntimeError when neither works."""
    if _state["backend"] is not None:
        return _state["backend"]
    errors = []
    try:
        import torch

        if torch.cuda.is_available():
            _state["backend"] = ("torch", torch)
            return _state["backend"]
        errors.append("torch: CUDA not available")
    except Exception as exc:  # ImportError, or a broken CUDA install
        errors.append("torch: %s" % (exc,))
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        _state["backend"] = ("cupy", cupy)
        return _state["backend"]
    except Exception as exc:
        errors.append("cupy: %s" % (exc,))
    raise RuntimeError("no GPU backend: " + "; ".join(errors))


def backend_name():
    try:
        return _backend()[0]
    except RuntimeError:
        return None


def _allocator_mb():
    """What the framework's allocator holds from the driver (its cache included)."""
    name, mod = _backend()
    if name == "torch":
        return mod.cuda.memory_reserved() / MIB
    return mod.get_default_memory_pool().total_bytes() / MIB


def gpu_alloc(params):
    """Allocates `mb` MiB on cuda:0 and holds it. mb = 0 only creates the CUDA context."""
    mb = int(params.get("mb", 0))
    if mb < 0:
        raise ValueError("mb must be >= 0")
    name, mod = _backend()
    nbytes = mb * MIB
    if name == "torch":
        mod.cuda.init()
        mod.zeros(1, device="cuda")  # forces the context even for mb = 0
        if nbytes:
            buf = mod.empty(nbytes, dtype=mod.uint8, device="cuda")
            buf.fill_(1)
            _held.append(buf)
        mod.cuda.synchronize()
    else:
        # cudaFree(0) creates the context; alloc + memset need no kernel compiler (NVRTC).
        mod.cuda.runtime.free(0)
        if nbytes:
            buf = mod.cuda.alloc(nbytes)
            buf.memset(1, nbytes)
            _held.append(buf)
        mod.cuda.Device().synchronize()
    _state["held_mb"] += mb
    return {
        "backend": name,
        "pid": os.getpid(),
        "device": "cuda:0",
        "this_mb": mb,
        "held_mb": _state["held_mb"],
        "allocator_mb": round(_allocator_mb(), 3),
    }


def gpu_free(_params):
    """Drops every allocation and returns the allocator's cache to the driver."""
    name, mod = _backend()
    _held.clear()
    if name == "torch":
        mod.cuda.synchronize()
        mod.cuda.empty_cache()
    else:
        mod.get_default_memory_pool().free_all_blocks()
    _state["held_mb"] = 0
    return {"backend": name, "pid": os.getpid(), "held_mb": 0, "allocator_mb": round(_allocator_mb(), 3)}


def gpu_info(_params):
    return {
        "backend": backend_name(),
        "pid": os.getpid(),
        "held_mb": _state["held_mb"],
    }


# ---- gpu-check's client ----


def _call(port, tool, params):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "generated"))
    import grpc
    from google.protobuf import any_pb2
    import snakepit_bridge_pb2 as pb
    import snakepit_bridge_pb2_grpc as pb_grpc

    req = pb.ExecuteToolRequest(tool_name=tool)  # no session: no callbacks to the BEAM
    for key, value in params.items():
        req.parameters[key].CopyFrom(any_pb2.Any(type_url="type.googleapis.com/snakepit.json", value=json.dumps(value).encode()))
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        resp = pb_grpc.BridgeServiceStub(channel).ExecuteTool(req, timeout=300)
    if not resp.success:
        raise SystemExit("tool %s failed: %s" % (tool, resp.error_message))
    return json.loads(resp.result.value) if resp.result.value else None


def main(argv):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("backend")
    c = sub.add_parser("call")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--tool", required=True)
    c.add_argument("--mb", type=int)
    args = ap.parse_args(argv)
    if args.cmd == "backend":
        print(json.dumps({"backend": backend_name()}))
    else:
        params = {} if args.mb is None else {"mb": args.mb}
        print(json.dumps(_call(args.port, args.tool, params)))


if __name__ == "__main__":
    main(sys.argv[1:])
