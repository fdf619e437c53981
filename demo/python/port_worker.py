#!/usr/bin/env python3
"""The older Snakepit transport: {packet,4} frames of JSON over the port's stdin/stdout.

  port_worker.py --pool legacy        (env SNAKEPIT_WORKER_ID=<pool>_worker_<i>_<unique>)

Each frame is a 4-byte big-endian length and a JSON body:
  request  {"id": N, "command": "echo", "args": {...}}
  response {"id": N, "success": true, "result": ...}
        or {"id": N, "success": false, "error": {"type": "ValueError", "message": "..."}}
Requests are handled one at a time, in order. The worker exits 0 on stdin EOF.

stdout carries frames only: fd 1 is moved to a private descriptor and the Python-level
stdout points at stderr, so a stray print() can never corrupt the framing. Logging is
off unless SNAKEPIT_PORT_WORKER_LOG names a file (a BEAM that merges stderr into the
port would see log text as frames).
"""
import argparse
import json
import logging
import os
import struct
import sys
import time

MAX_FRAME = 64 * 1024 * 1024
log = logging.getLogger("snakepit.port_worker")


class ProtocolError(Exception):
    pass


def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError("EOF inside a frame")
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fd):
    header = read_exact(fd, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        raise ProtocolError("frame of %d bytes is too large" % length)
    body = read_exact(fd, length) if length else b""
    if body is None:
        raise ProtocolError("EOF inside a frame")
    return body


def write_frame(fd, body):
    data = struct.pack(">I", len(body)) + body
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def cmd_echo(args):
    return args.get("value", args)


def cmd_sleep(args):
    ms = int(args.get("ms", 20))
    time.sleep(max(ms, 0) / 1000.0)
    return {"slept_ms": ms}


def cmd_cpu(args):
    n = int(args.get("n", 200000))
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1000003
    return {"n": n, "result": acc}


def cmd_fail(args):
    raise ValueError(str(args.get("message", "boom")))


def cmd_ping(_args):
    return {"pong": True, "pid": os.getpid()}


COMMANDS = {"echo": cmd_echo, "sleep": cmd_sleep, "cpu": cmd_cpu, "fail": cmd_fail, "ping": cmd_ping}


def handle(body):
    try:
        req = json.loads(body)
    except ValueError as exc:
        return {"id": None, "success": False, "error": {"type": "DecodeError", "message": str(exc)}}
    if not isinstance(req, dict):
        return {"id": None, "success": False, "error": {"type": "DecodeError", "message": "not an object"}}
    req_id = req.get("id")
    command = req.get("command")
    args = req.get("args") or {}
    func = COMMANDS.get(command)
    if func is None:
        return {
            "id": req_id,
            "success": False,
            "error": {"type": "UnknownCommand", "message": "unknown command: %r" % (command,)},
        }
    try:
        return {"id": req_id, "success": True, "result": func(args if isinstance(args, dict) else {})}
    except Exception as exc:
        log.debug("command %s failed: %s", command, exc)
        return {"id": req_id, "success": False, "error": {"type": type(exc).__name__, "message": str(exc)}}


def main(argv=None):
    p = argparse.ArgumentParser(description="Snakepit demo {packet,4} worker")
    p.add_argument("--pool", default="legacy")
    args, _unknown = p.parse_known_args(sys.argv[1:] if argv is None else argv)

    log_path = os.environ.get("SNAKEPIT_PORT_WORKER_LOG")
    if log_path:
        logging.basicConfig(filename=log_path, level=logging.DEBUG)
    else:
        logging.disable(logging.CRITICAL)
    worker_id = os.environ.get("SNAKEPIT_WORKER_ID", "%s_worker_%d" % (args.pool, os.getpid()))
    log.info("port worker %s (pool %s) started", worker_id, args.pool)

    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    while True:
        try:
            body = read_frame(0)
        except ProtocolError as exc:
            log.error("%s", exc)
            return 1
        if body is None:
            log.info("stdin EOF, exiting")
            return 0
        reply = handle(body)
        try:
            write_frame(out_fd, json.dumps(reply, separators=(",", ":")).encode("utf-8"))
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    sys.exit(main())
