"""minicloud Python runtime: a client of the AWS Lambda Runtime API.

The invoker runs this as `<python> -u bootstrap.py` (cwd = a per-instance dir),
with AWS_LAMBDA_RUNTIME_API, _HANDLER, LAMBDA_TASK_ROOT and the AWS_LAMBDA_*
variables set. It imports the handler once, then loops forever:
GET invocation/next -> handler(event, context) -> POST response or error.

Startup time is the cold start, so only cheap modules are imported up front: the
Runtime API is spoken over the `_socket` module by a small HTTP/1.1 client of its
own (`http.client`, with the `email` and `ssl` modules it imports, was about 20 ms
of every cold start), and traceback is imported only on error paths.
"""

import _socket
import importlib
import json
import os
import sys
import time

RUNTIME = "/2018-06-01/runtime"



def _read_platform_env():
    """The function's identity, from the AWS_LAMBDA_* variables."""
    global FUNCTION_NAME, FUNCTION_VERSION, MEMORY_LIMIT_IN_MB, LOG_GROUP_NAME, LOG_STREAM_NAME
    FUNCTION_NAME = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
    FUNCTION_VERSION = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    MEMORY_LIMIT_IN_MB = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 128)
    LOG_GROUP_NAME = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
    LOG_STREAM_NAME = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")


_read_platform_env()


class RuntimeAPIError(Exception):
    """The Runtime API answered something this runtime cannot work with."""


class InitError(Exception):
    """The handler could not be loaded; reported once on init/error."""

    def __init__(self, error_type, message, trace=()):
        super().__init__(message)
        self.error_type = error_type
        self.trace = list(trace)


class Response:
    """The status line's code and the headers of one Runtime API answer."""

    def __init__(self, status, headers):
        self.status = status
        self.headers = headers

    def getheader(self, name, default=None):
        return self.headers.get(name.lower(), default)


class RuntimeClient:
    """One keep-alive HTTP/1.1 connection to the Runtime API (the invoker's own
    server: answers carry Content-Length or are chunked)."""

    def __init__(self, address, sock=None):
        host, _, port = address.rpartition(":")
        self.host_header = address
        self.address = (host.strip("[]"), int(port))
        self.family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
        # A pre-started interpreter is handed a connection the invoker made.
        self.sock = sock
        self.buffered = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffered = None, b""

    def _connect(self):
        sock = _socket.socket(self.family, _socket.SOCK_STREAM)
        # Blocking without a timeout: GET next is a long poll that must never time
        # out, even if handler code calls socket.setdefaulttimeout().
        sock.settimeout(None)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self.sock, self.buffered = sock, b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("the Runtime API closed the connection")
        self.buffered += data

    def _line(self):
        while True:
            end = self.buffered.find(b"\r\n")
            if end >= 0:
                line, self.buffered = self.buffered[:end], self.buffered[end + 2:]
                return line
            if len(self.buffered) > 65536:
                raise RuntimeAPIError("an answer's header line is too long")
            self._fill()

    def _exactly(self, n):
        # Pieces joined once: appending to one bytes object would copy a 6 MB
        # event over and over.
        parts, have = [self.buffered], len(self.buffered)
        while have < n:
            data = self.sock.recv(max(65536, min(n - have, 1 << 20)))
            if not data:
                raise ConnectionResetError("the Runtime API closed the connection")
            parts.append(data)
            have += len(data)
        joined = b"".join(parts)
        self.buffered = joined[n:]
        return joined[:n]

    def _until_closed(self):
        parts = [self.buffered]
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                self.close()
                return b"".join(parts)
            parts.append(data)

    def _read_response(self):
        parts = self._line().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise RuntimeAPIError(f"not an HTTP/1.x status line: {parts!r}")
        status = int(parts[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise RuntimeAPIError(f"malformed header line: {line[:100]!r}")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self._line().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self._line():  # trailers
                        pass
                    break
                chunks.append(self._exactly(size))
                self._exactly(2)
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = self._until_closed()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers), body

    def request(self, method, path, body=None, headers=None):
        """Send one request and return (status, response, body bytes)."""
        body = body or b""
        if any(ch <= " " or ch > "~" for ch in path):
            # The path carries the request id the Runtime API handed out.
            raise RuntimeAPIError(f"unusable request path {path[:200]!r}")
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}",
                f"Content-Length: {len(body)}"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (1, 2):
            reused = self.sock is not None
            try:
                if not reused:
                    self._connect()
                self.sock.sendall(message)
                response, data = self._read_response()
                return response.status, response, data
            except (OSError, ValueError, RuntimeAPIError):
                self.close()
                # A kept-alive socket the server closed while idle only fails on
                # reuse; retry once on a fresh one. A fresh connection failing
                # (e.g. refused) is fatal.
                if not reused or attempt == 2:
                    raise

    def post(self, path, payload, headers=None):
        status, _, body = self.request("POST", path, payload, headers)
        if not 200 <= status < 300:
            # E.g. 413 for an oversized response: the invoker has already failed
            # the invocation, so log and carry on with the next one.
            sys.stderr.write(f"bootstrap: POST {path} -> {status}: {body[:200]!r}\n")

    def post_error(self, path, error_type, message, trace):
        payload = json.dumps(
            {"errorMessage": message, "errorType": error_type, "stackTrace": trace}
        ).encode()
        self.post(path, payload, {
            "Content-Type": "application/json",
            "Lambda-Runtime-Function-Error-Type": _header_safe(error_type),
        })


