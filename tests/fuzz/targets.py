"""The pure parsers under coverage-guided fuzzing, one function per target, each taking the fuzzer's bytes.

A parser may refuse its input only with its documented error (``TemplateError``, ``InvalidArgument``,
``ConfigError``); anything else escaping a target is a bug: atheris reports it as a crash, and the input
becomes a regression test (``tests/fuzz/test_regressions.py``). Inputs are plain bytes in a format of each
target's own, so the seed corpus (``tests/fuzz/corpus/<target>/``) is readable and replayable without atheris.

- ``http_rules``: ``<template>\\n<path>``: a path template (``google/api/http.proto``'s grammar), then a raw
  path matched against it and decoded.
- ``json_codec``: ``<binding>\\x00<path value>\\x00<query string>\\x00<body>``: a REST request bound by the
  native service's binding number ``<binding>`` (a decimal), as the edge's transcoder binds it (JSON codec,
  query and path decoders).
- ``config_loader``: a ``gateway.yaml``, loaded with a fixed environment.

Stream positions (``Last-Event-ID``) have no parser yet (issue 11): they get a target when they do.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENVIRONMENT = {"ROOM_API_SECRET_KEY": "fuzz-secret-key-0123456789abcdef", "EMPTY": ""}


def http_rules(data: bytes) -> None:
    from gateway.edge.http_rules import TemplateError, parse_template

    template, _, path = data.decode("utf-8", "replace").partition("\n")
    try:
        parsed = parse_template(template)
    except TemplateError:
        return
    parsed.openapi_path({v.field_path: ".".join(v.field_path) for v in parsed.variables})
    match = parsed.pattern.fullmatch(path)
    if match is not None:
        try:
            parsed.decode(match)
        except UnicodeDecodeError:  # documented: a variable that is not UTF-8 once decoded
            pass


@functools.cache
def _transcoders() -> list[Any]:
    from gateway.edge.http_rules import bindings
    from gateway.edge.json_codec import Codecs
    from gateway.edge.transcoder import Transcoder

    codecs = Codecs()
    return [Transcoder(binding, codecs) for binding in bindings()]


def json_codec(data: bytes) -> None:
    from gateway.errors import InvalidArgument

    number, _, rest = data.partition(b"\x00")
    value, _, rest = rest.partition(b"\x00")
    query, _, body = rest.partition(b"\x00")
    transcoders = _transcoders()
    try:
        transcoder = transcoders[int(number or b"0") % len(transcoders)]
    except ValueError:
        return
    path_value = value.decode("utf-8", "replace")
    path_values = {v.field_path: path_value for v in transcoder.binding.template.variables}
    try:
        transcoder.bind(path_values, query, body, "application/json")
    except InvalidArgument:
        return


@functools.cache
def _config_file() -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "gateway.yaml"


def config_loader(data: bytes) -> None:
    from gateway.config_loader import ConfigError, load_config

    path = _config_file()
    path.write_bytes(data)
    try:
        load_config(path, ENVIRONMENT)
    except ConfigError:
        return


TARGETS: dict[str, Callable[[bytes], None]] = {
    "http_rules": http_rules,
    "json_codec": json_codec,
    "config_loader": config_loader,
}
#: The modules each target exercises: atheris instruments them (coverage-guided) when they are imported.
MODULES = {
    "http_rules": ["gateway.edge.http_rules"],
    "json_codec": ["gateway.edge.json_codec", "gateway.edge.transcoder"],
    "config_loader": ["gateway.config_loader", "gateway.config"],
}
CORPUS = Path(__file__).parent / "corpus"


def corpus(target: str) -> list[Path]:
    return sorted(p for p in (CORPUS / target).iterdir() if p.is_file())
