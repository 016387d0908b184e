"""extract from a JSON API served by a real HTTP server on 127.0.0.1 (stdlib, in a thread)."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import polars as pl
import pytest

from ductwork.connectors.http import retry_after_seconds
from ductwork.core.contract import StageContext
from ductwork.errors import DataError, SourceError, UsageError
from ductwork.stages.extract import Extract, ExtractParams
from ductwork.testing import StageOutcome, run_stage

ROWS = [
    {"id": i, "carrier": c, "dep_delay": d, "day": day}
    for i, (c, d, day) in enumerate(
        [("AA", "5", "2013-01-01"), ("UA", None, "2013-01-01"), ("B6", "-3", "2013-01-02"),
         ("DL", "12", "2013-01-02"), ("AA", "0", "2013-01-03")],
        start=1,
    )
]  # fmt: skip


Reply = tuple[int, dict[str, str], Any]


class Api:
    """Routes of the test API; each records the requests it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, dict[str, str]]] = []
        self.calls: dict[str, int] = {}
        self.base = ""

    def handle(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Reply:
        self.seen.append((time.monotonic(), path, headers))
        n = self.calls[path] = self.calls.get(path, 0) + 1
        route: Callable[[dict[str, str], int, dict[str, str]], Reply] | None = getattr(
            self, "r_" + path.strip("/").replace("-", "_"), None
        )
        if route is None:
            return 404, {}, {"error": "no such route"}
        return route(query, n, headers)

    def r_rows(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        return 200, {}, {"data": ROWS}

    def r_pages(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        page, size = int(q.get("page", "1")), int(q.get("per_page", "2"))
        return 200, {}, {"data": ROWS[(page - 1) * size : page * size]}

    def r_cursor(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        start = int(q.get("after", "0"))
        chunk = ROWS[start : start + 2]
        nxt = str(start + 2) if start + 2 < len(ROWS) else None
        return 200, {}, {"data": chunk, "meta": {"next_cursor": nxt}}

    def r_links(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        p = int(q.get("p", "1"))
        nxt = f"/links?p={p + 1}" if p < 3 else None
        return 200, {}, {"items": ROWS[(p - 1) * 2 : p * 2], "links": {"next": nxt}}

    def r_link_header(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        p = int(q.get("p", "1"))
        headers = {"Link": f'<{self.base}/link-header?p={p + 1}>; rel="next"'} if p < 3 else {}
        return 200, headers, ROWS[(p - 1) * 2 : p * 2]

    def r_loop(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        return 200, {}, {"data": ROWS[:1], "next": "same"}

    def r_limited(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        if n == 1:
            return 429, {"Retry-After": "1"}, {"error": "slow down"}
        return 200, {}, {"data": ROWS}

    def r_limited_date(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        if n == 1:
            when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
            self.retry_at = when
            return 429, {"Retry-After": email.utils.format_datetime(when, usegmt=True)}, {}
        return 200, {}, {"data": ROWS}

    def r_flaky(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        return (500, {}, {"error": "oops"}) if n == 1 else (200, {}, {"data": ROWS})

    def r_down(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        return 503, {}, {"error": "maintenance"}

    def r_slow(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        time.sleep(0.6)
        return 200, {}, {"data": ROWS}

    def r_slow_once(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        if n == 1:
            time.sleep(0.6)
        return 200, {}, {"data": ROWS}

    def r_secure(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        if h.get("authorization") != "Bearer tok-123":
            # a careless API that echoes the credentials it got
            return 401, {}, {"error": f"bad credentials: {h.get('authorization')}"}
        return 200, {}, {"data": ROWS}

    def r_html(self, q: dict[str, str], n: int, h: dict[str, str]) -> Reply:
        return 200, {"Content-Type": "text/html"}, "<html>login</html>"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Api]]:
    holder: dict[str, Api] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, body = holder["api"].handle(parts.path, query, headers)
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", extra.pop("Content-Type", "application/json"))
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    holder["api"] = Api()
    holder["api"].base = base
    try:
        yield base, holder["api"]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def api(server: tuple[str, Api]) -> tuple[str, Api]:
    base, api = server
    api.seen.clear()
    api.calls.clear()
    return base, api


def run(tmp_path: Path, **params: Any) -> StageOutcome:
    return run_stage("extract", params, {}, tmp_path / "out", project_dir=tmp_path)


def ids(out: StageOutcome) -> list[int]:
    values: list[int] = out.values["main"]["id"].to_list()
    return values


# --- pagination -------------------------------------------------------------------------------


def test_single_page(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    out = run(tmp_path, url=f"{base}/rows", records_path="data")
    assert ids(out) == [1, 2, 3, 4, 5]
    assert out.metrics["pages"] == 1
    assert out.metrics["requests"] == 1


def test_page_number_pagination_stops_at_the_empty_page(
    tmp_path: Path, api: tuple[str, Api]
) -> None:
    base, _ = api
    out = run(
        tmp_path,
        url=f"{base}/pages",
        records_path="data",
        pagination={
            "type": "page",
            "param": "page",
            "start": 1,
            "size_param": "per_page",
            "size": 2,
        },
    )
    assert ids(out) == [1, 2, 3, 4, 5]
    assert out.metrics["pages"] == 4  # 2 + 2 + 1 + the empty page


def test_cursor_pagination(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    out = run(
        tmp_path,
        url=f"{base}/cursor",
        records_path="data",
        pagination={"type": "cursor", "path": "meta.next_cursor", "param": "after"},
    )
    assert ids(out) == [1, 2, 3, 4, 5]
    assert out.metrics["pages"] == 3


def test_next_link_in_the_body(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    out = run(
        tmp_path,
        url=f"{base}/links",
        records_path="items",
        pagination={"type": "next_link", "path": "links.next"},
    )
    assert ids(out) == [1, 2, 3, 4, 5]
    assert out.metrics["pages"] == 3


def test_next_link_in_the_link_header(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    out = run(tmp_path, url=f"{base}/link-header", pagination={"type": "next_link"})
    assert ids(out) == [1, 2, 3, 4, 5]
    assert out.metrics["pages"] == 3


def test_max_pages_is_a_safety_cap(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    params: dict[str, Any] = {
        "url": f"{base}/cursor",
        "records_path": "data",
        "pagination": {"type": "cursor", "path": "meta.next_cursor", "param": "after"},
        "max_pages": 2,
    }
    with pytest.raises(SourceError) as info:
        run(tmp_path, **params)
    assert "stopped at max_pages=2 but the API has more pages" in str(info.value)
    out = run(tmp_path, **params, on_max_pages="stop")
    assert ids(out) == [1, 2, 3, 4]
    assert out.metrics["truncated"] is True


def test_pagination_loop_is_detected(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    with pytest.raises(SourceError) as info:
        run(
            tmp_path,
            url=f"{base}/loop",
            records_path="data",
            pagination={"type": "cursor", "path": "next", "param": "c"},
        )
    assert "returned the same next page twice" in str(info.value)


def test_url_query_and_request_params_both_reach_the_server(
    tmp_path: Path, api: tuple[str, Api]
) -> None:
    base, _ = api
    out = run(tmp_path, url=f"{base}/pages?per_page=5", records_path="data",
              request_params={"page": 1})  # fmt: skip
    assert ids(out) == [1, 2, 3, 4, 5]


# --- retries ----------------------------------------------------------------------------------


def test_429_waits_as_long_as_retry_after_says(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, server = api
    out = run(tmp_path, url=f"{base}/limited", records_path="data", backoff=0.01)
    assert ids(out) == [1, 2, 3, 4, 5]
    (t1, _, _), (t2, _, _) = server.seen
    assert t2 - t1 >= 1.0  # Retry-After: 1, not the 0.01 s backoff
    assert out.metrics["retries"] == 1
    assert out.metrics["requests"] == 2


def test_429_with_an_http_date(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, server = api
    out = run(tmp_path, url=f"{base}/limited-date", records_path="data", backoff=0.01)
    assert ids(out) == [1, 2, 3, 4, 5]
    retried_at = datetime.now(UTC) - timedelta(seconds=time.monotonic() - server.seen[1][0])
    assert retried_at >= server.retry_at - timedelta(milliseconds=50)


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:05 GMT", now) == 5.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_retry_after_longer_than_max_wait_gives_up(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, server = api
    with pytest.raises(SourceError) as info:
        run(tmp_path, url=f"{base}/limited", records_path="data", max_wait=0.5)
    assert "the server asks to wait 1 s (max_wait 0.5 s)" in str(info.value)
    assert len(server.seen) == 1


def test_500_then_success(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    out = run(tmp_path, url=f"{base}/flaky", records_path="data", backoff=0.05)
    assert ids(out) == [1, 2, 3, 4, 5]
    assert out.metrics["retries"] == 1


def test_gives_up_after_max_retries(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, server = api
    with pytest.raises(SourceError) as info:
        run(
            tmp_path,
            url=f"{base}/down?api_key=k-777&region=eu",
            records_path="data",
            max_retries=2,
            backoff=0.05,
        )
    msg = str(info.value)
    assert "failed after 3 attempt(s): HTTP 503 Service Unavailable" in msg
    assert "api_key=***" in msg
    assert "region=eu" in msg
    assert "k-777" not in msg
    gaps = [b[0] - a[0] for a, b in zip(server.seen, server.seen[1:], strict=False)]
    assert len(server.seen) == 3
    assert gaps[0] >= 0.05
    assert gaps[1] >= 0.1  # exponential: backoff, then 2 x backoff


def test_timeouts_are_retried_then_reported(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    with pytest.raises(SourceError) as info:
        run(tmp_path, url=f"{base}/slow", timeout=0.2, max_retries=1, backoff=0.05)
    assert "failed after 2 attempt(s): timed out after 0.2 s" in str(info.value)


def test_timeout_then_success(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    out = run(tmp_path, url=f"{base}/slow-once", records_path="data", timeout=0.3, backoff=0.05)
    assert ids(out) == [1, 2, 3, 4, 5]
    assert out.metrics["retries"] == 1


def test_unreachable_server(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError) as info:
        run(tmp_path, url=f"http://127.0.0.1:{port}/rows", max_retries=1, backoff=0.01)
    assert f"GET http://127.0.0.1:{port}/rows failed after 2 attempt(s): could not connect" in str(
        info.value
    )


# --- auth and bad answers ---------------------------------------------------------------------


def test_auth_header_from_the_environment(
    tmp_path: Path, api: tuple[str, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, server = api
    monkeypatch.setenv("DW_TEST_API_TOKEN", "tok-123")
    auth = {"header": "Authorization", "env": "DW_TEST_API_TOKEN", "scheme": "Bearer"}
    out = run(tmp_path, url=f"{base}/secure", records_path="data", auth=auth)
    assert ids(out) == [1, 2, 3, 4, 5]
    assert server.seen[0][2]["authorization"] == "Bearer tok-123"
    params = ExtractParams.model_validate({"url": f"{base}/secure", "auth": auth})
    from ductwork.core.fingerprint import canonical_json

    assert "tok-123" not in canonical_json(params) + repr(out.metrics)


def test_rejected_token_is_never_shown(
    tmp_path: Path, api: tuple[str, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, server = api
    monkeypatch.setenv("DW_TEST_API_TOKEN", "tok-wrong")
    with pytest.raises(SourceError) as info:
        run(tmp_path, url=f"{base}/secure", auth={"env": "DW_TEST_API_TOKEN"})
    msg = str(info.value)
    assert "answered HTTP 401 Unauthorized" in msg
    assert "bad credentials: Bearer ***" in msg
    assert "tok-wrong" not in msg
    assert len(server.seen) == 1  # 4xx is not retried


def test_missing_token_variable(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    with pytest.raises(UsageError) as info:
        run(tmp_path, url=f"{base}/secure", auth={"env": "DW_TEST_UNSET_TOKEN"})
    assert "the auth token variable DW_TEST_UNSET_TOKEN is not set" in str(info.value)


def test_not_json(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    with pytest.raises(DataError) as info:
        run(tmp_path, url=f"{base}/html")
    assert "did not return JSON (content-type text/html)" in str(info.value)


def test_records_path_missing_in_the_answer(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    with pytest.raises(DataError) as info:
        run(tmp_path, url=f"{base}/rows", records_path="items")
    assert "records_path 'items' not found: no 'items' at the top level (keys there: data)" in str(
        info.value
    )


def test_http_sources_always_rerun(tmp_path: Path, api: tuple[str, Api]) -> None:
    base, _ = api
    params = ExtractParams.model_validate({"url": f"{base}/rows"})
    ctx = StageContext(stage="s", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "w")
    assert Extract().source_stamp(params, ctx) is None


# --- dev/prod swap ----------------------------------------------------------------------------


def test_csv_in_dev_and_api_in_prod_give_the_same_table(
    tmp_path: Path, api: tuple[str, Api]
) -> None:
    base, _ = api
    (tmp_path / "data").mkdir()
    pl.DataFrame(ROWS).select("carrier", "day", "id", "dep_delay").write_csv(
        tmp_path / "data" / "rows.csv"
    )
    params: dict[str, Any] = {
        "path": "data/rows.csv",
        "schema": {"id": "Int64", "dep_delay": "Int32", "day": "Date", "carrier": "String"},
        "strict_schema": True,
    }
    prod = {"path": None, "url": f"{base}/rows", "records_path": "data"}  # profiles: {prod: ...}
    dev_df = run(tmp_path, **params).values["main"]
    prod_df = run(tmp_path, **{**params, **prod}).values["main"]
    assert (
        dev_df.schema
        == prod_df.schema
        == pl.Schema({"id": pl.Int64, "dep_delay": pl.Int32, "day": pl.Date, "carrier": pl.String})
    )
    assert dev_df.equals(prod_df)
