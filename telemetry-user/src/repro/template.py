

def _report(exc):
    """Prints the error as the design's template does and compares it with the record."""
    name = type(exc).__name__
    print("Error: %s: %s" % (name, exc), flush=True)
    traceback.print_exc()
    if EXPECTED_ERROR.get("type") is not None:
        same = (name, str(exc)) == (EXPECTED_ERROR["type"], EXPECTED_ERROR.get("message"))
        print("Same as recorded: %s" % ("yes" if same else "no (recorded %s: %s)" % (
            EXPECTED_ERROR["type"], EXPECTED_ERROR.get("message"))), flush=True)
    sys.exit(1)


def _load_adapter():
    """Imports the worker's adapter (`--adapter module.Class`) the way its server does."""
    for d in (WORKER.get("cwd"), WORKER.get("script_dir")):
        if d and d not in sys.path:
            sys.path.insert(0, d)
    module_name, _, class_name = (WORKER.get("adapter") or "").rpartition(".")
    if not module_name:
        print("Cannot reproduce: the worker's --adapter (module.Class) is unknown.", file=sys.stderr)
        sys.exit(3)
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()


def _call_tool():
    adapter = _load_adapter()
    ctx = {
        "session_id": payload["session_id"],
        "correlation_id": CALL.get("correlation_id"),
        "tool_name": payload["tool_name"],
        "worker_id": CALL.get("worker_id"),
        "emit": lambda *args, **kwargs: None,
    }
    execute = adapter.execute_tool
    try:
        arity = len(inspect.signature(execute).parameters)
    except (TypeError, ValueError):
        arity = 4
    if arity >= 4:
        value = execute(payload["tool_name"], payload["parameters"], payload["binary_parameters"], ctx)
    else:
        value = execute(payload["tool_name"], payload["parameters"], ctx)
    if hasattr(value, "__next__"):
        value = list(value)
    return value


def _call_snakebridge():
    sb = payload["snakebridge"]
    module = importlib.import_module(sb.get("python_module") or sb["library"])
    target = module
    if sb.get("call_type") == "class_method":
        target = getattr(module, sb["class"])
    func = getattr(target, sb["function"])
    if sb.get("call_type") == "module_attr":
        return func
    return func(*(sb.get("args") or []), **(sb.get("kwargs") or {}))


def _run():
    return _call_snakebridge() if payload.get("snakebridge") else _call_tool()


class DEADLINE_EXCEEDED(Exception):
    """The call outlived its gRPC deadline, as it did on the worker."""


def _run_with_deadline(seconds):
    box = {}

    def target():
        try:
            box["value"] = _run()
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        try:
            raise DEADLINE_EXCEEDED(EXPECTED_ERROR.get("message") or "Deadline Exceeded")
        except DEADLINE_EXCEEDED as exc:
            _report(exc)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def reproduce():
    if TRUNCATED:
        print("TRUNCATED: " + TRUNCATED, file=sys.stderr)
        print("Not reproducing: the payload above is incomplete.", file=sys.stderr)
        sys.exit(2)
    if WORKER_DIED:
        print("The worker died during this call (%s). Reproducing the call; it may end "
              "this process the same way." % WORKER_DIED, flush=True)
    try:
        if DEADLINE_S is not None:
            result = _run_with_deadline(DEADLINE_S)
        else:
            result = _run()
    except SystemExit:
        raise
    except Exception as exc:
        _report(exc)
    print(("Success: %r" % (result,))[:2000])
    if WORKER_DIED:
        print("The call returned here, although the worker died under it.")
    return result


if __name__ == "__main__":
    reproduce()
