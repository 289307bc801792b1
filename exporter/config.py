"""The YAML config: parsed once into frozen dataclasses, every problem reported with its path."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
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


class Problems:
    """The problems found while walking a config document, each with its YAML path, so all
    of them are reported at once. Its converters report into it and return None (or a
    harmless stand-in) when a value is wrong; any problem fails the whole config."""

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

    # -- converters: (path, value) -> the checked value; no message ever echoes a value
    # that could be a secret.

    def string(self, path: str, value: Any) -> str | None:
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

    def positive_int(self, path: str, value: Any) -> int | None:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.problem(path, "must be a whole number of at least 1")
            return None
        return value

    def duration(self, path: str, value: Any) -> float | None:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return None

    def name(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is not None and not NAME_RE.match(name):
            self.problem(path, f"{name!r} may only contain letters, digits, _ . -")
            return None
        return name

    def url(self, path: str, value: Any) -> str | None:
        url = self.string(path, value)
        if url is None:
            return None
        try:
            parts = urlsplit(url)
            if "@" in parts.netloc:
                # Credentials in a URL would end up in logs and labels; they belong in
                # api_key & co.
                self.problem(path, "must not contain user:password@; use the auth keys")
                return None
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            self.problem(path, "is not a valid URL")
            return None
        if parts.scheme not in ("http", "https"):
            self.problem(path, "must start with http:// or https://")
            return None
        if not parts.hostname:
            self.problem(path, "has no host")
            return None
        if parts.query or parts.fragment:
            self.problem(path, "must not have a query or fragment")
            return None
        return url.rstrip("/")

    def ca_file(self, path: str, value: Any) -> str | None:
        ca_file = self.string(path, value)
        if ca_file is None:
            return None
        ca_path = Path(ca_file)
        if not ca_path.is_absolute():
            ca_path = self.base_dir / ca_path
        try:
            with open(ca_path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            # Why, as for the *_file secrets: no such file, a directory, permission.
            self.problem(path, f"cannot read {ca_file}: {exc.strerror or exc}")
        return str(ca_path)

    def timezone(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is not None and zone(name) is None:
            self.problem(path, f"{name!r} is not an IANA time zone (like Europe/Berlin) "
                         "known to this system's tz database")
            return None
        return name


REQUIRED = object()  # a Field default: the key must be set


@dataclass(frozen=True)
class Field:
    """One config key: how its value is checked and what it is when absent.

    `convert` None: an auth key, read by _auth together with the other keys of its method
    (only the method in use is read). `secret`: a credential; `KEY_file` may be set
    instead, naming a file that holds it, and its value is never echoed."""

    key: str
    convert: Callable[[Problems, str, Any], Any] | None
    default: Any = None
    secret: bool = False


# Checked in this order (the order of the problems), every key but name and url also
# allowed under `defaults`.
PORTAL_FIELDS = (
    Field("name", Problems.name, REQUIRED),
    Field("url", Problems.url, REQUIRED),
    Field("timeout", Problems.duration, DEFAULT_TIMEOUT),
    Field("dump", Problems.boolean, False),
    Field("history", Problems.boolean, False),
    Field("insecure_skip_verify", Problems.boolean, False),
    Field("max_response_bytes", Problems.positive_int, DEFAULT_MAX_RESPONSE_BYTES),
    Field("ca_file", Problems.ca_file, None),
    Field("timezone", Problems.timezone, None),
    Field("api_key", None, secret=True),
    Field("token", None, secret=True),
    Field("username", None),
    Field("password", None, secret=True),
)
TOP_FIELDS = (
    Field("max_concurrency", Problems.positive_int, DEFAULT_MAX_CONCURRENCY),
    Field("max_requests_per_host", Problems.positive_int, DEFAULT_MAX_PER_HOST),
)
SECRET_KEYS = tuple(f.key for f in PORTAL_FIELDS if f.secret)
PORTAL_KEYS = ({f.key for f in PORTAL_FIELDS} | {k + "_file" for k in SECRET_KEYS})
DEFAULTABLE_KEYS = PORTAL_KEYS - {f.key for f in PORTAL_FIELDS if f.default is REQUIRED}
TOP_KEYS = {"defaults", "portals"} | {f.key for f in TOP_FIELDS}


def _walk(problems: Problems, fields: tuple[Field, ...], vals: Mapping[str, Any],
          paths: Mapping[str, str], where: str) -> dict[str, Any]:
    """The one loop over a field table: each key's checked value, or its default."""
    out: dict[str, Any] = {}
    for f in fields:
        if f.convert is None:
            continue
        if f.key in vals:
            out[f.key] = f.convert(problems, paths[f.key], vals[f.key])
        elif f.default is REQUIRED:
            problems.problem(f"{where}.{f.key}", "is required")
            out[f.key] = None
        else:
            out[f.key] = f.default
    return out


