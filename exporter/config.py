"""The YAML config: parsed once into frozen dataclasses, every problem reported with its path."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter.schedule import zone

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")

DEFAULT_TIMEOUT = 10.0
# Calls in flight at once, all portals together (one worker thread each). ~300 keeps one
# CPU busy at 200 ms per call and lets 100 portals' 300 calls go out in one wave; more
# threads only add GIL contention and ~40 kB of RSS each (benchmarks/README.md).
DEFAULT_MAX_CONCURRENCY = 320
DEFAULT_MAX_PER_HOST = 8
# Each answer is a few hundred bytes; a megabyte is far beyond any real schedule or
# history and keeps a hostile or broken portal from filling the exporter's memory.
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20

PORTAL_KEYS = {
    "name",
    "url",
    "timeout",
    "dump",
    "history",
    "ca_file",
    "insecure_skip_verify",
    "api_key",
    "api_key_file",
    "token",
    "token_file",
    "username",
    "password",
    "password_file",
    "max_response_bytes",
    "timezone",
}
DEFAULTABLE_KEYS = PORTAL_KEYS - {"name", "url"}
TOP_KEYS = {"defaults", "portals", "max_concurrency", "max_requests_per_host"}


class Secret:
    """A credential: usable by the client, invisible to repr(), str() and logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiKeyAuth:
    """DocSpace API key, sent as `Authorization: Bearer sk-...`."""

    key: Secret

    def secrets(self) -> tuple[str, ...]:
        return (self.key.reveal(),)


@dataclass(frozen=True)
class TokenAuth:
    """Personal access token from POST /api/2.0/authentication, sent as `Authorization: <token>`."""

    token: Secret

    def secrets(self) -> tuple[str, ...]:
        return (self.token.reveal(),)


@dataclass(frozen=True)
class PasswordAuth:
    """User name and password: the exporter logs in and caches the token."""

    username: str
    password: Secret

    def secrets(self) -> tuple[str, ...]:
        return (self.password.reveal(),)


Auth = ApiKeyAuth | TokenAuth | PasswordAuth


@dataclass(frozen=True)
class PortalConfig:
    name: str
    url: str
    auth: Auth = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    dump: bool = False
    history: bool = False
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # IANA zone that overrides the one the portal reports (GET /api/2.0/settings).
    timezone: str | None = None

    @property
    def auth_method(self) -> str:
        return {ApiKeyAuth: "api_key", TokenAuth: "token", PasswordAuth: "password"}[
            type(self.auth)
        ]


@dataclass(frozen=True)
class Config:
    portals: tuple[PortalConfig, ...]
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_requests_per_host: int = DEFAULT_MAX_PER_HOST
    source: str = "<memory>"

    def portal(self, name: str) -> PortalConfig | None:
        for p in self.portals:
            if p.name == name:
                return p
        return None

    def secrets(self) -> tuple[str, ...]:
        out: list[str] = []
        for p in self.portals:
            out.extend(p.auth.secrets())
        return tuple(s for s in out if s)


class ConfigError(Exception):
    """Every problem found in a config, each prefixed with its YAML path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_duration(value: Any) -> float:
    """`10`, `2.5`, `500ms`, `10s`, `1m`, `1h` -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 10s, 500ms or 1m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = DURATION_RE.match(value)
        if not m:
            raise ValueError(f"must be a duration like 10s, 500ms or 1m, not {value!r}")
        number = float(m.group(1))
        seconds = number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
    else:
        raise ValueError("must be a duration like 10s, 500ms or 1m")
    if not seconds > 0:
        raise ValueError("must be greater than 0")
    return seconds


