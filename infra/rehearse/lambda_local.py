"""Lambda on loopback: the Runtime API a function binary polls, and the Invoke API a caller uses.

`LocalFunction` runs one of the workspace's real binaries with the environment its deployed
configuration names, serves it invocations through the Runtime API (next, response, error,
init/error) and hands back what it answered. `InvokeEndpoint` stands in for Lambda's Invoke API:
it records each call (who signed it, which function, the payload) and answers as an `Event` invoke
does (202), so the rehearsal can run the invoked function with exactly that payload itself.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

PREFIX = "/2018-06-01/runtime"


class FunctionFailed(Exception):
    """An invocation ended in an error, an init error or a crash; the message carries the log tail."""


@dataclass
class _Invocation:
    request_id: str
    event: bytes
    deadline_ms: int
    done: threading.Event = field(default_factory=threading.Event)
    response: bytes | None = None
    error: bytes | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LocalFunction:
    """One function: its binary under a Runtime API on 127.0.0.1, started once, invoked in turn."""

    def __init__(self, name: str, arn: str, binary: Path, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.arn = arn
        self.binary = binary
        self.env = env
        self.log = log_dir / f"{name}.log"
        self._pending: queue.Queue[_Invocation] = queue.Queue()
        self._current: dict[str, _Invocation] = {}
        self._init_error: bytes | None = None
        self._proc: subprocess.Popen | None = None
        self._server = _Server(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def runtime_api(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fn = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    return self.rfile.read(n)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return b""

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self._answer(404)
                    return
                inv = fn._pending.get()
                fn._current[inv.request_id] = inv
                self._answer(
                    200,
                    inv.event,
                    {
                        "Content-Type": "application/json",
                        "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": fn.arn,
                        "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                    },
                )

            def do_POST(self) -> None:
                body = self._body()
                if self.path == f"{PREFIX}/init/error":
                    fn._init_error = body or b"init error"
                    for inv in list(fn._current.values()):
                        inv.error = fn._init_error
                        inv.done.set()
                    self._answer(202)
                    return
                m = re.fullmatch(rf"{PREFIX}/invocation/([^/]+)/(response|error)", self.path)
                inv = fn._current.pop(m.group(1), None) if m else None
                if inv is None:
                    self._answer(404)
                    return
                if m.group(2) == "response":
                    inv.response = body
                else:
                    inv.error = body or b"error"
                inv.done.set()
                self._answer(202)

        return Handler

    def start(self) -> None:
        env = dict(self.env, AWS_LAMBDA_RUNTIME_API=self.runtime_api)
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen([str(self.binary)], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def invoke(self, event: Any, timeout_s: float = 60.0, remaining_s: float | None = None) -> Any:
        """Runs one invocation and returns its JSON answer. `remaining_s` is the time Lambda would
        give it (the function's Timeout by default), which the runtime reports as its deadline."""
        if self._proc is None:
            self.start()
        if self._init_error is not None:
            raise FunctionFailed(f"{self.name} failed to start: {self._init_error.decode(errors='replace')}\n{self.log_tail()}")
        deadline = int((time.time() + (remaining_s if remaining_s is not None else timeout_s)) * 1000)
        inv = _Invocation(str(uuid.uuid4()), json.dumps(event).encode(), deadline)
        self._pending.put(inv)
        end = time.time() + timeout_s
        while not inv.done.wait(0.1):
            if self._proc.poll() is not None:
                raise FunctionFailed(f"{self.name} exited with status {self._proc.returncode}\n{self.log_tail()}")
            if time.time() > end:
                raise FunctionFailed(f"{self.name} gave no answer within {timeout_s:.0f} s\n{self.log_tail()}")
        if inv.error is not None:
            raise FunctionFailed(f"{self.name} failed: {inv.error.decode(errors='replace')}\n{self.log_tail()}")
        return json.loads(inv.response or b"null")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._server.shutdown()


@dataclass
class Invocation:
    function: str
    invocation_type: str
    access_key: str
    payload: bytes


class InvokeEndpoint:
    """Lambda's Invoke API on 127.0.0.1: records each call, asks `authorize(access_key, function)`
    for an IAM verdict (None: allowed, else the denial's text), answers 202 like an `Event` invoke."""

    def __init__(self, authorize: Callable[[str, str], str | None]) -> None:
        self.calls: list[Invocation] = []
        self.denials: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(n)
                m = re.fullmatch(r"/2015-03-31/functions/([^/]+)/invocations(\?.*)?", self.path)
                key = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", ""))
                access_key = key.group(1) if key else ""
                if not m:
                    self._answer(404, {"Type": "User", "message": f"no route {self.path}"})
                    return
                from urllib.parse import unquote

                function = unquote(m.group(1))
                denied = authorize(access_key, function)
                if denied:
                    endpoint.denials.append(denied)
                    self._answer(403, {"Type": "User", "message": denied}, "AccessDeniedException")
                    return
                kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                endpoint.calls.append(Invocation(function, kind, access_key, payload))
                self._answer(202 if kind == "Event" else 200, None)

            def _answer(self, code: int, body: Any, error_type: str | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                if error_type:
                    self.send_header("X-Amzn-ErrorType", error_type)
                self.send_header("X-Amzn-RequestId", str(uuid.uuid4()))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
