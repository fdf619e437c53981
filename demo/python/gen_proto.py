#!/usr/bin/env python3
"""Generate the grpcio stubs for the demo into demo/python/generated/.

Run with the interpreter that has grpcio-tools: `.venv/bin/python demo/python/gen_proto.py`.
The output directory is git-ignored; `cargo xtask setup` calls this script.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "proto")
# SNAKEPIT_DEMO_GENERATED: another stubs directory (a venv with another protobuf major
# needs stubs from its own protoc: the generated code checks the runtime major).
OUT_DIR = os.path.join(HERE, os.environ.get("SNAKEPIT_DEMO_GENERATED", "generated"))


def main() -> int:
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError:
        print("gen_proto: grpcio-tools is not installed for %s" % sys.executable, file=sys.stderr)
        return 1
    os.makedirs(OUT_DIR, exist_ok=True)
    # The well-known types (any.proto, timestamp.proto) ship inside grpc_tools.
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        "-I" + PROTO_DIR,
        "-I" + wkt,
        "--python_out=" + OUT_DIR,
        "--grpc_python_out=" + OUT_DIR,
        os.path.join(PROTO_DIR, "snakepit_bridge.proto"),
    ]
    rc = protoc.main(args)
    if rc != 0:
        print("gen_proto: protoc failed with %d" % rc, file=sys.stderr)
        return rc
    # Keep the directory importable as a plain path entry (not a package).
    print("gen_proto: wrote stubs to %s" % OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
