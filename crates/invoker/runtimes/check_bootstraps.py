#!/usr/bin/env python3
"""Checks the Python and Node.js bootstraps against a fake Lambda Runtime API.

Standalone, stdlib only:  python3 crates/invoker/runtimes/check_bootstraps.py

For each runtime it writes handler files into a temp dir, runs the bootstrap as
the invoker would (cwd = a per-instance dir, not the code dir), serves it
invocations from a threaded http.server and checks what it posts back. It ends
with cold-start times (spawn -> first GET invocation/next). Exits non-zero if
any check fails.
"""

import http.server
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
BOOTSTRAPS = {
    "python": os.path.join(HERE, "python3", "bootstrap.py"),
    "node": os.path.join(HERE, "nodejs", "bootstrap.js"),
}
NODE = shutil.which("node")
RUNTIME = "/2018-06-01/runtime"
TIMEOUT = 15.0  # seconds to wait for anything the bootstrap should do
FUNCTION_ARN = "arn:aws:lambda:local:000000000000:function:check-fn"


# --- The fake Runtime API ----------------------------------------------------


class FakeRuntimeAPI:
    """A Runtime API serving queued invocations and recording what comes back.

    drop_after_post closes the connection after answering each POST without
    announcing it (no "Connection: close"), like a server reaping idle
    keep-alive sockets, so the bootstrap's next request hits a dead socket.
    """

    def __init__(self, drop_after_post=False, chunked=False):
        self.invocations = queue.Queue()
        self.results = {}  # request id -> {"kind", "headers", "body", "at"}
        self.init_error = None
        self.next_calls = 0
        self.first_next_at = None
        self.connections = 0
        self.cond = threading.Condition()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real API
            # Headers and body go out in separate writes; with Nagle on, the
            # client's delayed ACK would add ~40 ms to every round trip.
            disable_nagle_algorithm = True

            def setup(self):
                super().setup()
                with api.cond:
                    api.connections += 1

            def log_message(self, *args):
                pass

            def reply(self, status, body=b'{"status":"OK"}', headers=()):
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                if not api.chunked:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                # Two chunks (the second empty when the body is one byte), a
                # chunk extension and a trailer: what a streaming server may send.
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                half = max(1, len(body) // 2)
                for part in (body[:half], body[half:]):
                    if part:
                        self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")

            def do_GET(self):
                if self.path != RUNTIME + "/invocation/next":
                    return self.reply(404, b'{"errorMessage":"no such path"}')
                with api.cond:
                    api.next_calls += 1
                    if api.first_next_at is None:
                        api.first_next_at = time.perf_counter()
                    api.cond.notify_all()
                invocation = api.invocations.get()  # the long poll
                if invocation is None:  # shutting down
                    self.close_connection = True
                    return
                request_id, body, headers = invocation
                self.reply(200, body, headers)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                parts = self.path.split("/")
                record = {"headers": headers, "body": body, "at": time.perf_counter()}
                if self.path == RUNTIME + "/init/error":
                    with api.cond:
                        api.init_error = record
                        api.cond.notify_all()
                elif (len(parts) == 6 and self.path.startswith(RUNTIME + "/invocation/")
                      and parts[5] in ("response", "error")):
                    with api.cond:
                        api.results[parts[4]] = dict(record, kind=parts[5])
                        api.cond.notify_all()
                else:
                    return self.reply(404, b'{"errorMessage":"no such path"}')
                self.reply(202)
                if api.drop_after_post:
                    self.close_connection = True

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # Killing a bootstrap resets its connection; that is expected.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # long-poll threads may still be parked
        self.port = self.server.server_address[1]
        self.drop_after_post = drop_after_post
        self.chunked = chunked
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def invoke(self, event, raw=None, trace_id=None, client_context=None,
               identity=None, deadline_s=30.0):
        """Queue one invocation; returns (request id, time queued)."""
        request_id = str(uuid.uuid4())
        headers = [
            ("Lambda-Runtime-Aws-Request-Id", request_id),
            ("Lambda-Runtime-Deadline-Ms", str(int((time.time() + deadline_s) * 1000))),
            ("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN),
        ]
        if trace_id:
            headers.append(("Lambda-Runtime-Trace-Id", trace_id))
        if client_context is not None:
            headers.append(("Lambda-Runtime-Client-Context", json.dumps(client_context)))
        if identity is not None:
            headers.append(("Lambda-Runtime-Cognito-Identity", json.dumps(identity)))
        body = raw if raw is not None else json.dumps(event).encode()
        queued = time.perf_counter()
        self.invocations.put((request_id, body, headers))
        return request_id, queued

    def wait_result(self, request_id, timeout=TIMEOUT):
        with self.cond:
            if not self.cond.wait_for(lambda: request_id in self.results, timeout):
                raise AssertionError(f"no response/error posted for {request_id} within {timeout}s")
            return self.results[request_id]

    def wait_next_calls(self, n, timeout=TIMEOUT):
        with self.cond:
            return self.cond.wait_for(lambda: self.next_calls >= n, timeout)

    def wait_init_error(self, timeout=TIMEOUT):
        with self.cond:
            self.cond.wait_for(lambda: self.init_error is not None, timeout)
            return self.init_error

    def close(self):
        for _ in range(8):  # release any parked long polls
            self.invocations.put(None)
        self.server.shutdown()
        self.server.server_close()


# --- A bootstrap process -----------------------------------------------------


class Instance:
    """One bootstrap process, with its stdout/stderr collected as it arrives."""

    def __init__(self, runtime, handler, code_dir, api_address, work_dir):
        env = dict(os.environ)
        env.pop("_X_AMZN_TRACE_ID", None)
        env.update({
            "AWS_LAMBDA_RUNTIME_API": api_address,
            "_HANDLER": handler,
            "LAMBDA_TASK_ROOT": code_dir,
            "AWS_LAMBDA_FUNCTION_NAME": "check-fn",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/check-fn",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]abc",
            "AWS_REGION": "local",
            "PYTHONUNBUFFERED": "1",
        })
        if runtime == "python":
            cmd = [sys.executable, "-u", BOOTSTRAPS["python"]]
        else:
            cmd = [NODE, BOOTSTRAPS["node"]]
        self.cwd = tempfile.mkdtemp(prefix="instance-", dir=work_dir)
        self.output = {"stdout": [], "stderr": []}
        self.lock = threading.Lock()
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name in ("stdout", "stderr"):
            threading.Thread(target=self._drain, args=(name,), daemon=True).start()

    def _drain(self, name):
        for line in getattr(self.proc, name):
            with self.lock:
                self.output[name].append(line.decode("utf-8", "replace"))

    def text(self, name="stdout"):
        with self.lock:
            return "".join(self.output[name])

    def wait_output(self, needle, name="stdout", timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text(name):
                return True
            time.sleep(0.01)
        return False

    def wait_exit(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# --- Handlers under test -----------------------------------------------------

PY_HANDLERS = {
    "handlers.py": '''
        import os

        def echo(event, context):
            return event

        def hello(event, context):
            print("hello from python", event["name"])
            return {"greeting": "hello " + event["name"], "n": 42}

        def fail(event, context):
            if event.get("fail"):
                raise ValueError("boom: " + event["fail"])
            return "recovered"

        def ctx(event, context):
            identity, cc = context.identity, context.client_context
            return {
                "functionName": context.function_name,
                "functionVersion": context.function_version,
                "invokedFunctionArn": context.invoked_function_arn,
                "memoryLimitInMB": context.memory_limit_in_mb,
                "awsRequestId": context.aws_request_id,
                "logGroupName": context.log_group_name,
                "logStreamName": context.log_stream_name,
                "remaining": context.get_remaining_time_in_millis(),
                "traceEnv": os.environ.get("_X_AMZN_TRACE_ID"),
                "identityId": identity.cognito_identity_id if identity else None,
                "clientCustom": cc.custom if cc else None,
                "clientApp": cc.client.app_title if cc and cc.client else None,
                "cwd": os.getcwd(),
            }

        def none(event, context):
            return None

        def unserialisable(event, context):
            return {"a set": {1, 2}}

        not_callable = 42
    ''',
    "sub/mod.py": '''
        def handler(event, context):
            return {"where": "sub/mod"}
    ''',
    "broken.py": '''
        def handler(event, context)
            return 1
    ''',
}

NODE_HANDLERS = {
    "handlers.js": '''
        exports.echo = async (event) => event;

        exports.hello = async (event) => {
          console.log('hello from node', event.name);
          return { greeting: 'hello ' + event.name, n: 42 };
        };

        exports.fail = async (event) => {
          if (event.fail) throw new TypeError('boom: ' + event.fail);
          return 'recovered';
        };

        exports.ctx = async (event, context) => ({
          functionName: context.functionName,
          functionVersion: context.functionVersion,
          invokedFunctionArn: context.invokedFunctionArn,
          memoryLimitInMB: context.memoryLimitInMB,
          awsRequestId: context.awsRequestId,
          logGroupName: context.logGroupName,
          logStreamName: context.logStreamName,
          remaining: context.getRemainingTimeInMillis(),
          traceEnv: process.env._X_AMZN_TRACE_ID ?? null,
          identityId: context.identity ? context.identity.cognitoIdentityId : null,
          clientCustom: context.clientContext ? context.clientContext.custom : null,
          clientApp: context.clientContext ? context.clientContext.client.app_title : null,
          callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
          cwd: process.cwd(),
        });

        exports.none = async () => undefined;

        exports.unserialisable = async () => ({ big: 10n });

        // Plain synchronous handler: its return value is the result.
        exports.sync = (event) => ({ sync: true, event });

        // Callback style: by default the result waits for the timer to finish.
        exports.callback = (event, context, callback) => {
          setTimeout(() => console.log('timer fired'), 300);
          callback(null, { via: 'callback', event });
        };

        // ... unless the handler opts out.
        exports.callbackNoWait = (event, context, callback) => {
          context.callbackWaitsForEmptyEventLoop = false;
          setTimeout(() => {}, 3000);
          callback(null, 'no wait');
        };

        exports.callbackError = (event, context, callback) => {
          setImmediate(() => callback(new RangeError('callback failed')));
        };

        // Throws outside the handler's call stack: reported, then the process exits.
        exports.asyncThrow = (event, context, callback) => {
          setTimeout(() => { throw new SyntaxError('async kaboom'); }, 10);
        };

        exports.notFunction = 42;
    ''',
    "sub/mod.js": '''
        exports.handler = async () => ({ where: 'sub/mod' });
    ''',
    "esm.mjs": '''
        export const handler = async (event) => ({ esm: true, event });
    ''',
    "tla.mjs": '''
        globalThis.tlaEvaluations = (globalThis.tlaEvaluations || 0) + 1;
        const ready = await Promise.resolve('awaited');
        export const handler = async (event) => ({ ready, evaluations: globalThis.tlaEvaluations, event });
    ''',
    "broken.js": '''
        exports.handler = async (event) => {
    ''',
}


def write_tree(root, files):
    for rel, source in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(source).lstrip())


# --- Checks ------------------------------------------------------------------


class Checker:
    def __init__(self, work_dir):
        self.work_dir = work_dir
        self.code = {}
        for runtime, files in (("python", PY_HANDLERS), ("node", NODE_HANDLERS)):
            self.code[runtime] = os.path.join(work_dir, "code-" + runtime)
            write_tree(self.code[runtime], files)
        self.failures = []
        self.passed = 0
        self.notes = []

    def check(self, label, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{label}: {detail}")
            print(f"    FAIL {label}: {detail}")

    def start(self, runtime, handler, **api_opts):
        api = FakeRuntimeAPI(**api_opts)
        inst = Instance(runtime, handler, self.code[runtime], f"127.0.0.1:{api.port}", self.work_dir)
        return api, inst

    def scenario(self, runtime, name, handler, body, **api_opts):
        """Run body(api, inst, label) against a fresh bootstrap; always clean up."""
        label = f"{runtime}/{name}"
        print(f"  {label}")
        api, inst = self.start(runtime, handler, **api_opts)
        try:
            body(api, inst, label)
        except Exception as e:
            self.check(label, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        finally:
            inst.stop()
            api.close()
        if any(label in f for f in self.failures):
            print(textwrap.indent(f"stdout: {inst.text('stdout')}\nstderr: {inst.text('stderr')}", "      | "))

    def expect_response(self, api, request_id, label):
        result = api.wait_result(request_id)
        self.check(label + " posts a response", result["kind"] == "response",
                   f"got {result['kind']}: {result['body'][:500]!r}")
        return json.loads(result["body"]) if result["kind"] == "response" else None

    def expect_error(self, api, request_id, label, error_type, message_part):
        result = api.wait_result(request_id)
        self.check(label + " posts an error", result["kind"] == "error",
                   f"got {result['kind']}: {result['body'][:500]!r}")
        if result["kind"] != "error":
            return None
        body = json.loads(result["body"])
        self.check(label + " errorType", body.get("errorType") == error_type, repr(body))
        self.check(label + " errorMessage", message_part in str(body.get("errorMessage")), repr(body))
        trace = body.get("stackTrace")
        self.check(label + " stackTrace is a list of strings",
                   isinstance(trace, list) and all(isinstance(x, str) for x in trace), repr(body))
        self.check(label + " error-type header",
                   result["headers"].get("lambda-runtime-function-error-type") == error_type,
                   repr(result["headers"]))
        return body

    # Common to both runtimes.

    def warm_echo(self, runtime):
        def body(api, inst, label):
            events = [
                {"a": 1, "nested": {"x": [1, 2, 3]}},
                "just a string",
                None,
                [1, "two", 3.5, True],
                {"unicode": "h\u00e9llo \u2603 \U0001F600"},
                {"big": "x" * 1_000_000},
            ]
            latencies = []
            for i, event in enumerate(events):
                rid, queued = api.invoke(event)
                result = api.wait_result(rid)
                latencies.append(result["at"] - queued)
                self.check(f"{label} #{i} response", result["kind"] == "response", repr(result["body"][:300]))
                self.check(f"{label} #{i} round-trips", json.loads(result["body"]) == event,
                           repr(result["body"][:300]))
                if event is None:
                    self.check(label + " null event -> null", result["body"] == b"null", repr(result["body"]))
            self.check(label + " one process served all (warm)", inst.proc.poll() is None
                       and api.wait_next_calls(len(events) + 1), f"next calls {api.next_calls}")
            self.check(label + " one keep-alive connection", api.connections == 1,
                       f"{api.connections} connections")
            small = sorted(latencies[:-1])
            self.notes.append(f"{runtime}: warm invoke round trip (small event) median "
                              f"{statistics.median(small) * 1000:.2f} ms")
        self.scenario(runtime, "warm echo: object, string, null, array, unicode, 1 MB", "handlers.echo", body)

    def print_and_dict(self, runtime):
        def body(api, inst, label):
            rid, _ = api.invoke({"name": "world"})
            result = self.expect_response(api, rid, label)
            self.check(label + " returns the dict", result == {"greeting": "hello world", "n": 42}, repr(result))
            # Checked while the process is still alive: output must not sit in a buffer.
            self.check(label + " prints promptly", inst.wait_output(f"hello from {runtime} world", timeout=2),
                       repr(inst.text()))
        self.scenario(runtime, "print + dict", "handlers.hello", body)

    def error_then_recover(self, runtime):
        error_type = {"python": "ValueError", "node": "TypeError"}[runtime]

        def body(api, inst, label):
            rid, _ = api.invoke({"fail": "kaput"})
            err = self.expect_error(api, rid, label, error_type, "boom: kaput")
            if err:
                self.check(label + " trace names the handler file",
                           any("handlers." in line for line in err["stackTrace"]), repr(err["stackTrace"]))
                self.check(label + " trace hides the bootstrap",
                           runtime == "node" or not any("bootstrap.py" in l for l in err["stackTrace"]),
                           repr(err["stackTrace"]))
            rid, _ = api.invoke({})
            self.check(label + " keeps looping after an error",
                       self.expect_response(api, rid, label) == "recovered", "")
        self.scenario(runtime, "handler error, then success on the same process", "handlers.fail", body)

    def context(self, runtime):
        def body(api, inst, label):
            rid, _ = api.invoke({}, trace_id="Root=1-abc-def;Sampled=1",
                                client_context={"client": {"app_title": "app"}, "custom": {"k": "v"}, "env": {}},
                                identity={"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool-1"})
            got = self.expect_response(api, rid, label) or {}
            want = {
                "functionName": "check-fn",
                "functionVersion": "$LATEST",
                "invokedFunctionArn": FUNCTION_ARN,
                "memoryLimitInMB": 256 if runtime == "python" else "256",
                "awsRequestId": rid,
                "logGroupName": "/aws/lambda/check-fn",
                "logStreamName": "2026/01/01/[$LATEST]abc",
                "traceEnv": "Root=1-abc-def;Sampled=1",
                "identityId": "id-1",
                "clientCustom": {"k": "v"},
                "clientApp": "app",
            }
            if runtime == "node":
                want["callbackWaitsForEmptyEventLoop"] = True
            for key, value in want.items():
                self.check(f"{label} {key}", got.get(key) == value, f"got {got.get(key)!r}, want {value!r}")
            self.check(label + " 0 < remaining <= 30000", 0 < got.get("remaining", 0) <= 30000, repr(got.get("remaining")))
            self.check(label + " runs in the instance dir", got.get("cwd") == inst.cwd, repr(got.get("cwd")))
            # The next invocation has no trace id: the variable must not linger.
            rid, _ = api.invoke({})
            got = self.expect_response(api, rid, label + " (no trace)") or {}
            self.check(label + " trace env cleared", got.get("traceEnv") is None, repr(got.get("traceEnv")))
            self.check(label + " no identity header", got.get("identityId") is None and got.get("clientCustom") is None,
                       repr(got))
        self.scenario(runtime, "context + _X_AMZN_TRACE_ID", "handlers.ctx", body)

    def none_result(self, runtime):
        def body(api, inst, label):
            rid, _ = api.invoke({})
            result = api.wait_result(rid)
            self.check(label + " body is null", result["kind"] == "response" and result["body"] == b"null",
                       repr(result))
        self.scenario(runtime, "None/undefined result -> null", "handlers.none", body)

    def marshal_error(self, runtime):
        def body(api, inst, label):
            rid, _ = api.invoke({})
            self.expect_error(api, rid, label, "Runtime.MarshalError", "")
            rid, _ = api.invoke({})
            self.expect_error(api, rid, label + " (again, same process)", "Runtime.MarshalError", "")
        self.scenario(runtime, "unserialisable result", "handlers.unserialisable", body)

    def nested_path(self, runtime):
        def body(api, inst, label):
            rid, _ = api.invoke({})
            self.check(label, self.expect_response(api, rid, label) == {"where": "sub/mod"}, "")
        self.scenario(runtime, "dir/file.function handler", "sub/mod.handler", body)

    def reconnect(self, runtime):
        def body(api, inst, label):
            for i in range(3):
                rid, _ = api.invoke({"i": i})
                self.check(f"{label} #{i}", self.expect_response(api, rid, label) == {"i": i}, "")
            self.check(label + " reconnected", api.connections >= 3, f"{api.connections} connections")
        self.scenario(runtime, "server drops the keep-alive connection", "handlers.echo", body,
                      drop_after_post=True)

    def chunked(self, runtime):
        def body(api, inst, label):
            for event in ({"i": 1}, {"big": "x" * 200000}, 7):
                rid, _ = api.invoke(event)
                self.check(f"{label} {str(event)[:20]}", self.expect_response(api, rid, label) == event, "")
            self.check(label + " one connection", api.connections == 1, f"{api.connections} connections")
        self.scenario(runtime, "Runtime API answers chunked", "handlers.echo", body, chunked=True)

    def init_error(self, runtime, handler, error_type, message_part):
        def body(api, inst, label):
            code = inst.wait_exit()
            self.check(label + " exits non-zero", code not in (None, 0), f"exit code {code}")
            err = api.wait_init_error(timeout=1)
            self.check(label + " posts init/error", err is not None, "nothing posted")
            if err is None:
                return
            doc = json.loads(err["body"])
            self.check(label + " errorType", doc.get("errorType") == error_type, repr(doc))
            self.check(label + " errorMessage", message_part in doc.get("errorMessage", ""), repr(doc))
            self.check(label + " stackTrace is a list", isinstance(doc.get("stackTrace"), list), repr(doc))
            self.check(label + " error-type header",
                       err["headers"].get("lambda-runtime-function-error-type") == error_type, repr(err["headers"]))
            self.check(label + " never asks for work", api.next_calls == 0, f"{api.next_calls} next calls")
        self.scenario(runtime, f"init error: {handler}", handler, body)

    def connection_refused(self, runtime):
        label = f"{runtime}/Runtime API unreachable"
        print(f"  {label}")
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        inst = Instance(runtime, "handlers.echo", self.code[runtime], f"127.0.0.1:{port}", self.work_dir)
        try:
            code = inst.wait_exit()
            self.check(label + " exits non-zero", code not in (None, 0), f"exit code {code}")
        finally:
            inst.stop()

    # Node only.

    def node_styles(self):
        def run(name, handler, fn):
            self.scenario("node", name, handler, fn)

        def sync(api, inst, label):
            rid, _ = api.invoke({"x": 1})
            self.check(label, self.expect_response(api, rid, label) == {"sync": True, "event": {"x": 1}}, "")
        run("synchronous return value", "handlers.sync", sync)

        def callback(api, inst, label):
            for i in range(2):
                rid, queued = api.invoke({"i": i})
                got = self.expect_response(api, rid, label)
                self.check(f"{label} #{i} result", got == {"via": "callback", "event": {"i": i}}, repr(got))
                took = api.results[rid]["at"] - queued
                self.check(f"{label} #{i} waits for the event loop to drain", took >= 0.28, f"took {took:.3f}s")
            # Node writes to a pipe asynchronously: the second line may reach the
            # reader a moment after the response did.
            deadline = time.monotonic() + 2
            while inst.text().count("timer fired") < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.check(label + " timer output", inst.text().count("timer fired") == 2, repr(inst.text()))
        run("callback (waits for empty event loop)", "handlers.callback", callback)

        def no_wait(api, inst, label):
            rid, queued = api.invoke({})
            self.check(label, self.expect_response(api, rid, label) == "no wait", "")
            took = api.results[rid]["at"] - queued
            self.check(label + " does not wait for the 3 s timer", took < 2.5, f"took {took:.3f}s")
        run("callback, callbackWaitsForEmptyEventLoop = false", "handlers.callbackNoWait", no_wait)

        def cb_error(api, inst, label):
            rid, _ = api.invoke({})
            self.expect_error(api, rid, label, "RangeError", "callback failed")
            self.check(label + " keeps running", inst.proc.poll() is None and api.wait_next_calls(2), "")
        run("callback(err)", "handlers.callbackError", cb_error)

        def esm(api, inst, label):
            rid, _ = api.invoke([1])
            self.check(label, self.expect_response(api, rid, label) == {"esm": True, "event": [1]}, "")
        run("ES module (.mjs)", "esm.handler", esm)

        # Top-level await: require(esm) refuses it, import() loads it — evaluated once.
        def tla(api, inst, label):
            rid, _ = api.invoke([2])
            got = self.expect_response(api, rid, label)
            self.check(label, got == {"ready": "awaited", "evaluations": 1, "event": [2]}, repr(got))
        run("ES module with top-level await", "tla.handler", tla)

        def async_throw(api, inst, label):
            rid, _ = api.invoke({})
            self.expect_error(api, rid, label, "SyntaxError", "async kaboom")
            code = inst.wait_exit()
            self.check(label + " then exits non-zero", code not in (None, 0), f"exit code {code}")
        run("uncaught exception from a timer", "handlers.asyncThrow", async_throw)

    # Cold start.

    def cold_start(self, runtime, runs=7):
        samples = []
        for _ in range(runs):
            api, inst = self.start(runtime, "handlers.echo")
            try:
                if api.wait_next_calls(1):
                    samples.append(api.first_next_at - inst.spawned_at)
            finally:
                inst.stop()
                api.close()
        self.check(f"{runtime}/cold start measured", len(samples) == runs, f"{len(samples)}/{runs}")
        if not samples:
            return
        # For scale: the bare interpreter, spawn to exit.
        bare_cmd = [sys.executable, "-c", "pass"] if runtime == "python" else [NODE, "-e", "0"]
        bare = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(bare_cmd, check=True)
            bare.append(time.perf_counter() - t0)
        ms = lambda xs: f"median {statistics.median(xs) * 1000:.1f} ms, min {min(xs) * 1000:.1f} ms"
        self.notes.append(f"{runtime}: cold start (spawn -> first GET next) {ms(samples)}; "
                          f"bare interpreter start+exit {ms(bare)}")


def main():
    if NODE is None:
        sys.exit("node not found on PATH")
    work_dir = tempfile.mkdtemp(prefix="check-bootstraps-")
    checker = Checker(work_dir)
    try:
        for runtime in ("python", "node"):
            print(f"{runtime}:")
            checker.warm_echo(runtime)
            checker.print_and_dict(runtime)
            checker.error_then_recover(runtime)
            checker.context(runtime)
            checker.none_result(runtime)
            checker.marshal_error(runtime)
            checker.nested_path(runtime)
            checker.reconnect(runtime)
            checker.chunked(runtime)
            not_fn = "handlers.not_callable" if runtime == "python" else "handlers.notFunction"
            checker.init_error(runtime, "missing_module.handler", "Runtime.ImportModuleError", "missing_module")
            checker.init_error(runtime, "handlers.nope", "Runtime.HandlerNotFound", "nope")
            checker.init_error(runtime, not_fn, "Runtime.HandlerNotFound", not_fn.split(".")[1])
            checker.init_error(runtime, "broken.handler", "Runtime.ImportModuleError", "SyntaxError")
            checker.init_error(runtime, "nodot", "Runtime.MalformedHandlerName", "nodot")
            checker.connection_refused(runtime)
            if runtime == "node":
                checker.node_styles()
        print("cold start:")
        for runtime in ("python", "node"):
            checker.cold_start(runtime)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    print()
    for note in checker.notes:
        print(note)
    print(f"\n{checker.passed} checks passed, {len(checker.failures)} failed")
    if checker.failures:
        for failure in checker.failures:
            print("  FAIL", failure.splitlines()[0])
        sys.exit(1)


if __name__ == "__main__":
    main()
