"""One HTTP binding's request side: path variables, body and query string → the method's keyword arguments.

It follows "Rules for HTTP mapping" in ``google/api/http.proto``: fields named in the path template come
from the path; ``body: "*"`` takes every other field from the body and leaves no query parameter;
``body: "<field>"`` makes the body that field; every remaining leaf field is a query parameter named by its
field path (a repeated field as repeated parameters). Like grpc-gateway, a binding whose body is a message
field and whose request has an ``update_mask`` FieldMask infers the mask from the body's keys when the
client does not send one, so a PATCH changes exactly the fields it names.

Everything here is strict: an unknown query parameter, a field given both in the path and (differently) in
the body, a body that is not JSON — each is an :class:`~gateway.errors.InvalidArgument` (400), a body that is
not ``application/json`` a 415.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway import schema
from gateway.edge.http_rules import Binding
from gateway.edge.json_codec import Codecs, Decoder, MessageCodec
from gateway.errors import InvalidArgument
from gateway.schema.fields import DURATION, FIELD_MASK, TIMESTAMP, WRAPPERS, is_field_mask, is_map, is_wkt

#: Leaf message types that travel as one string in a query parameter.
_QUERY_MESSAGES = WRAPPERS | {TIMESTAMP, DURATION, FIELD_MASK}
_MAX_QUERY_DEPTH = 8
_MASK_FIELD = "update_mask"


class UnsupportedMediaType(InvalidArgument):
    """A request body that is not JSON (415)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, http_status=415)


class Transcoder:
    """Binds requests of one :class:`~gateway.edge.http_rules.Binding` (compiled once at start-up).

    :param binding: the HTTP binding.
    :param codecs: the shared message codecs.
    """

    def __init__(self, binding: Binding, codecs: Codecs) -> None:
        self.binding = binding
        method = binding.method
        self.input: MessageCodec = codecs.get(method.input)
        self.output: MessageCodec = codecs.get(method.output)
        self.body = binding.body
        self.takes_body = bool(binding.body)
        #: Per path variable: its field path, the messages holding it (``()``: a field of the request
        #: itself), its field's name, its JSON path (for messages), and its decoder.
        self._path: list[tuple[tuple[str, ...], tuple[str, ...], str, str, Decoder]] = [
            (
                v.field_path,
                v.field_path[:-1],
                v.field_path[-1],
                schema.json_path(method.input, v.field_path),
                codecs.query_decoder(schema.field_at(method.input, v.field_path)),
            )
            for v in binding.template.variables
        ]
        self._body_field: FieldDescriptor | None = None
        self._body_codec: MessageCodec | None = None
        if self.body not in ("", "*"):
            field = method.input.fields_by_name[self.body]
            self._body_field = field
            if field.message_type is not None and not is_wkt(field) and not field.is_repeated:
                self._body_codec = codecs.get(field.message_type)
        bound = {v.field_path for v in binding.template.variables}
        #: query parameter name (proto or JSON field path) → (field path, decoder, repeated)
        self.query: dict[str, tuple[tuple[str, ...], Decoder, bool]] = {}
        if self.body != "*":
            for path, json_path, field in query_fields(method.input, (), (), bound, self.body):
                entry = (path, codecs.query_decoder(field), field.is_repeated)
                self.query[".".join(path)] = entry
                self.query[".".join(json_path)] = entry
        mask = method.input.fields_by_name.get(_MASK_FIELD)
        self._codecs = codecs
        #: The body's codec when the update mask is inferred from the body's keys.
        self._mask_codec = (
            self._body_codec
            if mask is not None and is_field_mask(mask) and (_MASK_FIELD,) not in bound
            else None
        )

    def bind(self, path_values: dict[tuple[str, ...], str], query_string: bytes, body: bytes,
             content_type: str | None) -> dict[str, Any]:  # fmt: skip
        """The keyword arguments of the call.

        :param path_values: percent-decoded path variables by field path.
        :param query_string: the raw query string.
        :param body: the request body (``b""`` when none was sent).
        :param content_type: the ``Content-Type`` header, if any.
        :raises InvalidArgument: bad input of any kind (415 for a non-JSON body).
        """
        kwargs: dict[str, Any] = {}
        raw_body: Any = None
        if body:
            if not self.takes_body:
                raise InvalidArgument(
                    f"{self.binding.http_method} {self.binding.template.template} takes no body"
                )
            raw_body = parse_json(body, content_type)
        if self.body == "*":
            kwargs = self.input.decode({} if raw_body is None else raw_body)
        elif self._body_field is not None:
            where = self._body_field.json_name
            if self._body_codec is not None:
                kwargs[self.body] = self._body_codec.decode({} if raw_body is None else raw_body, where)
            elif raw_body is not None:
                kwargs = self.input.decode({self.body: raw_body})
        for field_path, parents, name, where, decode in self._path:
            value = decode(path_values[field_path], where)
            container = _container(kwargs, parents, where) if parents else kwargs
            if name in container and container[name] != value:
                raise InvalidArgument(f"{where} differs between the URL path ({value!r}) and the body")
            container[name] = value
        if query_string:
            self._bind_query(kwargs, query_string)
        if self._mask_codec is not None and _MASK_FIELD not in kwargs:
            kwargs[_MASK_FIELD] = list(_mask_paths(self._codecs, self._mask_codec, raw_body or {}, ""))
        return kwargs

    def _bind_query(self, kwargs: dict[str, Any], query_string: bytes) -> None:
        given: set[tuple[str, ...]] = set()
        for key, value in query_pairs(query_string):
            entry = self.query.get(key)
            if entry is None:
                raise InvalidArgument(f"unknown query parameter {key!r}")
            path, decode, repeated = entry
            decoded = decode(value, key)
            if repeated:
                _container(kwargs, path[:-1], key).setdefault(path[-1], []).append(decoded)
            elif path in given:
                raise InvalidArgument(f"query parameter {key!r} is given more than once")
            else:
                given.add(path)
                _container(kwargs, path[:-1], key)[path[-1]] = decoded


