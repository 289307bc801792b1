"""The DocSpace wire format: fixed bodies, date formats, the response envelope (docspace-api.md)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from typing import Any, NamedTuple

DAY = 86400.0
INTERVALS = {0: 86400.0, 1: 604800.0, 2: 2678400.0}
NEVER = "0001-01-01T00:00:00"
MAX_REQUEST_BODY = 1 << 20
AUTH_LOG_LIMIT = 10000  # per portal; the oldest values are dropped beyond this


CT_JSON = "application/json; charset=utf-8"
CT_PROBLEM = "application/problem+json; charset=utf-8"
CT_HTML = "text/html"
CT_TEXT = "text/plain; charset=utf-8"


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def error_envelope(
    code: int, message: str, typ: str | None, stack: str | None, hresult: int
) -> bytes:
    err = {"message": message, "type": typ, "stack": stack, "hresult": hresult}
    return compact({"error": err, "status": 1, "statusCode": code}).encode()


# --- fixed bodies (docspace-api.md §2.2, §2.3, §3, §12) ---

# E10: a caller who is not a portal admin.
E10_BODY = error_envelope(
    403,
    "Access denied",
    "ASC.Common.Security.Authorizing.AuthorizingException",
    "   at ASC.Common.Security.Authorizing.PermissionResolver.DemandAsync(...)",
    -2146233088,
)
# Dump=true where the access-space check fails (TenantExtra.DemandAccessSpacePermissionAsync).
DUMP_DENIED_BODY = error_envelope(
    403,
    "Access denied",
    "System.Security.SecurityException",
    "   at ASC.Web.Core.Utility.TenantExtra.DemandAccessSpacePermissionAsync()",
    -2146233078,
)
LOGIN_FAILED_BODY = error_envelope(401, "User authentication failed", None, None, 0)
# IpSecurityFilter writes this text itself (docspace-api.md section 16).
IP_RESTRICTED_BODY = b"The access to the portal is restricted"

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    502: "Bad Gateway",
}

# System.Text.Json's default encoder also escapes these ASCII characters.
_JS_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "<>&'+`"})


def json_str(value: str) -> str:
    return json.dumps(value).translate(_JS_ESCAPES)


def fmt_dt(ts: float) -> str:
    """A DateTime as the server writes it from MySQL: UTC, no offset, no fraction."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(ts // 1)))


def fmt_expires(ts: float) -> str:
    """A UTC DateTime with up to 7 fraction digits, trailing zeros trimmed, and a Z."""
    secs, ticks = divmod(round(ts * 10_000_000), 10_000_000)
    frac = f"{ticks:07d}".rstrip("0")
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + (f".{frac}" if frac else "") + "Z"
    )


def fmt_file_stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(int(ts // 1)))


def trace_id() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


def problem(code: int) -> bytes:
    """RFC 7807 body that ASP.NET's ClientErrorResultFilter gives a bare status (§2.3)."""
    if code == 403:
        doc: dict[str, Any] = {
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.4",
            "title": "Forbidden",
            "status": 403,
            "traceId": trace_id(),
        }
    elif code == 404:
        doc = {
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.5",
            "title": "Not Found",
            "status": 404,
            "traceId": trace_id(),
        }
    else:
        doc = {"status": code, "traceId": trace_id()}
    return compact(doc).encode()


def default_api_key(name: str) -> str:
    return "sk-" + hashlib.sha256(f"docspace-simulator:{name}".encode()).hexdigest()


def guid(name: str, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"docspace-simulator/{name}/{what}"))


def envelope(
    fragment: str | None, count: int, href: str, method: str, status: int = 0, code: int = 200
) -> bytes:
    head = '{"count":0,' if fragment is None else f'{{"response":{fragment},"count":{count},'
    return (
        f'{head}"links":[{{"href":{json_str(href)},"action":"{method}"}}],'
        f'"status":{status},"statusCode":{code}}}'
    ).encode()


class Resp(NamedTuple):
    code: int
    body: bytes = b""
    ctype: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


EMPTY_401 = Resp(401)
EMPTY_404 = Resp(404)
EMPTY_405 = Resp(405)


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
    return _date_cache[1]


def cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip().strip('"')
    return None
