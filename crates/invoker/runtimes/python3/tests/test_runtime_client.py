"""The Python bootstrap's own HTTP/1.1 client against a scripted Runtime API.

Run by `cargo test -p minicloud-invoker` (src/lib.rs, python_runtime_client);
standalone: `python3 -m unittest discover crates/invoker/runtimes/python3/tests`.
"""

import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bootstrap  # noqa: E402


class ScriptedServer:
    """Accepts connections and answers each request with the next scripted bytes;
    `None` closes the connection instead of answering, `(bytes, CLOSE)` answers and
    then closes. Records what it received."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _read_request(self, conn, buffered):
        while b"\r\n\r\n" not in buffered:
            data = conn.recv(65536)
            if not data:
                return None, b""
            buffered += data
        head, _, rest = buffered.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += conn.recv(65536)
        return head + b"\r\n\r\n" + rest[:length], rest[length:]

    def _serve(self):
        while self.answers:
            conn, _ = self.listener.accept()
            self.connections += 1
            buffered = b""
            while self.answers:
                request, buffered = self._read_request(conn, buffered)
                if request is None:
                    break
                self.requests.append(request)
                answer = self.answers.pop(0)
                if answer is None:
                    break
                if isinstance(answer, tuple):
                    conn.sendall(answer[0])
                    break
                conn.sendall(answer)
            conn.close()


CLOSE = "close"
OK_HELLO = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
            b"Lambda-Runtime-Aws-Request-Id: req-1\r\n\r\nhello")
ACCEPTED = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"


class RuntimeClientTest(unittest.TestCase):
    def test_answers_with_a_length_or_chunked_share_one_connection(self):
        server = ScriptedServer([
            OK_HELLO,
            ACCEPTED,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
        ])
        client = bootstrap.RuntimeClient(server.address)
        status, response, body = client.request("GET", "/next")
        self.assertEqual((status, body), (200, b"hello"))
        self.assertEqual(response.getheader("lambda-runtime-aws-request-id"), "req-1")
        self.assertEqual(response.getheader("Missing", "x"), "x")
        status, _, body = client.request(
            "POST", "/req-1/response", b'{"a": 1}', {"Content-Type": "application/json"})
        self.assertEqual((status, body), (202, b""))
        status, _, body = client.request("GET", "/next")
        self.assertEqual((status, body), (200, b"abcde"))
        self.assertEqual(server.connections, 1)
        post = server.requests[1]
        self.assertTrue(post.startswith(b"POST /req-1/response HTTP/1.1\r\n"), post)
        self.assertIn(b"\r\nContent-Length: 8\r\n", post)
        self.assertTrue(post.endswith(b'\r\n\r\n{"a": 1}'), post)

    def test_a_large_body_and_connection_close(self):
        big = b"x" * 6_000_000
        server = ScriptedServer([
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % len(big) + big,
            (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", CLOSE),
            OK_HELLO,
        ])
        client = bootstrap.RuntimeClient(server.address)
        _, _, body = client.request("GET", "/next")
        self.assertEqual(body, big)
        self.assertIsNone(client.sock)
        # No length: the body runs to the end of the connection.
        _, _, body = client.request("GET", "/next")
        self.assertEqual(body, b"until the end")
        self.assertEqual(client.request("GET", "/next")[2], b"hello")
        self.assertEqual(server.connections, 3)

    def test_a_kept_connection_the_server_closed_is_retried_once(self):
        server = ScriptedServer([ACCEPTED, None, OK_HELLO])
        client = bootstrap.RuntimeClient(server.address)
        self.assertEqual(client.request("GET", "/next")[0], 202)
        # The server drops the kept connection when the next request arrives.
        self.assertEqual(client.request("GET", "/next")[2], b"hello")
        self.assertEqual(server.connections, 2)

    def test_malformed_answers_are_errors(self):
        for answer in [
            b"SPDY/3 200 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000,
        ]:
            with self.subTest(answer=answer[:40]):
                server = ScriptedServer([answer])
                client = bootstrap.RuntimeClient(server.address)
                with self.assertRaises((bootstrap.RuntimeAPIError, ValueError, OSError)):
                    client.request("GET", "/next")
                self.assertIsNone(client.sock)

    def test_a_hostile_request_id_never_reaches_the_wire(self):
        server = ScriptedServer([OK_HELLO])
        client = bootstrap.RuntimeClient(server.address)
        for path in ["/a b/response", "/a\r\nX-Injected: 1/response", "/a\x00/response",
                     "/\u00e9/response"]:
            with self.subTest(path=path):
                with self.assertRaises(bootstrap.RuntimeAPIError):
                    client.request("POST", path, b"{}")
        self.assertEqual(server.requests, [])

    def test_ipv6_addresses(self):
        client = bootstrap.RuntimeClient("[::1]:9001")
        self.assertEqual(client.address, ("::1", 9001))
        self.assertEqual(client.family, socket.AF_INET6)

    def test_a_handed_connection_is_used_without_connecting(self):
        # A pre-started interpreter gets a connection the invoker made; the address
        # is only for a reconnect (here a closed port: connecting would fail).
        server = ScriptedServer([OK_HELLO, ACCEPTED])
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % closed.getsockname()[1]
        closed.close()
        handed = socket.create_connection(server.listener.getsockname())
        client = bootstrap.RuntimeClient(address, handed)
        self.assertEqual(client.request("GET", "/next")[2], b"hello")
        self.assertEqual(client.request("POST", "/r", b"{}")[0], 202)
        self.assertEqual(server.connections, 1)


class PrestartedTest(unittest.TestCase):
    """A pre-started interpreter (`--prestarted`) handed a message it does not
    expect exits before any function code runs."""

    def run_prestarted(self, spec, descriptors, layer_message=b"L"):
        import json
        import subprocess
        import tempfile

        task_root = tempfile.mkdtemp()
        marker = os.path.join(task_root, "imported")
        with open(os.path.join(task_root, "app.py"), "w") as f:
            f.write(f"open({marker!r}, 'w').close()\ndef handler(event, context):\n    return event\n")
        ours, theirs = socket.socketpair()
        script = os.path.join(os.path.dirname(__file__), "..", "bootstrap.py")
        process = subprocess.Popen([sys.executable, "-u", script, "--prestarted"],
                                   stdin=theirs, stderr=subprocess.PIPE)
        theirs.close()
        self.assertEqual(ours.recv(1), b"R")
        env = [["_HANDLER", "app.handler"], ["LAMBDA_TASK_ROOT", task_root],
               ["AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9"]]
        body = json.dumps(dict(spec, env=env, memory_limit=1 << 30)).encode()
        ours.sendall(len(body).to_bytes(4, "big") + body)
        ours.sendmsg([layer_message],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                       b"".join(fd.to_bytes(4, sys.byteorder) for fd in descriptors))])
        _, stderr = process.communicate(timeout=30)
        ours.close()
        return process.returncode, stderr, os.path.exists(marker)

    def test_the_wrong_descriptors_run_no_function_code(self):
        r, w = os.pipe()
        try:
            for spec, descriptors, layer_message in [
                ({"exec": None}, [r], b"L"),  # no Runtime API connection
                ({"exec": None}, [r, w, r], b"L"),
                ({"exec": ["/bin/true"]}, [r, w], b"L"),  # an exec'd program gets none
                ({"exec": None}, [r, w], b"LL"),  # more than the layer's message
            ]:
                with self.subTest(spec=spec, descriptors=len(descriptors), layer=layer_message):
                    code, stderr, imported = self.run_prestarted(spec, descriptors, layer_message)
                    self.assertEqual(code, 70, stderr)
                    self.assertIn(b"could not become the function's instance", stderr)
                    # Refused for what it was handed, before any restriction.
                    self.assertIn(b"descriptors and two messages", stderr)
                    self.assertFalse(imported)
        finally:
            os.close(r)
            os.close(w)

    def start_prestarted(self, scratch, waiting_env):
        """A `--prestarted` interpreter that may restrict itself without
        CAP_SYS_ADMIN, and a real Landlock ruleset to restrict it with: one that
        handles only making Unix sockets (1 << 8), which nothing here does."""
        import ctypes
        import subprocess

        libc = ctypes.CDLL(None, use_errno=True)
        handled = ctypes.c_uint64(1 << 8)
        ruleset = libc.syscall(444, ctypes.byref(handled), ctypes.sizeof(handled), 0)
        if ruleset < 0:
            self.skipTest("no Landlock on this kernel")
        self.addCleanup(os.close, ruleset)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        script = os.path.join(os.path.dirname(__file__), "..", "bootstrap.py")
        process = subprocess.Popen(
            [sys.executable, "-u", script, "--prestarted"], stdin=theirs,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(waiting_env, TMPDIR=scratch, HOME=scratch),
            # landlock_restrict_self needs no_new_privs (PR_SET_NO_NEW_PRIVS = 38)
            # without CAP_SYS_ADMIN; the invoker's sandbox sets it.
            preexec_fn=lambda: libc.prctl(38, 1, 0, 0, 0))
        theirs.close()
        self.assertEqual(ours.recv(1), b"R")
        return process, ours, ruleset

    def send_function(self, ours, spec, descriptors):
        import json

        body = json.dumps(dict(spec, memory_limit=1 << 34)).encode()
        ours.sendall(len(body).to_bytes(4, "big") + body)
        ours.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               b"".join(fd.to_bytes(4, sys.byteorder) for fd in descriptors))])

    WAITING_ENV = {"PATH": os.environ["PATH"], "SAME": "kept",
                   "LEFTOVER": "the waiting interpreter's only"}

    def test_a_python_instance_sees_exactly_its_functions_environment(self):
        """Variables only the waiting interpreter had go, changed ones change, new
        ones come: the handler's os.environ is the function's alone."""
        import json
        import tempfile

        scratch, task_root = tempfile.mkdtemp(), tempfile.mkdtemp()
        with open(os.path.join(task_root, "app.py"), "w") as f:
            f.write("import os\ndef handler(event, context):\n    return dict(os.environ)\n")
        server = ScriptedServer([
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nLambda-Runtime-Aws-Request-Id: r1\r\n\r\n{}",
            ACCEPTED,
        ])
        self.addCleanup(server.listener.close)
        process, ours, ruleset = self.start_prestarted(scratch, self.WAITING_ENV)
        env = {"PATH": os.environ["PATH"], "SAME": "kept", "HOME": "/elsewhere",
               "NEW": "the function's", "_HANDLER": "app.handler",
               "LAMBDA_TASK_ROOT": task_root, "AWS_LAMBDA_RUNTIME_API": server.address}
        connection = socket.create_connection(server.listener.getsockname())
        try:
            self.send_function(ours, {"env": sorted(env.items()), "exec": None},
                               [ruleset, connection.fileno()])
            connection.close()
            import time

            deadline = time.monotonic() + 30
            while len(server.requests) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            process.kill()
            _, stderr = process.communicate(timeout=30)
        self.assertEqual(len(server.requests), 2, stderr)
        posted = server.requests[1]
        self.assertTrue(posted.startswith(b"POST /2018-06-01/runtime/invocation/r1/response"), posted[:200])
        self.assertEqual(json.loads(posted.partition(b"\r\n\r\n")[2]), env)
        # The import warm-up left nothing in the scratch dir.
        self.assertEqual(os.listdir(scratch), [])

    def test_an_exec_d_program_gets_exactly_its_functions_environment(self):
        """The same for a program exec'd from it (native, Node): `env` prints it."""
        import tempfile

        scratch = tempfile.mkdtemp()
        process, ours, ruleset = self.start_prestarted(scratch, self.WAITING_ENV)
        env = [["PATH", os.environ["PATH"]], ["SAME", "kept"], ["HOME", "/elsewhere"],
               ["NEW", "the function's"]]
        self.send_function(ours, {"env": env, "exec": ["/usr/bin/env"]}, [ruleset])
        out, err = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0, err)
        self.assertEqual(sorted(out.decode().splitlines()), sorted(f"{k}={v}" for k, v in env))


if __name__ == "__main__":
    unittest.main()
