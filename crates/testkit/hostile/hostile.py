"""A hostile function: tries to leave its sandbox in every way issue 15 lists.

The event names the targets (paths, pids, ports). Each attempt reports whether it
was blocked; the suite in `testkit::hostile` asserts that all were, and that the
function's legitimate calls through the gateway with its own role still work.
"""
import ctypes
import http.client
import json
import os
import socket
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)


def check(rc):
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def connect(port, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=2)
    s.close()
    return f"connected to {host}:{port}"


def try_all(targets):
    results = {}

    def attempt(name, fn):
        try:
            results[name] = {"blocked": False, "detail": str(fn())[:300]}
        except BaseException as e:  # noqa: BLE001 - every failure counts as blocked
            results[name] = {"blocked": True, "detail": repr(e)[:300]}

    invoker = targets["invoker_pid"]
    attempt("read_credentials", lambda: open(targets["credentials"]).read())
    attempt("list_data_dir", lambda: os.listdir(targets["data_dir"]))
    attempt("read_invoker_environ", lambda: open(f"/proc/{invoker}/environ", "rb").read())
    attempt("read_invoker_cmdline", lambda: open(f"/proc/{invoker}/cmdline", "rb").read())
    attempt("list_proc", lambda: [p for p in os.listdir("/proc") if p.isdigit()][:50])
    if targets.get("victim_pid"):
        attempt("read_sibling_environ", lambda: open(f"/proc/{targets['victim_pid']}/environ", "rb").read())
        attempt("signal_sibling", lambda: os.kill(targets["victim_pid"], 0) or "signalled")
    attempt("signal_invoker", lambda: os.kill(invoker, 0) or "signalled")
    attempt("list_code_cache", lambda: os.listdir(targets["code_cache"]))
    attempt("read_victim_code", lambda: open(targets["victim_code_file"]).read())
    attempt("modify_victim_code", lambda: open(targets["victim_code_file"], "a").write("\n# owned\n"))
    attempt("modify_own_code", lambda: open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "hostile.py"), "a").write("\n"))
    attempt("modify_runtime_bootstrap", lambda: open(targets["runtime_bootstrap"], "a").write("\n# owned\n"))
    attempt("read_runtime_of_other_language", lambda: open(targets["node_bootstrap"]).read())
    attempt("postgres_tcp", lambda: connect(targets["postgres_port"]))
    attempt("postgres_unix_socket", lambda: socket.socket(socket.AF_UNIX).connect(targets["postgres_socket"]))
    attempt("redis_tcp", lambda: connect(targets["redis_port"]))
    for name, port in targets["service_ports"].items():
        attempt(f"service_port_{name}", lambda port=port: connect(port))
    attempt("unlisted_port", lambda: connect(targets["unlisted_port"]))
    if targets.get("victim_runtime_api"):
        host, port = targets["victim_runtime_api"].split(":")

        def take_invocation():
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
            conn.request("GET", "/2018-06-01/runtime/invocation/next")
            return conn.getresponse().read()

        attempt("other_runtime_api", take_invocation)
    attempt("read_shadow", lambda: open("/etc/shadow").read())
    attempt("read_root_home", lambda: os.listdir("/root"))
    attempt("write_outside_scratch", lambda: open("/var/tmp/minicloud-escape", "w").write("x"))

    def run_as_root():
        if os.getuid() == 0 or os.geteuid() == 0:
            return "running as root"
        os.setuid(0)
        return "became root"

    attempt("root", run_as_root)
    attempt("ptrace_invoker", lambda: check(libc.ptrace(16, invoker, None, None)))
    attempt("mount_tmpfs", lambda: check(libc.mount(b"tmpfs", os.environ["TMPDIR"].encode(), b"tmpfs", 0, None)))
    attempt("unshare_user_namespace", lambda: check(libc.unshare(0x10000000)))
    attempt("setsid", lambda: os.setsid())

    def scratch():
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(os.path.join(os.environ["TMPDIR"], "fill"), "wb") as f:
            while written < targets["scratch_fill_mb"] << 20:
                f.write(chunk)
                f.flush()
                written += len(chunk)
        return f"wrote {written >> 20} MiB"

    attempt("fill_scratch", scratch)
    try:
        os.remove(os.path.join(os.environ["TMPDIR"], "fill"))
    except OSError:
        pass

    def fork_bomb():
        children = []
        try:
            for _ in range(targets["fork_count"]):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
            return f"forked {len(children)}"
        finally:
            for pid in children:
                os.kill(pid, 9)
                os.waitpid(pid, 0)

    attempt("fork_beyond_pids_limit", fork_bomb)
    return results


def legit_calls(targets):
    """The function's own role still works through the gateway."""
    url = os.environ["MINICLOUD_URL"].removeprefix("http://")
    host, port = url.split(":")
    token = os.environ["MINICLOUD_TOKEN"]
    statuses = {}
    for name, path in targets["legit_paths"].items():
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", path, headers={"authorization": f"Bearer {token}"})
        statuses[name] = conn.getresponse().status
    return statuses


def escape(targets):
    """A child that tries to leave the process group, then outlives the timeout."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
        except OSError:
            pass
        os.execv("/bin/sleep", ["sleep", targets["marker"]])
    time.sleep(60)


def handler(event, context):
    mode = event.get("mode")
    if mode == "whoami":
        return {
            "pid": os.getpid(),
            "uid": os.getuid(),
            "runtime_api": os.environ["AWS_LAMBDA_RUNTIME_API"],
            "task_root": os.environ["LAMBDA_TASK_ROOT"],
            # A pre-started interpreter (crates/invoker/src/prestart.rs) or a fresh one.
            "prestarted": "--prestarted" in sys.argv,
            "environ": sorted(os.environ),
            "secret": os.environ.get("SECRET"),
        }
    if mode == "sleep":
        time.sleep(event["seconds"])
        return {"slept": event["seconds"]}
    if mode == "escape":
        return escape(event["targets"])
    targets = event["targets"]
    return {"attempts": try_all(targets), "legit": legit_calls(targets), "uid": os.getuid()}