class _Loader:
    """Collects problems while walking the document, so all are reported at once."""

    def __init__(self, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.environ = environ
        self.problems: list[str] = []
        # Paths whose ${VAR} is unset: that is their one problem, not also "must not be
        # empty" or "has no host" about what is left.
        self._unresolved: set[str] = set()

    def problem(self, path: str, msg: str) -> None:
        entry = f"{path}: {msg}"
        # A `defaults` value is checked once per portal: report it once.
        if path not in self._unresolved and entry not in self.problems:
            self.problems.append(entry)

    def expand(self, path: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value

        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if var not in self.environ:
                self.problem(path, f"environment variable {var} is not set")
                self._unresolved.add(path)
                return ""
            return self.environ[var]

        return ENV_RE.sub(sub, value)

    def read_secret_file(self, path: str, filename: Any) -> str | None:
        if not isinstance(filename, str) or not filename:
            self.problem(path, "must be a file path")
            return None
        p = Path(filename)
        if not p.is_absolute():
            p = self.base_dir / p
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            # The OS message names the file and why (no such file, permission) but
            # never its contents.
            self.problem(path, f"cannot read {filename}: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError:
            self.problem(path, f"{filename} is not UTF-8 text")
            return None
        value = text.rstrip("\r\n")
        if not value.strip():
            self.problem(path, f"{filename} is empty")
            return None
        return value

    def string(self, path: str, value: Any, *, secret: bool = False) -> str | None:
        if not isinstance(value, str):
            self.problem(path, "must be a string")
            return None
        if not value:
            self.problem(path, "must not be empty")
            return None
        return value

    def boolean(self, path: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.problem(path, "must be true or false")
        return False

    def positive_int(self, path: str, value: Any, default: int) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.problem(path, "must be a whole number of at least 1")
            return default
        return value


def _check_url(loader: _Loader, path: str, url: str) -> str | None:
    try:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            # Credentials in a URL would end up in logs and labels; they belong in api_key & co.
            loader.problem(path, "must not contain user:password@; use the auth keys")
            return None
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        loader.problem(path, "is not a valid URL")
        return None
    if parts.scheme not in ("http", "https"):
        loader.problem(path, "must start with http:// or https://")
        return None
    if not parts.hostname:
        loader.problem(path, "has no host")
        return None
    if parts.query or parts.fragment:
        loader.problem(path, "must not have a query or fragment")
        return None
    return url.rstrip("/")


def _portal(loader: _Loader, path: str, raw: Any, defaults: dict[str, Any]) -> PortalConfig | None:
    if not isinstance(raw, dict):
        loader.problem(path, "must be a mapping with at least name and url")
        return None
    for key in sorted(set(raw) - PORTAL_KEYS, key=str):
        loader.problem(f"{path}.{key}", "unknown key")
    merged: dict[str, Any] = {}
    for key, value in defaults.items():
        merged[key] = (f"defaults.{key}", value)
    for key, value in raw.items():
        if key in PORTAL_KEYS:
            merged[key] = (f"{path}.{key}", value)
    vals = {k: loader.expand(p, v) for k, (p, v) in merged.items()}
    paths = {k: p for k, (p, _) in merged.items()}
    before = len(loader.problems)

    name = None
    if "name" not in vals:
        loader.problem(f"{path}.name", "is required")
    else:
        name = loader.string(paths["name"], vals["name"])
        if name is not None and not NAME_RE.match(name):
            loader.problem(paths["name"], f"{name!r} may only contain letters, digits, _ . -")
            name = None

    url = None
    if "url" not in vals:
        loader.problem(f"{path}.url", "is required")
    else:
        raw_url = loader.string(paths["url"], vals["url"])
        if raw_url is not None:
            url = _check_url(loader, paths["url"], raw_url)

    timeout = DEFAULT_TIMEOUT
    if "timeout" in vals:
        try:
            timeout = parse_duration(vals["timeout"])
        except ValueError as exc:
            loader.problem(paths["timeout"], str(exc))

    dump = loader.boolean(paths["dump"], vals["dump"]) if "dump" in vals else False
    history = loader.boolean(paths["history"], vals["history"]) if "history" in vals else False
    insecure = (
        loader.boolean(paths["insecure_skip_verify"], vals["insecure_skip_verify"])
        if "insecure_skip_verify" in vals
        else False
    )
    max_bytes = (
        loader.positive_int(
            paths["max_response_bytes"], vals["max_response_bytes"], DEFAULT_MAX_RESPONSE_BYTES
        )
        if "max_response_bytes" in vals
        else DEFAULT_MAX_RESPONSE_BYTES
    )
    ca_file = None
    if "ca_file" in vals:
        ca_file = loader.string(paths["ca_file"], vals["ca_file"])
        if ca_file is not None:
            ca_path = Path(ca_file)
            if not ca_path.is_absolute():
                ca_path = loader.base_dir / ca_path
            try:
                with open(ca_path, "rb") as fh:
                    fh.read(1)
            except OSError as exc:
                # Why, as for the *_file secrets: no such file, a directory, permission.
                loader.problem(paths["ca_file"], f"cannot read {ca_file}: {exc.strerror or exc}")
            ca_file = str(ca_path)

    timezone = None
    if "timezone" in vals:
        timezone = loader.string(paths["timezone"], vals["timezone"])
        if timezone is not None and zone(timezone) is None:
            loader.problem(paths["timezone"], f"{timezone!r} is not an IANA time zone "
                           "(like Europe/Berlin) known to this system's tz database")
            timezone = None

    auth = _auth(loader, path, vals, paths)
    if len(loader.problems) != before or name is None or url is None or auth is None:
        return None
    return PortalConfig(
        name=name,
        url=url,
        auth=auth,
        timeout=timeout,
        dump=dump,
        history=history,
        ca_file=ca_file,
        insecure_skip_verify=insecure,
        max_response_bytes=max_bytes,
        timezone=timezone,
    )


def _secret_value(
    loader: _Loader, vals: dict[str, Any], paths: dict[str, str], key: str
) -> str | None:
    """Value of `key` or of `key_file`; the caller has checked exactly one is set."""
    if key in vals:
        return loader.string(paths[key], vals[key], secret=True)
    return loader.read_secret_file(paths[key + "_file"], vals[key + "_file"])


def _auth(loader: _Loader, path: str, vals: dict[str, Any], paths: dict[str, str]) -> Auth | None:
    methods = []
    if "api_key" in vals or "api_key_file" in vals:
        methods.append("api_key")
    if "token" in vals or "token_file" in vals:
        methods.append("token")
    if "username" in vals or "password" in vals or "password_file" in vals:
        methods.append("username/password")
    for k in ("api_key", "token", "password"):
        if k in vals and k + "_file" in vals:
            loader.problem(f"{path}.{k}", f"set either {k} or {k}_file, not both")
            return None
    if not methods:
        loader.problem(
            path,
            "needs one auth method: api_key(_file), token(_file) or username with password(_file)",
        )
        return None
    if len(methods) > 1:
        loader.problem(
            path, "has more than one auth method (" + ", ".join(methods) + "); keep exactly one"
        )
        return None
    method = methods[0]
    if method == "api_key":
        key = _secret_value(loader, vals, paths, "api_key")
        if key is None:
            return None
        if not key.startswith("sk-"):
            # DocSpace routes a Bearer value to its API-key handler only when it starts
            # with sk-; anything else would fail with 401 at every scrape.
            where = paths.get("api_key") or paths["api_key_file"]
            loader.problem(
                where,
                "a DocSpace API key starts with sk-; for a login token use token or token_file",
            )
            return None
        return ApiKeyAuth(Secret(key))
    if method == "token":
        token = _secret_value(loader, vals, paths, "token")
        return TokenAuth(Secret(token)) if token is not None else None
    if "username" not in vals:
        loader.problem(f"{path}.username", "is required with password")
        return None
    if "password" not in vals and "password_file" not in vals:
        loader.problem(f"{path}.password", "is required with username (or password_file)")
        return None
    username = loader.string(paths["username"], vals["username"])
    password = _secret_value(loader, vals, paths, "password")
    if username is None or password is None:
        return None
    return PasswordAuth(username, Secret(password))


def parse_config(
    data: Any,
    *,
    base_dir: Path | str = ".",
    environ: Mapping[str, str] | None = None,
    source: str = "<memory>",
) -> Config:
    """Validate an already-decoded YAML document. Raises ConfigError listing every problem."""
    loader = _Loader(Path(base_dir), os.environ if environ is None else environ)
    if data is None:
        raise ConfigError(["(root): the config is empty; it needs a portals list"])
    if not isinstance(data, dict):
        raise ConfigError(["(root): must be a mapping with a portals list"])
    for key in sorted(set(data) - TOP_KEYS, key=str):
        loader.problem(str(key), "unknown key")

    defaults: dict[str, Any] = {}
    raw_defaults = data.get("defaults")
    if raw_defaults is not None:
        if not isinstance(raw_defaults, dict):
            loader.problem("defaults", "must be a mapping")
        else:
            for key in sorted(set(raw_defaults) - DEFAULTABLE_KEYS, key=str):
                hint = " (set it per portal)" if key in ("name", "url") else ""
                loader.problem(f"defaults.{key}", "unknown key" + hint)
            defaults = {k: v for k, v in raw_defaults.items() if k in DEFAULTABLE_KEYS}

    max_concurrency = DEFAULT_MAX_CONCURRENCY
    if "max_concurrency" in data:
        max_concurrency = loader.positive_int(
            "max_concurrency", data["max_concurrency"], DEFAULT_MAX_CONCURRENCY
        )
    max_per_host = DEFAULT_MAX_PER_HOST
    if "max_requests_per_host" in data:
        max_per_host = loader.positive_int(
            "max_requests_per_host", data["max_requests_per_host"], DEFAULT_MAX_PER_HOST
        )

    portals: list[PortalConfig] = []
    raw_portals = data.get("portals")
    if raw_portals is None:
        loader.problem("portals", "is required: a list of portals")
    elif not isinstance(raw_portals, list):
        loader.problem("portals", "must be a list")
    elif not raw_portals:
        loader.problem("portals", "is empty; configure at least one portal")
    else:
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_portals):
            path = f"portals[{i}]"
            portal = _portal(loader, path, raw, defaults)
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str):
                if name in seen:
                    loader.problem(
                        f"{path}.name", f"duplicate name {name!r} (also portals[{seen[name]}])"
                    )
                    portal = None
                else:
                    seen[name] = i
            if portal is not None:
                portals.append(portal)

    if loader.problems:
        raise ConfigError(loader.problems)
    return Config(
        portals=tuple(portals),
        max_concurrency=max_concurrency,
        max_requests_per_host=max_per_host,
        source=source,
    )


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: config file is not UTF-8 text"]) from None
    try:
        duplicates = duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = getattr(exc, "problem", None) or "invalid YAML"
        # Only the position and the parser's complaint: the offending line itself may hold a key.
        raise ConfigError([f"{path}: invalid YAML at {where}: {what}"]) from None
    try:
        config = parse_config(data, base_dir=p.resolve().parent, environ=environ,
                              source=str(path))
    except ConfigError as exc:
        raise ConfigError(duplicates + exc.problems) from None
    if duplicates:
        raise ConfigError(duplicates)
    return config


def duplicate_keys(node: yaml.Node | None) -> list[str]:
    """A problem for every key repeated in a YAML mapping, with its path and lines.

    PyYAML keeps the last of two equal keys without a word, so a portal with `url:` twice
    would silently use the second one."""
    out: list[str] = []
    seen_nodes: set[int] = set()  # an alias repeats a node: walk it once

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`
                    walk(value_node, path)
                    continue
                if isinstance(key_node, yaml.ScalarNode):
                    key = str(key_node.value)
                    child = f"{path}.{key}" if path else key
                    line = key_node.start_mark.line + 1
                    where = (key_node.tag, key_node.value)
                    if where in first:
                        out.append(f"{child}: duplicate key (line {line}; first on line "
                                   f"{first[where]}); each key may appear once")
                    else:
                        first[where] = line
                else:
                    child = f"{path}.<key>" if path else "<key>"
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    if node is not None:
        walk(node, "")
    return out