def parse_json(body: bytes, content_type: str | None) -> Any:
    """Parse a request body that must be JSON.

    :raises UnsupportedMediaType: the ``Content-Type`` is not ``application/json`` (parameters allowed).
    :raises InvalidArgument: the body is not well-formed JSON.
    """
    if content_type != "application/json":  # what clients send, as is: nothing to take apart
        media_type = (content_type or "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType(
                "the request body must be JSON (Content-Type: application/json), "
                f"not {content_type or 'untyped'!r}"
            )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None


def _container(kwargs: dict[str, Any], parents: tuple[str, ...], where: str) -> dict[str, Any]:
    """The message (a dict in ``kwargs``) the field under ``parents`` belongs to, made if missing."""
    container = kwargs
    for name in parents:
        inner = container.setdefault(name, {})
        if not isinstance(inner, dict):
            raise InvalidArgument(f"{where} conflicts with the body")
        container = inner
    return container


def query_pairs(query_string: bytes) -> list[tuple[str, str]]:
    """The query string's ``(name, value)`` pairs, percent-decoded as UTF-8, blank values kept.

    :raises InvalidArgument: a name or value is not UTF-8 once decoded.
    """
    try:
        return parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("the query string is not valid UTF-8") from None


def query_fields(
    message: Descriptor,
    path: tuple[str, ...],
    json_path: tuple[str, ...],
    bound: set[tuple[str, ...]],
    body: str,
) -> Iterator[tuple[tuple[str, ...], tuple[str, ...], FieldDescriptor]]:
    """The leaf fields left to the query string: not bound by the path, not the body, not maps (each as its
    field path, its JSON path and its descriptor)."""
    for field in message.fields:
        here, json_here = (*path, field.name), (*json_path, field.json_name)
        if here in bound or (not path and field.name == body) or is_map(field):
            continue
        if field.message_type is None or field.message_type.full_name in _QUERY_MESSAGES:
            yield here, json_here, field
        elif not is_wkt(field) and not field.is_repeated and len(here) < _MAX_QUERY_DEPTH:
            yield from query_fields(field.message_type, here, json_here, bound, body)


def _mask_paths(codecs: Codecs, codec: MessageCodec, body: Any, prefix: str) -> Iterator[str]:
    """The FieldMask of a PATCH body: one path per key, nested messages walked (grpc-gateway's
    ``FieldMaskFromRequestBody``); a ``Struct`` or ``Value`` is a leaf."""
    for key, value in body.items():
        name = codec.names[key]
        field = codec.fields[name]
        if (
            isinstance(value, dict)
            and field.message_type is not None
            and not is_wkt(field)
            and not is_map(field)
            and not field.is_repeated
        ):
            yield from _mask_paths(codecs, codecs.get(field.message_type), value, f"{prefix}{name}.")
        else:
            yield prefix + name