def _header_safe(value):
    # Header values must not carry control characters; error types come from user
    # code (exception class names), so keep only visible ASCII.
    return "".join(ch for ch in value if "!" <= ch <= "~") or "Unknown"


def _user_trace(tb):
    """The traceback as AWS formats it, minus this file's and importlib's frames."""
    import traceback

    frames = [
        f for f in traceback.extract_tb(tb)
        if f.filename not in (__file__, importlib.__file__)
        and not f.filename.startswith("<frozen importlib")
    ]
    return traceback.format_list(frames)


def _log_error(error_type, message, trace):
    sys.stderr.write(f"[ERROR] {error_type}: {message}\n{''.join(trace)}")


# --- Handler loading --------------------------------------------------------


def load_handler(spec, task_root):
    """Import "dir/module.function" from task_root and return the function."""
    module_path, _, attr = spec.rpartition(".")
    if not module_path or not attr:
        raise InitError(
            "Runtime.MalformedHandlerName",
            f"Bad handler '{spec}': expected 'module.function'",
        )
    module_name = module_path.replace("/", ".")

    # Python put this file's directory first on sys.path; the user's code takes
    # its place so that the runtime's own directory is not importable.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path[0] = task_root
    else:
        sys.path.insert(0, task_root)

    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        # Syntax errors, missing modules (the handler's or one it imports) and
        # exceptions raised at module top level all mean "cannot import".
        detail = str(e) if isinstance(e, ImportError) else f"{type(e).__name__}: {e}"
        trace = _user_trace(e.__traceback__)
        if isinstance(e, SyntaxError):
            import traceback

            trace += traceback.format_exception_only(type(e), e)
        raise InitError(
            "Runtime.ImportModuleError",
            f"Unable to import module '{module_name}': {detail}",
            trace,
        ) from None

    handler = getattr(module, attr, None)
    if handler is None or not callable(handler):
        problem = "missing on" if handler is None else "is not callable in"
        message = f"Handler '{attr}' {problem} module '{module_name}'"
        origin = getattr(module, "__file__", None) or ""
        if not os.path.abspath(origin).startswith(os.path.abspath(task_root) + os.sep):
            # A user file named like a module the runtime had already imported
            # (http.py, json.py, ...) is shadowed by it; say so rather than confuse.
            message += (f" (it was loaded from {origin or 'the interpreter'}, outside"
                        f" LAMBDA_TASK_ROOT: a file of that name in your code is shadowed)")
        raise InitError("Runtime.HandlerNotFound", message)
    return handler


# --- Context ----------------------------------------------------------------


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, data):
        self.cognito_identity_id = data.get("cognitoIdentityId")
        self.cognito_identity_pool_id = data.get("cognitoIdentityPoolId")


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name",
                 "app_version_code", "app_package_name")

    def __init__(self, data):
        for name in self.__slots__:
            setattr(self, name, data.get(name))


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, data):
        client = data.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = data.get("custom")
        self.env = data.get("env")


