"""What the client suite runs against, and the server process it starts.

Environment:
  INHAUS_BIN                the server binary (default ~/.cache/inhaus/target/release/inhaus)
  INHAUS_TEST_MODELS        models the server loads, comma- or space-separated
                            (default "smollm2-135m-instruct,all-minilm-l6-v2"); tests of a model not
                            listed are skipped
  INHAUS_TEST_CHAT_MODEL    the chat model the tests use (default smollm2-135m-instruct)
  INHAUS_TEST_EMBED_MODEL   the embedding model the tests use (default all-minilm-l6-v2)
  INHAUS_TEST_SERVER_ARGS   more `inhaus serve` arguments (default "--kv-cache-memory 64MiB")
  INHAUS_TEST_START_TIMEOUT seconds to wait for the listening line (default 120)
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path


def _list(value: str) -> list[str]:
    return [m for m in re.split(r"[,\s]+", value) if m]


BIN = os.environ.get("INHAUS_BIN") or str(Path.home() / ".cache/inhaus/target/release/inhaus")
CHAT_MODEL = os.environ.get("INHAUS_TEST_CHAT_MODEL") or "smollm2-135m-instruct"
EMBED_MODEL = os.environ.get("INHAUS_TEST_EMBED_MODEL") or "all-minilm-l6-v2"
MODELS = _list(os.environ.get("INHAUS_TEST_MODELS") or f"{CHAT_MODEL},{EMBED_MODEL}")
SERVER_ARGS = shlex.split(os.environ.get("INHAUS_TEST_SERVER_ARGS", "--kv-cache-memory 64MiB"))
START_TIMEOUT_S = float(os.environ.get("INHAUS_TEST_START_TIMEOUT") or 120)
API_KEY = "sk-test"
# The function tool the tool tests declare, in the shape of chat's `function` (the Responses API takes
# it with "type": "function" beside its fields, the Messages API with `input_schema`).
WEATHER_FUNCTION = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# A second key of the auth server: what one key stores, the other must not see.
OTHER_API_KEY = "sk-other"

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child before exec: on Linux, have the kernel stop the server (SIGTERM) when the test
    process dies, so a killed test run leaves no server behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """`inhaus serve` on a free loopback port (port 0), as a child process.

    The listening line (`inhaus: listening on http://ADDR`) is looked for on stdout and stderr alike;
    both are drained into a ring of recent lines so the server never blocks on a full pipe and a
    failure can show what it said."""

    def __init__(
        self, models: list[str], extra_args: list[str] | None = None, name: str = "server"
    ):
        self.name = name
        self.args = [BIN, "serve", "--host", "127.0.0.1", "--port", "0"]
        for m in models:
            self.args += ["--model", m]
        self.args += SERVER_ARGS + list(extra_args or [])
        self.lines: collections.deque[str] = collections.deque(maxlen=300)
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._ready = threading.Event()

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def _drain(self) -> None:
        assert self.proc and self.proc.stdout
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if not self._ready.is_set():
                m = _LISTENING.search(line)
                if m:
                    self.url = m.group(1).rstrip("/")
                    self._ready.set()
        self._ready.set()  # exited: wake the waiter

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(list(self.lines)[-n:])

    def start(self) -> "Server":
        if not os.path.isfile(BIN):
            raise ServerError(f"server binary not found: {BIN} (set INHAUS_BIN)")
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_BACKTRACE": "0"},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        threading.Thread(target=self._drain, name=f"{self.name}-log", daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.url:
            code = self.proc.poll()
            if code is None and self._ready.is_set():  # output closed: it is exiting
                try:
                    code = self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            self.stop()
            state = (
                f"exited with {code}" if code is not None else f"silent for {START_TIMEOUT_S:.0f} s"
            )
            raise ServerError(
                f"{self.name} did not start ({state}): {shlex.join(self.args)}\n{self.log_tail()}"
            )
        return self

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
