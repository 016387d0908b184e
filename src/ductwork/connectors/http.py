"""Read records from a paginated JSON API into a table (httpx; ``pip install 'ductwork[http]'``).

* ``records_path``: dotted path to the list of records in each page (``data.items``).
* pagination: ``next_link`` (a JSON field path, or the ``Link: <…>; rel="next"`` header),
  ``cursor`` (a field path + the request param that carries it) or ``page`` (a page-number
  param, stopping at the first empty page); ``max_pages`` caps the walk.
* retries: 429, 5xx, timeouts and dropped connections are retried with exponential backoff,
  honouring ``Retry-After`` (seconds or an HTTP date), at most ``max_retries`` times.
* auth: a header whose value comes from an environment variable; the token never appears in
  logs, errors, metrics or fingerprints (error URLs also hide secret-looking query values).
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from ductwork.errors import DataError, SourceError, UsageError, import_optional

if TYPE_CHECKING:
    import polars as pl

    from ductwork.core.contract import StageContext

Scalar = str | int | float | bool

_SECRET_KEY = re.compile(
    r"(key|token|secret|password|passwd|pwd|sig|signature|auth|credential)", re.I
)
REDACTED = "***"


def redact_url(url: str) -> str:
    """The URL with its password and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if sep else f"{user}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_SECRET_KEY.search(k) for k, _ in pairs):
        query = urlencode(
            [(k, REDACTED if _SECRET_KEY.search(k) else v) for k, v in pairs], safe="*"
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret (and sqlite:/// keeps its three slashes)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpAuth(_Model):
    """``auth: {header: Authorization, env: API_TOKEN, scheme: Bearer}``"""

    env: str = Field(min_length=1, description="environment variable holding the token")
    header: str = "Authorization"
    scheme: str | None = Field("Bearer", description="prefix before the token; null for none")


class NextLinkPagination(_Model):
    """Follow a next-page URL: from a JSON field (``path``) or, without ``path``, the Link header."""

    type: Literal["next_link"]
    path: str | None = None


class CursorPagination(_Model):
    """Send the cursor found at ``path`` in each page as request param ``param``."""

    type: Literal["cursor"]
    path: str = Field(min_length=1)
    param: str = Field(min_length=1)


class PagePagination(_Model):
    """Page numbers in request param ``param`` from ``start``; stop at the first empty page."""

    type: Literal["page"]
    param: str = "page"
    start: int = 1
    size_param: str | None = None
    size: int | None = Field(None, ge=1)


Pagination = Annotated[
    NextLinkPagination | CursorPagination | PagePagination, Field(discriminator="type")
]


@dataclass(frozen=True)
class HttpRequest:
    url: str  # the real URL (may hold query secrets); only ever shown through redact_url
    records_path: str | None = None
    params: Mapping[str, Scalar] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: HttpAuth | None = None
    pagination: NextLinkPagination | CursorPagination | PagePagination | None = None
    timeout: float = 30.0
    max_retries: int = 3
    backoff: float = 0.5
    max_wait: float = 60.0
    max_pages: int = 1000
    on_max_pages: Literal["error", "stop"] = "error"


@dataclass
class _Walk:
    requests: int = 0
    retries: int = 0
    waited: float = 0.0
    secrets: list[str] = field(default_factory=list)

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            if s:
                text = text.replace(s, REDACTED)
        return text


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _auth_headers(req: HttpRequest, walk: _Walk) -> dict[str, str]:
    if req.auth is None:
        return {}
    token = os.environ.get(req.auth.env)
    if not token:
        msg = f"the auth token variable {req.auth.env} is not set"
        raise UsageError(msg, hint=f"Export {req.auth.env} (or put it in .env) and run again.")
    walk.secrets.append(token)
    value = f"{req.auth.scheme} {token}" if req.auth.scheme else token
    return {req.auth.header: value}


def _get(client: Any, url: str, params: Mapping[str, Any], req: HttpRequest, walk: _Walk) -> Any:
    """GET with retries; returns the successful response or raises SourceError."""
    import httpx

    attempt = 0
    while True:
        attempt += 1
        walk.requests += 1
        wait: float | None = None
        try:
            resp = client.get(url, params=dict(params) or None)
        except httpx.TimeoutException:
            reason = f"timed out after {req.timeout:g} s"
        except httpx.TransportError as exc:
            reason = f"could not connect ({type(exc).__name__}: {walk.scrub(str(exc))})"
        else:
            status = resp.status_code
            if status < 300:
                return resp
            if status < 400:
                to = redact_url(resp.headers.get("location", "?"))
                msg = f"GET {redact_url(str(resp.request.url))} redirects ({status}) to {to}"
                raise SourceError(msg, hint="Set url to the final address.")
            shown = redact_url(str(resp.request.url))
            reason = f"HTTP {status} {resp.reason_phrase}".strip()
            if status != 429 and status < 500:
                body = walk.scrub(resp.text[:200].strip())
                msg = f"GET {shown} answered {reason}" + (f": {body}" if body else "")
                hint = (
                    "Check the token in the auth variable."
                    if status in (401, 403)
                    else "Check the URL and params."
                )
                raise SourceError(msg, hint=hint)
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
        shown = redact_url(_with_params(url, params))
        if attempt > req.max_retries:
            msg = f"GET {shown} failed after {attempt} attempt(s): {reason}"
            hint = "The server may be down or rate limiting; raise max_retries or try later."
            raise SourceError(msg, hint=hint)
        if wait is None:
            wait = req.backoff * 2 ** (attempt - 1)
        if wait > req.max_wait:
            msg = f"GET {shown}: {reason} and the server asks to wait {wait:.0f} s (max_wait {req.max_wait:g} s)"
            raise SourceError(msg, hint="Raise max_wait, or run again later.")
        walk.retries += 1
        walk.waited += wait
        time.sleep(wait)


def _with_params(url: str, params: Mapping[str, Any]) -> str:
    if not params:
        return url
    sep = "&" if urlsplit(url).query else "?"
    return f"{url}{sep}{urlencode({k: str(v) for k, v in params.items()})}"


def _json(resp: Any, shown: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        ctype = resp.headers.get("content-type", "?")
        msg = f"GET {shown} did not return JSON (content-type {ctype}): {resp.text[:80]!r}"
        raise DataError(msg) from None


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)


def fetch_records(req: HttpRequest, ctx: StageContext) -> pl.DataFrame:
    """Walk the pages and return all records as one table."""
    import_optional("httpx", extra="http", feature="extract from an HTTP API")
    import httpx
    import polars as pl

    from ductwork.connectors.files import dig, frame_from_records

    walk = _Walk()
    headers = {"Accept": "application/json", **req.headers, **_auth_headers(req, walk)}
    pag = req.pagination
    # httpx replaces a URL's query when given params, so the URL's own query becomes params
    parts = urlsplit(req.url)
    url = urlunsplit(parts._replace(query=""))
    params: dict[str, Any] = {**dict(parse_qsl(parts.query, keep_blank_values=True)), **req.params}
    if isinstance(pag, PagePagination):
        params[pag.param] = pag.start
        if pag.size_param and pag.size:
            params[pag.size_param] = pag.size
    frames: list[pl.DataFrame] = []
    seen: set[str] = set()
    pages = 0
    # httpx drops an Authorization header on cross-site redirects, but not other headers
    follow = req.auth is None or req.auth.header.lower() == "authorization"
    with httpx.Client(timeout=req.timeout, headers=headers, follow_redirects=follow) as client:
        while True:
            resp = _get(client, url, params, req, walk)
            pages += 1
            shown = redact_url(str(resp.url))
            body = _json(resp, shown)
            where = f"stage '{ctx.stage}': GET {shown} (page {pages})"
            records = dig(body, req.records_path, where)
            frame = frame_from_records(records, where, req.records_path)
            frames.append(frame)
            ctx.progress(pages, None, "pages")
            nxt = _next(pag, body, resp, frame.height, where)
            if nxt is None:
                break
            if isinstance(pag, NextLinkPagination):
                nxt = urljoin(str(resp.url), nxt)
                if not _same_origin(nxt, req.url):
                    msg = f"{where}: the next link points to another site ({redact_url(nxt)})"
                    raise SourceError(msg, hint="ductwork only follows next links on one site.")
                url, params = nxt, {}
            elif isinstance(pag, CursorPagination):
                params[pag.param] = nxt
            elif isinstance(pag, PagePagination):
                params[pag.param] = int(params[pag.param]) + 1
            if not isinstance(pag, PagePagination) and nxt in seen:
                msg = f"{where}: the API returned the same next page twice ({redact_url(nxt)})"
                raise SourceError(msg, hint="The pagination loops; check the pagination params.")
            seen.add(nxt)
            if pages >= req.max_pages:
                if req.on_max_pages == "stop":
                    ctx.log(f"stopped after max_pages={req.max_pages}; more pages remain")
                    ctx.metric(truncated=True)
                    break
                msg = f"{where}: stopped at max_pages={req.max_pages} but the API has more pages"
                hint = "Raise max_pages, or set on_max_pages: stop to keep the first pages only."
                raise SourceError(msg, hint=hint)
    ctx.metric(pages=pages, requests=walk.requests, retries=walk.retries)
    if walk.retries:
        ctx.log(f"{walk.retries} request(s) retried, {walk.waited:.1f} s waited")
    non_empty = [f for f in frames if f.width]
    if not non_empty:
        return pl.DataFrame()
    return pl.concat(non_empty, how="diagonal_relaxed")


def _next(
    pag: NextLinkPagination | CursorPagination | PagePagination | None,
    body: Any,
    resp: Any,
    n_records: int,
    where: str,
) -> str | None:
    """The next page's link, cursor or page marker; None when this was the last page."""
    from ductwork.connectors.files import dig

    if pag is None:
        return None
    if isinstance(pag, PagePagination):
        return None if n_records == 0 else "next page"
    if isinstance(pag, NextLinkPagination) and pag.path is None:
        link = resp.links.get("next", {}).get("url")
        return str(link) if link else None
    path = pag.path
    if path is None:
        return None
    try:
        value = dig(body, path, where)
    except DataError:
        return None  # a missing next field ends the walk
    if value is None or value == "" or value is False:
        return None
    if isinstance(value, dict | list):
        msg = f"{where}: the pagination field '{path}' holds a {type(value).__name__}"
        raise DataError(msg, hint="Point the pagination path at a link or cursor string.")
    return str(value)