class LambdaContext:
    """The `context` argument, with the attributes AWS's Python runtime has."""

    def __init__(self, request_id, deadline_ms, function_arn, identity, client_context):
        self.aws_request_id = request_id
        self.invoked_function_arn = function_arn
        self.function_name = FUNCTION_NAME
        self.function_version = FUNCTION_VERSION
        self.memory_limit_in_mb = MEMORY_LIMIT_IN_MB
        self.log_group_name = LOG_GROUP_NAME
        self.log_stream_name = LOG_STREAM_NAME
        self.identity = identity
        self.client_context = client_context
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(self._deadline_ms - int(time.time() * 1000), 0)


def _json_header(resp, name):
    value = resp.getheader(name)
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _json_default(obj):
    # DynamoDB (boto3) hands out decimal.Decimal; AWS's runtime returns them as
    # numbers. Look the module up rather than importing it at startup.
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(obj, decimal.Decimal):
        return float(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# --- The invocation loop ----------------------------------------------------


def handle_one(client, handler, resp, body):
    request_id = resp.getheader("Lambda-Runtime-Aws-Request-Id")
    if not request_id:
        raise RuntimeAPIError("invocation/next without Lambda-Runtime-Aws-Request-Id")
    base = f"{RUNTIME}/invocation/{request_id}"

    trace_id = resp.getheader("Lambda-Runtime-Trace-Id")
    if trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)

    try:
        event = json.loads(body)
    except ValueError as e:
        client.post_error(base + "/error", "Runtime.UnmarshalError",
                          f"Unable to unmarshal input: {e}", [])
        return

    # Like AWS: identity is always an object (its fields None when the header is
    # absent), client_context is None unless the caller sent one.
    client_context = _json_header(resp, "Lambda-Runtime-Client-Context")
    context = LambdaContext(
        request_id,
        int(resp.getheader("Lambda-Runtime-Deadline-Ms") or 0),
        resp.getheader("Lambda-Runtime-Invoked-Function-Arn", ""),
        CognitoIdentity(_json_header(resp, "Lambda-Runtime-Cognito-Identity") or {}),
        ClientContext(client_context) if client_context is not None else None,
    )

    try:
        result = handler(event, context)
    except Exception as e:
        error_type, message, trace = type(e).__name__, str(e), _user_trace(e.__traceback__)
        _log_error(error_type, message, trace)
        client.post_error(base + "/error", error_type, message, trace)
        return

    try:
        payload = json.dumps(result, default=_json_default).encode()
    except Exception as e:  # TypeError, circular reference ValueError, RecursionError
        message = f"Unable to marshal response: {e}"
        _log_error("Runtime.MarshalError", message, [])
        client.post_error(base + "/error", "Runtime.MarshalError", message, [])
        return
    client.post(base + "/response", payload, {"Content-Type": "application/json"})


def main(runtime_api=None):
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"], runtime_api)
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()

    try:
        handler = load_handler(os.environ.get("_HANDLER", ""), task_root)
    except InitError as e:
        _log_error(e.error_type, str(e), e.trace)
        try:
            client.post_error(RUNTIME + "/init/error", e.error_type, str(e), e.trace)
        except (OSError, ValueError, RuntimeAPIError) as post_err:
            sys.stderr.write(f"bootstrap: could not report the init error: {post_err}\n")
        sys.exit(1)

    try:
        while True:
            status, resp, body = client.request("GET", RUNTIME + "/invocation/next")
            if status != 200:
                raise RuntimeAPIError(f"invocation/next -> {status}: {body[:200]!r}")
            handle_one(client, handler, resp, body)
    except (OSError, ValueError, RuntimeAPIError) as e:
        sys.stderr.write(f"bootstrap: Runtime API failed: {e!r}\n")
        sys.exit(1)


def _warm_up():
    """What the first cold start would pay once per process, paid before any
    function is known: the compiler's first use alone (importing the handler
    compiles it) is ~1 ms, the JSON encoder's and decoder's first calls a little."""
    compile("def handler(event, context):\n    return {'k': [1, 2.5, None]}\n", "<warm-up>", "exec")
    json.loads(json.dumps({"k": [1, 2.5, None, "s", True]}))
    _warm_up_imports()
    import ctypes

    # dlopen and the symbol lookup (~70 µs) before the function is known.
    return ctypes.CDLL(None, use_errno=True).syscall


