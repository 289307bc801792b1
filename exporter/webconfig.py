"""The exporter's own web config (exporter-toolkit's web-config.yml): TLS, client
certificates, response headers, rate limit, and basic auth with bounded bcrypt."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import ssl
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter.config import ConfigError

# Every key of exporter-toolkit's docs/web-configuration.md is either applied with the effect
# the toolkit documents, or refused with a message naming it (README: "Web config keys").

# Only the policies Python's ssl module can enforce exactly. Go's RequestClientCert and
# RequireAnyClientCert accept a client certificate WITHOUT verifying it; OpenSSL through
# Python always verifies a certificate that is sent, so those two are refused, not weakened
# or strengthened behind the user's back.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
TLS_VERSIONS = {
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# TLS 1.0/1.1 are names the toolkit knows but OpenSSL 3 (security level 2) no longer offers.
OLD_TLS_VERSIONS = ("TLS10", "TLS11")
# Go's names (crypto/tls CipherSuites(), which the toolkit accepts) -> OpenSSL's names.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites are valid names in Go's list but not configurable there either (Go and
# OpenSSL always offer all three), so they are accepted and change nothing.
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256")
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1",
          "X25519": "X25519"}
TLS_KEYS = {"cert", "key", "client_ca", "cert_file", "key_file", "client_ca_file",
            "client_auth_type", "min_version", "max_version", "cipher_suites",
            "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans"}
# exporter-toolkit web/handler.go extraHTTPHeaders: the only response headers it lets a
# web config set, and the values it allows where the set is closed.
EXTRA_HTTP_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
GO_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                  "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class RateLimit:
    """rate_limit: a token bucket, one token every `interval` seconds, `burst` at most."""

    interval: float
    burst: int


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
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read web config: {exc.strerror or exc}"]) from None
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
        ctx, sans = _tls_context(tls, base, problems, files)
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


def _tls_context(tls: Any, base: Path, problems: list[str], files: list[str]
                 ) -> tuple[ssl.SSLContext | None, tuple[str, ...] | None]:
    if not isinstance(tls, dict):
        problems.append("tls_server_config: must be a mapping")
        return None, None
    if not tls:
        return None, None  # as in the toolkit: nothing set, plain HTTP
    n_before = len(problems)
    for key in sorted(set(tls) - TLS_KEYS, key=str):
        problems.append(f"tls_server_config.{key}: unknown key")

    def file_of(key: str) -> str | None:
        value = tls.get(key)
        if value is None:
            return None
        p = Path(str(value))
        if not p.is_absolute():
            p = base / p
        files.append(str(p))
        if not p.is_file():
            problems.append(f"tls_server_config.{key}: cannot read {value}")
            return None
        return str(p)

    def text_of(key: str) -> str | None:
        value = tls.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or "-----BEGIN" not in value:
            problems.append(f"tls_server_config.{key}: must be PEM text")
            return None
        return value

    for inline, file_key in (("cert", "cert_file"), ("key", "key_file"),
                             ("client_ca", "client_ca_file")):
        if inline in tls and file_key in tls:
            problems.append(f"tls_server_config: set {inline} or {file_key}, not both")
    cert, key = file_of("cert_file"), file_of("key_file")
    cert_text, key_text = text_of("cert"), text_of("key")
    client_ca, client_ca_text = file_of("client_ca_file"), text_of("client_ca")
    if "cert_file" not in tls and "cert" not in tls:
        problems.append("tls_server_config: missing one of cert or cert_file")
    if "key_file" not in tls and "key" not in tls:
        problems.append("tls_server_config: missing one of key or key_file")
    has_ca = "client_ca_file" in tls or "client_ca" in tls

    auth_type = tls.get("client_auth_type") or "NoClientCert"
    if not isinstance(auth_type, str):
        auth_type = "?"  # reported below as not one of the policies
    if auth_type in UNVERIFIED_AUTH_TYPES:
        problems.append(f"tls_server_config.client_auth_type: {auth_type} (a client "
                        "certificate accepted without verification) is not supported; use "
                        "RequireAndVerifyClientCert or VerifyClientCertIfGiven")
    elif auth_type not in CLIENT_AUTH_TYPES:
        problems.append("tls_server_config.client_auth_type: must be one of "
                        f"{', '.join(CLIENT_AUTH_TYPES)}")
    elif auth_type == "NoClientCert" and has_ca:
        problems.append("tls_server_config.client_auth_type: a client CA is configured "
                        "without a client auth policy; set RequireAndVerifyClientCert")
    elif auth_type != "NoClientCert" and not has_ca:
        problems.append(f"tls_server_config.client_auth_type: {auth_type} needs "
                        "client_ca_file (or client_ca)")

    sans = tls.get("client_allowed_sans")
    allowed_sans: tuple[str, ...] | None = None
    if sans is not None:
        if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
            problems.append("tls_server_config.client_allowed_sans: must be a list of names")
        elif auth_type not in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven"):
            problems.append("tls_server_config.client_allowed_sans: needs client_auth_type "
                            "RequireAndVerifyClientCert: the SANs of a certificate nobody "
                            "verified prove nothing")
        else:
            allowed_sans = tuple(sans)

    versions: dict[str, ssl.TLSVersion] = {}
    for k, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        v = tls.get(k, default)
        if not isinstance(v, str):
            problems.append(f"tls_server_config.{k}: must be one of TLS12, TLS13")
        elif v in OLD_TLS_VERSIONS:
            problems.append(f"tls_server_config.{k}: {v} is not offered by this exporter "
                            "(OpenSSL 3 disables TLS 1.0/1.1); use TLS12 or TLS13")
        elif v not in TLS_VERSIONS:
            problems.append(f"tls_server_config.{k}: must be one of TLS12, TLS13")
        else:
            versions[k] = TLS_VERSIONS[v]
    if len(versions) == 2 and versions["min_version"] > versions["max_version"]:
        problems.append("tls_server_config: min_version is above max_version")

    ciphers = _cipher_list(tls, versions.get("min_version"), problems)
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        problems.append("tls_server_config.prefer_server_cipher_suites: must be true or false")
    curve = _curve(tls, problems)

    if len(problems) > n_before:
        return None, None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = versions["min_version"]
    ctx.maximum_version = versions["max_version"]
    if ciphers:
        ctx.set_ciphers(":".join(ciphers))
    # Python sets OP_CIPHER_SERVER_PREFERENCE on server contexts; the key decides.
    if prefer:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if curve is not None:
        ctx.set_ecdh_curve(curve)  # OpenSSL 3: the only group offered, TLS 1.2 and 1.3
    if not _load_cert(ctx, cert, key, cert_text, key_text, problems):
        return None, None
    if client_ca or client_ca_text:
        try:
            if client_ca:
                ctx.load_verify_locations(cafile=client_ca)
            else:
                ctx.load_verify_locations(cadata=client_ca_text)
        except (ssl.SSLError, OSError, ValueError):
            k = "client_ca_file" if client_ca else "client_ca"
            problems.append(f"tls_server_config.{k}: not a PEM certificate")
            return None, None
    ctx.verify_mode = CLIENT_AUTH_TYPES[auth_type]
    return ctx, allowed_sans


def _cipher_list(tls: dict[str, Any], min_version: ssl.TLSVersion | None,
                 problems: list[str]) -> list[str]:
    raw = tls.get("cipher_suites")
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw:
        problems.append("tls_server_config.cipher_suites: must be a list of cipher suite names")
        return []
    out: list[str] = []
    for name in raw:
        if isinstance(name, str) and name in CIPHER_SUITES:
            out.append(CIPHER_SUITES[name])
        elif name not in TLS13_SUITES:
            problems.append(f"tls_server_config.cipher_suites: unknown cipher {name!s:.80}; "
                            "known: " + ", ".join([*CIPHER_SUITES, *TLS13_SUITES]))
    if not out and all(n in TLS13_SUITES for n in raw) and min_version != TLS_VERSIONS["TLS13"]:
        # Go would then offer TLS 1.2 with no cipher at all (every TLS 1.2 client fails);
        # say so instead of serving a configuration that cannot work.
        problems.append("tls_server_config.cipher_suites: lists only TLS 1.3 suites, which "
                        "are not configurable (TLS 1.3 offers all three); list TLS 1.2 suites "
                        "or set min_version: TLS13 and drop the key")
    return out


def _curve(tls: dict[str, Any], problems: list[str]) -> str | None:
    raw = tls.get("curve_preferences")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        problems.append("tls_server_config.curve_preferences: must be a list of curve names")
        return None
    unknown = [c for c in raw if not isinstance(c, str) or c not in CURVES]
    if unknown:
        problems.append(f"tls_server_config.curve_preferences: unknown curve {unknown[0]!s:.80}; "
                        f"known: {', '.join(CURVES)}")
        return None
    if len(raw) > 1:
        # Python's ssl sets exactly one group (SSLContext.set_ecdh_curve); a preference
        # order of several cannot be honoured, so it is refused rather than cut to one.
        problems.append("tls_server_config.curve_preferences: only one curve is supported "
                        "by this exporter (Python's ssl sets a single group); list one")
        return None
    return CURVES[raw[0]]


def _load_cert(ctx: ssl.SSLContext, cert: str | None, key: str | None, cert_text: str | None,
               key_text: str | None, problems: list[str]) -> bool:
    """load_cert_chain takes only paths: inline PEM goes through a private temporary
    directory that is removed at once."""
    with tempfile.TemporaryDirectory(prefix="web-config-") as tmp:
        if cert is None and cert_text is not None:
            cert = os.path.join(tmp, "cert.pem")
            Path(cert).write_text(cert_text, encoding="utf-8")
        if key is None and key_text is not None:
            key = os.path.join(tmp, "key.pem")
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(key_text)
        if cert is None or key is None:
            return False
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError):
            problems.append("tls_server_config: the certificate and key are not a matching "
                            "PEM certificate and key")
            return False
    return True


def peer_sans(cert: dict[str, Any] | None) -> list[str]:
    """The SANs of a verified peer certificate, written as Go's x509 writes them (the
    toolkit compares DNS names, e-mail addresses, IP addresses and URIs as strings)."""
    out: list[str] = []
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind in ("DNS", "email", "URI"):
            out.append(value)
        elif kind == "IP Address":
            try:
                out.append(str(ipaddress.ip_address(value.strip())))
            except ValueError:
                continue
    return out


class TokenBucket:
    """golang.org/x/time/rate.Limiter.Allow(): `burst` tokens, one more every interval."""

    def __init__(self, limit: RateLimit, timer: Callable[[], float] = time.monotonic) -> None:
        self._rate = 1.0 / limit.interval
        self._burst = float(limit.burst)
        self._tokens = float(limit.burst)
        self._timer = timer
        self._last = timer()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._timer()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class BasicAuth:
    """basic_auth_users, checked as exporter-toolkit does, plus bounds.

    - An unknown user is checked against a dummy hash of the same cost as the real ones, so
      the answer time does not tell which user names exist.
    - bcrypt runs one at a time (a lock): it costs ~70 ms of CPU at cost 10 by design, and
      parallel wrong passwords would otherwise take every core.
    - Results are cached by an HMAC of user, password and hash (never the password itself):
      successes for SUCCESS_TTL after their last use, failures for FAILURE_TTL, in separate
      bounded maps so a flood of wrong passwords can never push out a good client's entry.
    - A failure, cached or not, takes at least as long as one bcrypt (a sleep, no CPU).
    """

    SUCCESS_TTL = 600.0
    FAILURE_TTL = 60.0
    MAX_SUCCESSES = 100
    MAX_FAILURES = 1000

    def __init__(self, users: dict[str, bytes],
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._users = users
        self._timer = timer
        self._key = os.urandom(32)  # per process: cache keys are useless outside it
        self._ok: OrderedDict[bytes, float] = OrderedDict()
        self._failed: OrderedDict[bytes, float] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        started = time.monotonic()
        self._dummy = self._dummy_hash(users) if users else b""
        # What one bcrypt of that cost takes here: the least time a failure answers in.
        self._bcrypt_seconds = time.monotonic() - started if users else 0.0

    def __repr__(self) -> str:
        return f"BasicAuth(users={len(self._users)})"

    @staticmethod
    def _dummy_hash(users: dict[str, bytes]) -> bytes:
        """A hash of a random password at the cost most users have (ties: the higher)."""
        import bcrypt  # imported lazily: only needed with basic_auth_users

        costs: Counter[int] = Counter()
        for hashed in users.values():
            match = BCRYPT_HASH.fullmatch(hashed.decode("ascii", "replace"))
            costs[int(match[1]) if match else 10] += 1
        cost = max(costs, key=lambda c: (costs[c], c))
        return bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=cost))

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> bool:
        credentials = parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        known = user in self._users
        hashed = self._users.get(user, self._dummy)
        key = hmac.new(self._key, b"\0".join([
            str(len(user)).encode(), user.encode("utf-8", "surrogatepass"),
            password.encode("utf-8", "surrogatepass"), hashed]), hashlib.sha256).digest()
        started = time.monotonic()
        cached = self._cached(key)
        if cached is None:
            with self._bcrypt_lock:
                # Another thread may have checked the same credentials while this one
                # waited: one bcrypt serves them all.
                cached = self._cached(key)
                if cached is None:
                    cached = _bcrypt_ok(password, hashed) and known
                    self._store(key, cached)
        if not cached:
            # A failure never answers sooner than a bcrypt would: a repeated wrong password
            # looks like a new one, and a flood of them costs this thread a sleep instead of
            # the CPU of thousands of cached 401s a second.
            rest = self._bcrypt_seconds - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
        return cached and known

    def _cached(self, key: bytes) -> bool | None:
        now = self._timer()
        with self._cache_lock:
            for store, ttl, result in ((self._ok, self.SUCCESS_TTL, True),
                                       (self._failed, self.FAILURE_TTL, False)):
                stamp = store.get(key)
                if stamp is None:
                    continue
                if now - stamp > ttl:
                    del store[key]
                    continue
                if result:  # a success lives on while it is used
                    store[key] = now
                    store.move_to_end(key)
                return result
        return None

    def _store(self, key: bytes, good: bool) -> None:
        store, limit = (self._ok, self.MAX_SUCCESSES) if good else (self._failed,
                                                                      self.MAX_FAILURES)
        with self._cache_lock:
            store[key] = self._timer()
            store.move_to_end(key)
            while len(store) > limit:
                store.popitem(last=False)  # the least recently used


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """`Basic base64(user:password)` -> (user, password); None for anything else."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":  # auth schemes are case-insensitive (RFC 9110 §11.1)
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _bcrypt_ok(password: str, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password.encode(), hashed))
    except ValueError:  # longer than 72 bytes, a NUL, a malformed hash: no match, as in Go
        return False


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
