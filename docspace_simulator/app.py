"""The application behind the routes: authentication, DocSpace's filters, each action's answer.

What the server's filters and controllers answer (docs/docspace-api.md sections 2-16), given a
portal's state and its scenario row; the faults in front of it are the scenario's hooks.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from docspace_simulator.objects import fragment, settings_obj, tariff_obj
from docspace_simulator.wire import (
    CT_JSON,
    CT_PROBLEM,
    DUMP_DENIED_BODY,
    E10_BODY,
    EMPTY_401,
    LOGIN_FAILED_BODY,
    Resp,
    compact,
    cookie,
    envelope,
    fmt_expires,
    problem,
    trace_id,
)

if TYPE_CHECKING:
    from docspace_simulator.server import Simulator
    from docspace_simulator.transport import Request

__all__ = ["answer"]


def answer(sim: Simulator, req: Request) -> Resp:
    """The application's answer (authentication, filters, action), as DocSpace gives it."""
    p, endpoint, method, href = req.portal, req.endpoint, req.method, req.href
    sc = p.sc
    if endpoint == "login":
        if sc.restoring:
            # TenantStatusFilter does not let `authentication` through while Restoring.
            return Resp(403, problem(403), CT_PROBLEM)
        return _login(sim, req)
    if endpoint == "settings" and p.settings_status is not None:
        return Resp(p.settings_status)
    if endpoint == "tariff" and p.tariff_status is not None:
        return Resp(p.tariff_status)
    if endpoint == "settings":
        # [AllowAnonymous, AllowSuspended, AllowNotPayment]; readable during a restore.
        # The time zone is only filled for an authenticated caller.
        authed = not sc.auth_fails and _authorized(sim, req)
        settings = compact(settings_obj(p, authed, sim.clock()))
        return Resp(200, envelope(settings, 1, href, method), CT_JSON)

    if endpoint != "restore_progress" and (sc.auth_fails or not _authorized(sim, req)):
        return EMPTY_401
    if endpoint == "restore_progress" and sc.restore_scope_denied:
        # ApiKeyScopesFilter (v3.6.1+): a key whose scopes do not cover it; empty body.
        return Resp(403)
    # Resource filters (TenantStatusFilter, PaymentFilter): bare status -> ProblemDetails.
    if sc.restoring and endpoint != "restore_progress":
        return Resp(403, problem(403), CT_PROBLEM)
    if sc.unpaid and endpoint in ("schedule", "history"):
        return Resp(402, problem(402), CT_PROBLEM)
    if endpoint == "tariff":
        # [AllowNotPayment]; blocked like the rest while Restoring (its path is not in
        # TenantStatusFilter's pass-through list; inferred).
        return Resp(200, envelope(compact(tariff_obj(p)), 1, href, method), CT_JSON)
    # Model binding of the Dump query flag (case-insensitive name and value).
    dump = False
    for k, v in parse_qsl(req.query, keep_blank_values=True):
        if k.lower() == "dump":
            if v.lower() not in ("true", "false"):
                return _bad_request(href, method, k, v)
            dump = v.lower() == "true"
            break
    if endpoint != "restore_progress":
        if dump and not p.dump_allowed:
            return Resp(403, DUMP_DENIED_BODY, CT_JSON)
        if sc.not_admin:
            return Resp(403, E10_BODY, CT_JSON)
    frag, count = fragment(p, endpoint, dump, sim._base_url, sim.clock())
    return Resp(200, envelope(frag, count, href, method), CT_JSON)

def _authorized(sim: Simulator, req: Request) -> bool:
    """§3: API key as Bearer sk-...; a token as header (bare or Bearer) or cookie."""
    p = req.portal
    auth = req.header("Authorization")
    from_cookie = cookie(req.header("Cookie"), "asc_auth_key")
    token: str | None
    if auth is None:
        token = from_cookie
    else:
        value = auth.strip()
        # "Bearer " is matched case-sensitively by the policy selector and the API-key
        # handler (section 16): "bearer sk-..." falls through to the cookie handler.
        if value.startswith("Bearer "):
            value = value[7:].strip()
            if value.startswith("sk-"):
                return hmac.compare_digest(value.encode(), p.api_key.encode())
            if value.startswith("eyJ") and value.count(".") == 2:
                return False  # an OAuth JWT: not simulated
        elif value[:6].lower() == "basic ":
            return False  # Basic auth is not simulated
        token = from_cookie or value
    if not token:
        return False
    if p.token is not None and hmac.compare_digest(token.encode(), p.token.encode()):
        return True
    with sim._lock:
        expires = sim._tokens[p.name].get(token)
        if expires is None:
            return False
        if sim.clock() > expires:
            del sim._tokens[p.name][token]
            return False
    return True

def _login(sim: Simulator, req: Request) -> Resp:
    p, href = req.portal, req.href
    try:
        doc = json.loads(req.body or b"null")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return _bad_request(href, "POST", "inDto", "")
    fields = {str(k).lower(): v for k, v in doc.items()}
    user, password = fields.get("username"), fields.get("password")
    ok = (
        not p.sc.auth_fails
        and p.username is not None
        and p.password is not None
        and isinstance(user, str)
        and isinstance(password, str)
        and user.lower() == p.username.lower()
        and hmac.compare_digest(password.encode(), p.password.encode())
    )
    if not ok:
        return Resp(401, LOGIN_FAILED_BODY, CT_JSON)
    token = base64.b64encode(secrets.token_bytes(48)).decode()
    expires = sim.clock() + p.token_lifetime
    with sim._lock:
        sim._tokens[p.name][token] = expires
    frag = compact(
        {"token": token, "expires": fmt_expires(expires), "sms": False, "tfa": False}
    )
    set_cookie = (
        f"asc_auth_key={token}; expires="
        f"{time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime(int(expires)))}; "
        f"path=/{p.name}; samesite=none; httponly"
    )
    return Resp(200, envelope(frag, 1, href, "POST"), CT_JSON, (("Set-Cookie", set_cookie),))

def _bad_request(href: str, method: str, key: str, value: str) -> Resp:
    doc = {
        "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "errors": {key: [f"The value '{value}' is not valid."]},
        "traceId": trace_id(),
    }
    return Resp(
        400, envelope(compact(doc), 1, href, method, status=1, code=400), CT_JSON
    )


