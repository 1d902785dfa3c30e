"""Plain HTTP for the conformance tests: the standard library only, no proxies, every status returned
(never raised), server-sent events split into their `data:` payloads."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TIMEOUT_S = 120


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    _json: Any = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        if self._json is None:
            try:
                self._json = json.loads(self.body)
            except ValueError as e:
                raise AssertionError(
                    f"HTTP {self.status} body is not JSON ({e}): {self.body[:500]!r}"
                ) from None
        return self._json

    def events(self) -> list[str]:
        """The `data:` payloads of an SSE body, in order."""
        out = []
        for line in self.text.splitlines():
            if line.startswith("data:"):
                out.append(line[5:].removeprefix(" "))
        return out

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.body[:1000]!r}"


def request(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> Response:
    """One request. `body` is sent as JSON; `raw` as the bytes given (for malformed input)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Accept": "*/*"}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def get(url: str, **kw) -> Response:
    return request("GET", url, **kw)


def post(url: str, body: Any = None, **kw) -> Response:
    return request("POST", url, body, **kw)