def _warm_up_imports():
    """An interpreter's first import from a directory on sys.path (the path
    hooks, a new finder, its first .pyc read) is ~200 µs, a later one's from
    another directory ~70 µs (measured): the first is paid here, with a module
    of ours in this process's own scratch dir, imported from its source and then
    from the bytecode that wrote. Nothing of it is left: not the module, the
    path entry, its finder or the files."""
    scratch = os.path.join(os.environ.get("TMPDIR") or os.getcwd(), "minicloud-warm-up")
    name = "_minicloud_warm_up"
    try:
        os.makedirs(scratch, exist_ok=True)
        with open(os.path.join(scratch, name + ".py"), "w") as f:
            f.write("def handler(event, context):\n    return event\n")
        sys.path.insert(0, scratch)
        try:
            for _ in range(2):
                importlib.import_module(name)
                del sys.modules[name]
        finally:
            sys.path.remove(scratch)
            sys.path_importer_cache.pop(scratch, None)
        for root, dirs, files in os.walk(scratch, topdown=False):
            for entry in files:
                os.remove(os.path.join(root, entry))
            for entry in dirs:
                os.rmdir(os.path.join(root, entry))
        os.rmdir(scratch)
    except (OSError, ImportError):
        pass  # only slower


# landlock_restrict_self(2): the same number on every architecture.
_SYS_LANDLOCK_RESTRICT_SELF = 446


def _await_function(control_fd=0):
    """Pre-started mode (`--prestarted`, crates/invoker/src/prestart.rs): wait on
    the invoker's socket for the instance's environment and memory limit, apply
    them, then for its function's Landlock layer, restrict itself with it, and
    return to run as that function, with the connection to its Runtime API the
    invoker made (a socket, or None for an instance exec'ing another program).
    The two come apart so that this process sets its environment while the
    invoker completes the layer. Any failure exits: an instance that could not
    narrow its sandbox must not run function code."""
    import ctypes
    import resource

    syscall = _warm_up()
    sock = _socket.socket(fileno=control_fd)
    # Imported and waiting: the invoker may now hand it a function.
    sock.sendall(b"R")
    data, fds = b"", []

    def receive(size):
        # A stream socket: one recvmsg may carry the end of one message and the
        # start of the next, with the descriptors of either.
        nonlocal data
        while len(data) < size:
            chunk, ancillary, _flags, _addr = sock.recvmsg(1 << 16, _socket.CMSG_SPACE(16))
            for level, kind, payload in ancillary:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    fds.extend(int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4))
            if not chunk:
                # The invoker let it go (shutdown) before giving it a function.
                os._exit(0)
            data += chunk

    try:
        receive(4)
        length = int.from_bytes(data[:4], "big")
        receive(4 + length)
        spec = json.loads(data[4 : 4 + length])
        env = dict(spec["env"])
        if not spec.get("exec"):
            # Exactly the function's variables afterwards; only those that differ
            # are written (the platform's, the same in both, are most: clearing
            # and setting all was ~130 µs). An exec'd program gets them from
            # execve instead, and this process none of the work.
            for name in [name for name in os.environ if name not in env]:
                del os.environ[name]
            for name, value in env.items():
                if os.environ.get(name) != value:
                    os.environ[name] = value
        limit = int(spec["memory_limit"])
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        # Then the layer: one byte, "L", with its descriptor (and the Runtime API
        # connection's, unless it execs another program).
        receive(4 + length + 1)
        expected = 1 if spec.get("exec") else 2
        if len(fds) != expected or data[4 + length :] != b"L":
            raise ValueError(f"expected {expected} descriptors and two messages, got {len(fds)} and {len(data)} bytes")
        if syscall(_SYS_LANDLOCK_RESTRICT_SELF, fds[0], 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
        os.close(fds[0])
        sock.detach()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, control_fd)
        os.close(null)
        if spec.get("exec"):
            # Another runtime's instance (a native bootstrap, Node): its program
            # replaces this interpreter, inside the same sandbox and layers.
            argv = spec["exec"]
            os.execve(argv[0], argv, env)
        runtime_api = _socket.socket(fileno=fds[1])
        runtime_api.settimeout(None)
    except BaseException as e:  # noqa: BLE001 - whatever it was, no function code runs
        sys.stderr.write(f"bootstrap: could not become the function's instance: {e!r}\n")
        os._exit(70)
    # What a fresh interpreter would have taken from PYTHONPATH: after the
    # script's dir (which load_handler replaces with the task root).
    sys.path[1:1] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    _read_platform_env()
    return runtime_api


if __name__ == "__main__":
    main(_await_function() if sys.argv[1:] == ["--prestarted"] else None)