def _portal(problems: Problems, path: str, raw: Any,
            defaults: dict[str, Any]) -> PortalConfig | None:
    if not isinstance(raw, dict):
        problems.problem(path, "must be a mapping with at least name and url")
        return None
    for key in sorted(set(raw) - PORTAL_KEYS, key=str):
        problems.problem(f"{path}.{key}", "unknown key")
    merged: dict[str, Any] = {}
    for key, value in defaults.items():
        merged[key] = (f"defaults.{key}", value)
    for key, value in raw.items():
        if key in PORTAL_KEYS:
            merged[key] = (f"{path}.{key}", value)
    vals = {k: problems.expand(p, v) for k, (p, v) in merged.items()}
    paths = {k: p for k, (p, _) in merged.items()}
    before = len(problems.problems)
    fields = _walk(problems, PORTAL_FIELDS, vals, paths, path)
    auth = _auth(problems, path, vals, paths)
    if (len(problems.problems) != before or fields["name"] is None or fields["url"] is None
            or auth is None):
        return None
    return PortalConfig(auth=auth, **fields)


def _secret_value(
    problems: Problems, vals: dict[str, Any], paths: dict[str, str], key: str
) -> str | None:
    """Value of `key` or of `key_file`; the caller has checked exactly one is set."""
    if key in vals:
        return problems.string(paths[key], vals[key])
    return problems.read_secret_file(paths[key + "_file"], vals[key + "_file"])


def _auth(problems: Problems, path: str, vals: dict[str, Any],
          paths: dict[str, str]) -> Auth | None:
    methods = []
    if "api_key" in vals or "api_key_file" in vals:
        methods.append("api_key")
    if "token" in vals or "token_file" in vals:
        methods.append("token")
    if "username" in vals or "password" in vals or "password_file" in vals:
        methods.append("username/password")
    for k in SECRET_KEYS:
        if k in vals and k + "_file" in vals:
            problems.problem(f"{path}.{k}", f"set either {k} or {k}_file, not both")
            return None
    if not methods:
        problems.problem(
            path,
            "needs one auth method: api_key(_file), token(_file) or username with password(_file)",
        )
        return None
    if len(methods) > 1:
        problems.problem(
            path, "has more than one auth method (" + ", ".join(methods) + "); keep exactly one"
        )
        return None
    method = methods[0]
    if method == "api_key":
        key = _secret_value(problems, vals, paths, "api_key")
        if key is None:
            return None
        if not key.startswith("sk-"):
            # DocSpace routes a Bearer value to its API-key handler only when it starts
            # with sk-; anything else would fail with 401 at every scrape.
            where = paths.get("api_key") or paths["api_key_file"]
            problems.problem(
                where,
                "a DocSpace API key starts with sk-; for a login token use token or token_file",
            )
            return None
        return ApiKeyAuth(Secret(key))
    if method == "token":
        token = _secret_value(problems, vals, paths, "token")
        return TokenAuth(Secret(token)) if token is not None else None
    if "username" not in vals:
        problems.problem(f"{path}.username", "is required with password")
        return None
    if "password" not in vals and "password_file" not in vals:
        problems.problem(f"{path}.password", "is required with username (or password_file)")
        return None
    username = problems.string(paths["username"], vals["username"])
    password = _secret_value(problems, vals, paths, "password")
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
    problems = Problems(Path(base_dir), os.environ if environ is None else environ)
    if data is None:
        raise ConfigError(["(root): the config is empty; it needs a portals list"])
    if not isinstance(data, dict):
        raise ConfigError(["(root): must be a mapping with a portals list"])
    for key in sorted(set(data) - TOP_KEYS, key=str):
        problems.problem(str(key), "unknown key")

    defaults: dict[str, Any] = {}
    raw_defaults = data.get("defaults")
    if raw_defaults is not None:
        if not isinstance(raw_defaults, dict):
            problems.problem("defaults", "must be a mapping")
        else:
            for key in sorted(set(raw_defaults) - DEFAULTABLE_KEYS, key=str):
                hint = " (set it per portal)" if key in ("name", "url") else ""
                problems.problem(f"defaults.{key}", "unknown key" + hint)
            defaults = {k: v for k, v in raw_defaults.items() if k in DEFAULTABLE_KEYS}

    top = _walk(problems, TOP_FIELDS, data, {k: k for k in data if isinstance(k, str)}, "")

    portals: list[PortalConfig] = []
    raw_portals = data.get("portals")
    if raw_portals is None:
        problems.problem("portals", "is required: a list of portals")
    elif not isinstance(raw_portals, list):
        problems.problem("portals", "must be a list")
    elif not raw_portals:
        problems.problem("portals", "is empty; configure at least one portal")
    else:
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_portals):
            path = f"portals[{i}]"
            portal = _portal(problems, path, raw, defaults)
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str):
                if name in seen:
                    problems.problem(
                        f"{path}.name", f"duplicate name {name!r} (also portals[{seen[name]}])"
                    )
                    portal = None
                else:
                    seen[name] = i
            if portal is not None:
                portals.append(portal)

    if problems.problems:
        raise ConfigError(problems.problems)
    return Config(portals=tuple(portals), source=source, **top)


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
