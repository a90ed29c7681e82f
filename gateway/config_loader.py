"""Reading ``gateway.yaml``: YAML → ``${VAR}`` interpolation → the typed model, with errors that point.

Every error names the file, the **line** and the key path (``auth.keys[0].permissions``): the YAML is
composed into nodes first (``yaml.compose``), so each pydantic error location is mapped back to the mark of
its node; each section of ``surfaces:`` is validated by the settings model of the installed plugin that
offers it, and located the same way. Interpolation happens on the composed scalars, after parsing, so a
value from the environment can never change the structure of the file (a ``:`` or ``#`` in a secret stays
part of the secret).

``${VAR}`` is required (unset → an error naming the variable and the key); ``${VAR:-default}`` falls back
to ``default`` when ``VAR`` is unset or empty (as in POSIX shells and Docker Compose); ``$${`` writes a
literal ``${``. Secrets (every value taken from the environment, every ``key`` and ``secret``) never appear
in an error message.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gateway.auth.policy import ApiKey, digest
from gateway.config import CONFIG_DIR, SURFACE_MODELS, Auth, GatewayConfig, unknown_surface
from gateway.plugins import ConfigError, Plugins, create_plugin_manager

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "ConfigError", "api_keys", "config_path", "load_config"]

#: The environment variable naming the configuration file when ``--config`` is not given.
CONFIG_ENV = "GATEWAY_CONFIG"
DEFAULT_CONFIG = "gateway.yaml"

_Loc = tuple[str | int, ...]

_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_EXPRESSION = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
#: Keys whose values are secrets wherever they appear: scrubbed from every message.
_SECRET_KEYS = frozenset({"key", "secret"})
#: Keys whose values may embed a password (``redis://:pw@host``): values from the environment are scrubbed.
_URL_KEYS = frozenset({"backend", "storage", "url"})
#: Variables whose names say they hold a secret are scrubbed wherever they are used.
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
#: Shorter values are not scrubbed: a "true" or "8080" would garble the message (a valid key is ≥ 16).
_MIN_SCRUB = 8


def config_path(cli_path: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The configuration file: ``--config PATH``, else ``$GATEWAY_CONFIG``, else ``gateway.yaml``."""
    env = os.environ if environ is None else environ
    return Path(cli_path or env.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, plugins: Plugins | None = None
) -> GatewayConfig:
    """Read, interpolate and validate a configuration file.

    :param path: the YAML file.
    :param environ: where ``${VAR}`` is looked up; default :data:`os.environ`.
    :param plugins: the installed plugins, whose surfaces' settings models validate the sections of
        ``surfaces:``; default: those of the ``room_gateway`` entry points.
    :raises ConfigError: the file is missing, unreadable, not YAML, not a mapping, refers to an unset
        variable, or does not validate (a section of ``surfaces:`` included); the message names the file,
        line and key path of every problem.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: no such configuration file (give --config PATH or set {CONFIG_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the configuration: {_describe_os_error(exc)}") from None
    installed = plugins if plugins is not None else Plugins(create_plugin_manager())
    document = _Document(file, text, os.environ if environ is None else environ, installed.surface_models())
    return document.load()


def api_keys(auth: Auth) -> list[ApiKey]:
    """The configured keys as the auth policy holds them: SHA-256 digests, never the key itself."""
    keys = []
    for key in auth.keys:
        if key.key is not None:
            sha256 = digest(key.key.get_secret_value())
        elif key.key_sha256 is not None:
            sha256 = bytes.fromhex(key.key_sha256)
        else:  # the model requires exactly one of the two; a hand-built config might not
            raise ConfigError(f"auth.keys: key {key.name!r} has neither key nor key_sha256")
        keys.append(ApiKey(key.name, sha256, frozenset(key.permissions), tuple(key.rooms)))
    return keys


class _Document:
    """One configuration file on its way to a :class:`GatewayConfig`."""

    def __init__(
        self, file: Path, text: str, environ: Mapping[str, str], surfaces: Mapping[str, type[BaseModel]]
    ) -> None:
        self.file = file
        self.text = text
        self.environ = environ
        self.surfaces = surfaces  # surface name → the settings model of its section
        self.lines: dict[_Loc, int] = {}  # key path → 1-based line of its key (or sequence item)
        self.secrets: set[str] = set()

    def load(self) -> GatewayConfig:
        try:
            loader = yaml.SafeLoader(self.text)
        except yaml.reader.ReaderError as exc:  # the reader checks every character before parsing
            line = self.text.count("\n", 0, exc.position) + 1
            raise ConfigError(
                f"{self.file}: line {line}: character #x{exc.character:04x} is not allowed in YAML"
            ) from None
        try:
            root = loader.get_single_node()
            if root is None:
                raise self._error(1, (), "the file is empty; expected a mapping such as `listen:`, `auth:`")
            if not isinstance(root, yaml.MappingNode):
                raise self._error(_line(root), (), f"expected a mapping of settings, got a {_kind(root)}")
            problems = list(self._walk(root, ()))
            if problems:
                raise ConfigError(self._report(problems))
            data = loader.construct_document(root)
        except yaml.MarkedYAMLError as exc:
            raise ConfigError(self._yaml_error(exc)) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.file}: not valid YAML ({type(exc).__name__})") from None
        finally:
            loader.dispose()
        try:
            context = {SURFACE_MODELS: self.surfaces, CONFIG_DIR: self.file.resolve().parent}
            return GatewayConfig.model_validate(data, context=context)
        except ValidationError as exc:
            raise ConfigError(self._report([self._problem(error) for error in exc.errors()])) from None

    # -- walking the node tree: lines, duplicate keys, interpolation -------------------------------------

    def _walk(self, node: yaml.Node, loc: _Loc) -> Iterator[tuple[int, _Loc, str]]:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
                child = (*loc, key)
                if key in seen:
                    yield _line(key_node), child, "duplicate key (the later one would silently win)"
                seen.add(key)
                self.lines.setdefault(child, _line(key_node))
                # An upstream's metadata carries its credentials (x-api-key: …): every value is a secret.
                secret = key in _SECRET_KEYS or (loc[:1] == ("upstreams",) and loc[-1:] == ("metadata",))
                if secret and isinstance(value_node, yaml.ScalarNode):
                    self._add_secret(value_node.value)
                yield from self._walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*loc, index)
                self.lines.setdefault(child, _line(item))
                yield from self._walk(item, child)
        elif isinstance(node, yaml.ScalarNode) and "$" in node.value:
            try:
                node.value = self._interpolate(node.value, loc)
            except _Unresolved as exc:
                yield _line(node), loc, str(exc)

    def _interpolate(self, text: str, loc: _Loc) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            body = match.group("body")
            expression = _EXPRESSION.fullmatch(body) if body is not None else None
            if expression is None or "${" in (expression.group("default") or ""):
                raise _Unresolved(
                    "malformed variable reference: write ${NAME} or ${NAME:-default} (nesting is not "
                    "supported; $${ writes a literal ${)"
                )
            name, default = expression.group("name"), expression.group("default")
            value = self.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise _Unresolved(_unset_message(name, loc))
                return default
            if _SECRET_NAME.search(name) or any(part in _SECRET_KEYS | _URL_KEYS for part in loc):
                self._add_secret(value)
            return value

        return _REFERENCE.sub(replace, text)

    # -- messages -----------------------------------------------------------------------------------------

    def _problem(self, error: Mapping[str, Any]) -> tuple[int, _Loc, str]:
        loc: _Loc = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden" and loc[:-1] == ("surfaces",):
            message = unknown_surface(str(loc[-1]), self.surfaces)
        elif error["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1], self.surfaces)
            message = "unknown key" + (f" (known here: {', '.join(known)})" if known else "")
        elif error["type"] == "missing":
            message = "required key is missing"
        return self._line_of(loc), loc, message

    def _line_of(self, loc: _Loc) -> int:
        for end in range(len(loc), 0, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return 1

    def _report(self, problems: list[tuple[int, _Loc, str]]) -> str:
        lines = [
            f"{self.file}, line {line}: {_dotted(loc) or '(top level)'}: {message}"
            for line, loc, message in sorted(problems, key=lambda problem: problem[0])
        ]
        return self._scrub("\n".join(lines))

    def _error(self, line: int, loc: _Loc, message: str) -> ConfigError:
        return ConfigError(self._report([(line, loc, message)]))

    def _yaml_error(self, exc: yaml.MarkedYAMLError) -> str:
        # str(exc) quotes the offending lines of the file, which may hold a secret: use the marks only.
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = ": ".join(part for part in (exc.context, exc.problem) if part) or "cannot parse"
        return self._scrub(f"{self.file}{where}: not valid YAML: {problem}")

    def _add_secret(self, value: str) -> None:
        if len(value) >= _MIN_SCRUB:
            self.secrets.add(value)

    def _scrub(self, message: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            message = message.replace(secret, "***")
        return message


class _Unresolved(Exception):
    """A ``${…}`` that cannot be resolved; the message names the variable, never a value."""


def _unset_message(name: str, loc: _Loc) -> str:
    if len(loc) >= 2 and loc[0] == "auth" and loc[-1] == "key":
        fix = f"export {name}=$(room-gateway keys new --raw)"
    else:
        fix = f"export {name}=…, or write ${{{name}:-default}}"
    return f"environment variable {name} is not set ({fix})"


def _dotted(loc: _Loc) -> str:
    """``("auth", "keys", 0, "permissions")`` → ``auth.keys[0].permissions``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: yaml.Node) -> str:
    return "list" if isinstance(node, yaml.SequenceNode) else "single value"


def _describe_os_error(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _known_keys(loc: _Loc, surfaces: Mapping[str, type[BaseModel]]) -> list[str]:
    """The keys the model accepts at ``loc`` (for "unknown key" messages), ``[]`` if not a model there.

    :param surfaces: the settings model of each installed surface, the model of its section.
    """
    annotation: Any = GatewayConfig
    if loc[:1] == ("surfaces",) and len(loc) > 1 and loc[1] in surfaces:
        annotation, loc = surfaces[str(loc[1])], loc[2:]
    for part in loc:
        annotation = _model_in(annotation)
        if annotation is None:
            return []
        if isinstance(part, int):
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
    model = _model_in(annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> Any:
    """The model an annotation holds: itself, the item of a ``list[...]``, the model of an ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
