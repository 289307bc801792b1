"""TLS for the exporter's own listener: tls_server_config checked and built into one
SSLContext, and the client_allowed_sans check on each verified client certificate."""

from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

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


def tls_context(tls: Any, base: Path, problems: list[str], files: list[str]
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


def client_allowed(cert: dict[str, Any] | None, allowed: tuple[str, ...] | None) -> bool:
    """exporter-toolkit's VerifyPeerCertificate: with client_allowed_sans set, the
    (verified) client certificate must carry one of the listed SANs."""
    return allowed is None or any(s in allowed for s in peer_sans(cert))
