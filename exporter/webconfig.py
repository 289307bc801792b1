"""The exporter's own web config (exporter-toolkit's web-config.yml), parsed and checked:
every problem reported at once. TLS lives in tlsserver.py, basic auth and the rate limit in
auth.py; server.py applies the result to every connection and request."""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter.auth import BCRYPT_HASH, RateLimit
from exporter.config import ConfigError, duplicate_keys
from exporter.tlsserver import tls_context

# Every key of exporter-toolkit's docs/web-configuration.md is either applied with the effect
# the toolkit documents, or refused with a message naming it (README: "Web config keys").

# exporter-toolkit web/handler.go extraHTTPHeaders: the only response headers it lets a
# web config set, and the values it allows where the set is closed.
EXTRA_HTTP_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
GO_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                  "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class WebConfig:
    """exporter-toolkit's web-config.yml, as applied by this exporter."""

    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    # Verified client certificates must carry one of these SANs (None: no such check).
    client_allowed_sans: tuple[str, ...] | None = None
    rate_limit: RateLimit | None = None
    # The web config file and the files it names: a change to any is picked up (server.py).
    files: tuple[str, ...] = ()



def load_web_config(path: str | None) -> WebConfig:
    """Parse --web.config.file. Raises ConfigError listing every problem."""
    if not path:
        return WebConfig()
    problems: list[str] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
        # A key written twice is refused, as exporter-toolkit's strict YAML does: PyYAML
        # would keep the second without a word, and the first is a security setting too.
        problems.extend(duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader)))
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read web config: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: web config is not UTF-8 text"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{path}: web config is not valid YAML"]) from None
    if data is None:
        return WebConfig()
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: web config must be a mapping"])
    base = Path(path).resolve().parent
    for key in sorted(set(data) - {"tls_server_config", "basic_auth_users",
                                   "http_server_config", "rate_limit"}, key=str):
        problems.append(f"{key}: unknown key")

    ctx, sans = None, None
    files = [str(Path(path).absolute())]
    tls = data.get("tls_server_config")
    if tls is not None:
        ctx, sans = tls_context(tls, base, problems, files)
    users = _users(data.get("basic_auth_users"), problems)
    headers = _http_server_config(data.get("http_server_config"), problems)
    rate_limit = _rate_limit(data.get("rate_limit"), problems)
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return WebConfig(ssl_context=ctx, users=users, headers=headers, client_allowed_sans=sans,
                     rate_limit=rate_limit, files=tuple(files))


def _users(raw: Any, problems: list[str]) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    if raw is None:
        return users
    if not isinstance(raw, dict):
        problems.append("basic_auth_users: must be a mapping of user: bcrypt hash")
        return users
    for user, hashed in raw.items():
        match = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
        if not isinstance(user, str) or match is None or not 4 <= int(match[1]) <= 31:
            # The value is never echoed: it may be a plain password written by mistake.
            problems.append(f"basic_auth_users.{user}: must be a bcrypt hash "
                            "($2a$/$2b$/$2y$, cost 04-31, 60 characters), "
                            "not a plain password")
            continue
        users[user] = hashed.encode()
    return users


def _http_server_config(raw: Any, problems: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    if raw is None:
        return headers
    if not isinstance(raw, dict):
        problems.append("http_server_config: must be a mapping")
        return headers
    for key in sorted(set(raw) - {"headers", "http2"}, key=str):
        problems.append(f"http_server_config.{key}: unknown key")
    http2 = raw.get("http2", False)
    if not isinstance(http2, bool):
        problems.append("http_server_config.http2: must be true or false")
    elif http2:
        problems.append("http_server_config.http2: HTTP/2 is not supported by this exporter "
                        "(it serves HTTP/1.1); remove the key or set it to false")
    raw_headers = raw.get("headers")
    if raw_headers is None:
        return headers
    if not isinstance(raw_headers, dict):
        problems.append("http_server_config.headers: must be a mapping")
        return headers
    for name, value in raw_headers.items():
        where = f"http_server_config.headers.{name}"
        if name not in EXTRA_HTTP_HEADERS:
            problems.append(f"{where}: this header can not be configured; allowed: "
                            + ", ".join(EXTRA_HTTP_HEADERS))
            continue
        if value is None:
            value = ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(f"{where}: must be a string")
            continue
        value = str(value)
        allowed = EXTRA_HTTP_HEADERS[name]
        if allowed and value not in allowed:
            problems.append(f"{where}: must be one of {', '.join(allowed)}")
        elif any(c in value for c in "\r\n\0"):
            problems.append(f"{where}: must be one line")
        elif value:  # "Unset if blank"
            headers[name] = value
    return headers


def parse_go_duration(text: str) -> float | None:
    """Go's time.ParseDuration for non-negative values ("1s", "1m30s", "250ms", "0")."""
    if text == "0":
        return 0.0
    if not GO_DURATION.fullmatch(text):
        return None
    return sum(float(n) * DURATION_UNITS[u]
               for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)", text))


def _rate_limit(raw: Any, problems: list[str]) -> RateLimit | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append("rate_limit: must be a mapping with interval and burst")
        return None
    for key in sorted(set(raw) - {"interval", "burst"}, key=str):
        problems.append(f"rate_limit.{key}: unknown key")
    interval_raw = raw.get("interval", "0")
    interval = (0.0 if interval_raw == 0 else
                parse_go_duration(interval_raw) if isinstance(interval_raw, str) else None)
    if interval is None:
        problems.append("rate_limit.interval: must be a duration such as 1s or 100ms "
                        "(0 disables the limit)")
        return None
    burst = raw.get("burst", 0)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
        problems.append("rate_limit.burst: must be a whole number >= 0")
        return None
    if interval == 0:
        return None
    if burst < 1:
        # Go's limiter with burst 0 refuses every request: refuse the config instead.
        problems.append("rate_limit.burst: must be at least 1 when an interval is set "
                        "(0 would answer every request with 429)")
        return None
    return RateLimit(interval=interval, burst=burst)



def files_signature(files: tuple[str, ...]) -> tuple[tuple[str, int, int, int], ...]:
    """What tells a changed file: modification time, size, inode (a Kubernetes Secret
    volume swaps a symlink, so the inode changes). A missing file counts as (0, 0, 0)."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            out.append((f, 0, 0, 0))
            continue
        out.append((f, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)
