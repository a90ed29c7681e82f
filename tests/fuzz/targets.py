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
- ``stream_positions``: ``<Last-Event-ID>\n<query string>``: the position a resumable stream (ListenRoom,
  ListenEvents) is asked to resume from, as the edge takes it: the query's ``afterSeq``/``epoch`` bound by the
  stream's transcoder, then the header (decoded as Latin-1, as the edge reads it) parsed by
  :func:`~gateway.edge.streams.resume_position`, which wins. What comes out must fit the request message
  (``after_seq`` an int64, ``epoch`` a string): the stores take it as it is (a larger seq was a 500 on
  SQLite).
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


@functools.cache
def _resumable() -> list[Any]:
    """The transcoders of the resumable streams: those whose request has the log position's fields (as
    :class:`gateway.edge.routing.TranscodedRoute` decides)."""
    return [
        t
        for t in _transcoders()
        if t.binding.method.server_streaming
        and {"after_seq", "epoch"} <= set(t.binding.method.input.fields_by_name)
    ]


INT64_MAX = 2**63 - 1


def stream_positions(data: bytes) -> None:
    from gateway.edge.streams import resume_position
    from gateway.errors import InvalidArgument

    header, _, query = data.partition(b"\n")
    last_event_id = header.decode("latin-1")
    for transcoder in _resumable():
        path_values = {v.field_path: "r" for v in transcoder.binding.template.variables}
        try:
            request = transcoder.bind(path_values, query, b"", None)
            if last_event_id:
                request.update(resume_position(last_event_id))
        except InvalidArgument:
            continue
        seq, epoch = request.get("after_seq"), request.get("epoch", "")
        # Comparisons, not a range lookup: atheris sees their operands (-use_value_profile) and can aim.
        assert seq is None or (type(seq) is int and -INT64_MAX - 1 <= seq <= INT64_MAX), f"after_seq {seq!r}"
        assert type(epoch) is str, f"epoch {epoch!r} is not a string"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "http_rules": http_rules,
    "json_codec": json_codec,
    "config_loader": config_loader,
    "stream_positions": stream_positions,
}
#: The modules each target exercises: atheris instruments them (coverage-guided) when they are imported.
MODULES = {
    "http_rules": ["gateway.edge.http_rules"],
    "json_codec": ["gateway.edge.json_codec", "gateway.edge.transcoder"],
    "config_loader": ["gateway.config_loader", "gateway.config"],
    "stream_positions": ["gateway.edge.streams", "gateway.edge.transcoder", "gateway.edge.json_codec"],
}
CORPUS = Path(__file__).parent / "corpus"


def corpus(target: str) -> list[Path]:
    return sorted(p for p in (CORPUS / target).iterdir() if p.is_file())
