"""The ``google.api.http`` rules of the native service, read from the descriptor set and parsed.

Each RPC of ``roomgateway.v1.RoomService`` carries an ``HttpRule`` (``google/api/http.proto``): one HTTP
method and path template, a ``body`` selector and optional ``additional_bindings``. This module turns every
rule and additional binding into a :class:`Binding` whose :class:`PathTemplate` is parsed by the grammar of
``google/api/http.proto`` ("Path template syntax")::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

and the rules stated next to it: ``{var}`` is ``{var=*}``; ``**`` matches zero or more segments and must be
the last part of the path except the verb; a variable template contains no variable; path variables never
refer to repeated or map fields.

Matching is done on the *raw* (still percent-encoded) path, so that ``%2F`` inside a room id is not taken
for a separator: a single-segment variable is percent-decoded entirely after matching, a multi-segment one
"except %2F and %2f" (both as ``http.proto`` says).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from gateway import schema
from gateway.dispatch import Method, native_methods

#: HttpRule ``pattern`` oneof case → HTTP method.
_PATTERNS = ("get", "put", "post", "delete", "patch")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters a LITERAL may hold unencoded in a path: RFC 3986 pchar without ":" (the verb separator).
_LITERAL_SAFE = "-._~!$&'()*+,;=@"


class TemplateError(ValueError):
    """A path template that does not follow the ``google/api/http.proto`` grammar."""


@dataclass(frozen=True, slots=True)
class Literal:
    """A ``LITERAL`` segment."""

    text: str


@dataclass(frozen=True, slots=True)
class Wildcard:
    """``*`` (one segment) or ``**`` (zero or more segments, last but the verb)."""

    multi: bool


@dataclass(frozen=True, slots=True)
class Variable:
    """``{field.path=segments}``; ``segments`` is ``(Wildcard(False),)`` for ``{field.path}``."""

    field_path: tuple[str, ...]
    segments: tuple[Literal | Wildcard, ...]

    @property
    def multi_segment(self) -> bool:
        """Whether the variable can span several segments (then ``%2F`` stays encoded when decoding)."""
        return len(self.segments) > 1 or any(isinstance(s, Wildcard) and s.multi for s in self.segments)


Segment = Literal | Wildcard | Variable


@dataclass(frozen=True)
class PathTemplate:
    """A parsed path template; :attr:`pattern` matches a raw path and captures each variable in order."""

    template: str
    segments: tuple[Segment, ...]
    verb: str | None
    pattern: re.Pattern[str]

    @functools.cached_property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(s for s in self.segments if isinstance(s, Variable))

    @functools.cached_property
    def fixed_path(self) -> str | None:
        """The one raw path the template matches when it has no variable and no wildcard (``/v1/rooms``,
        ``/bench.Echo/Say``, ``/v1/connections:invalidate``), as :attr:`pattern` matches it; else ``None``."""
        literals = [s.text for s in self.segments if isinstance(s, Literal)]
        if len(literals) != len(self.segments):
            return None
        path = "".join("/" + quote(text, safe=_LITERAL_SAFE) for text in literals)
        return path + (":" + quote(self.verb, safe=_LITERAL_SAFE) if self.verb is not None else "")

    @property
    def literal_count(self) -> int:
        return sum(isinstance(s, Literal) for s in self.segments)

    def decode(self, match: re.Match[str]) -> dict[tuple[str, ...], str]:
        """The percent-decoded value of each variable of a raw-path match, by field path.

        :raises UnicodeDecodeError: a variable is not UTF-8 once decoded.
        """
        values = {}
        for variable, raw in zip(self.variables, match.groups(), strict=True):
            if "%" not in raw:
                decoded = raw
            elif variable.multi_segment:
                # http.proto: "The server side does the reverse decoding, except "%2F" and "%2f" are left
                # unchanged."
                decoded = "%2F".join(_unquote(part) for part in re.split("%2[Ff]", raw))
            else:
                decoded = _unquote(raw)
            values[variable.field_path] = decoded
        return values

    def openapi_path(self, names: dict[tuple[str, ...], str]) -> str:
        """The template as an OpenAPI path, each variable named by ``names[field_path]``."""
        parts = []
        for segment in self.segments:
            if isinstance(segment, Literal):
                parts.append(segment.text)
            elif isinstance(segment, Wildcard):
                parts.append("**" if segment.multi else "*")
            else:
                parts.append("{" + names[segment.field_path] + "}")
        return "/" + "/".join(parts) + (":" + self.verb if self.verb else "")


def _unquote(raw: str) -> str:
    return unquote(raw, encoding="utf-8", errors="strict")


def parse_template(template: str) -> PathTemplate:
    """Parse ``template`` by the ``google/api/http.proto`` grammar.

    :raises TemplateError: the template does not follow the grammar.
    """
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a template starts with '/'")
    parser = _Parser(template, 1)
    segments = parser.segments(in_variable=False)
    verb = None
    if parser.peek() == ":":
        parser.pos += 1
        verb = parser.literal()
        if not verb:
            raise TemplateError(f"{template!r}: empty verb")
    if parser.pos != len(template):
        raise TemplateError(f"{template!r}: unexpected {template[parser.pos]!r} at {parser.pos}")
    flat = [s for seg in segments for s in (seg.segments if isinstance(seg, Variable) else (seg,))]
    for i, seg in enumerate(flat):
        if isinstance(seg, Wildcard) and seg.multi and i != len(flat) - 1:
            raise TemplateError(f"{template!r}: '**' must be the last segment (but the verb)")
    return PathTemplate(template, tuple(segments), verb, _compile(segments, verb))


class _Parser:
    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def segments(self, *, in_variable: bool) -> list[Segment]:
        found = [self.segment(in_variable=in_variable)]
        while self.peek() == "/":
            self.pos += 1
            found.append(self.segment(in_variable=in_variable))
        return found

    def segment(self, *, in_variable: bool) -> Segment:
        if self.text.startswith("**", self.pos):
            self.pos += 2
            return Wildcard(multi=True)
        if self.peek() == "*":
            self.pos += 1
            return Wildcard(multi=False)
        if self.peek() == "{":
            if in_variable:
                raise TemplateError(f"{self.text!r}: a variable template must not contain variables")
            return self.variable()
        text = self.literal()
        if not text:
            raise TemplateError(f"{self.text!r}: empty segment at {self.pos}")
        return Literal(text)

    def variable(self) -> Variable:
        self.pos += 1  # "{"
        path = []
        while True:
            ident = _IDENT.match(self.text, self.pos)
            if ident is None:
                raise TemplateError(f"{self.text!r}: expected a field name at {self.pos}")
            path.append(ident.group())
            self.pos = ident.end()
            if self.peek() != ".":
                break
            self.pos += 1
        segments: list[Segment] = [Wildcard(multi=False)]
        if self.peek() == "=":
            self.pos += 1
            segments = self.segments(in_variable=True)
        if self.peek() != "}":
            raise TemplateError(f"{self.text!r}: expected '}}' at {self.pos}")
        self.pos += 1
        return Variable(tuple(path), tuple(s for s in segments if not isinstance(s, Variable)))

    def literal(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in "/:{}=*":
            self.pos += 1
        return self.text[start : self.pos]


def _compile(segments: list[Segment], verb: str | None) -> re.Pattern[str]:
    """A regex over the raw path (without query string), one group per variable."""

    def piece(segment: Literal | Wildcard) -> str:
        if isinstance(segment, Literal):
            # http.proto: reserved characters of a LITERAL "should be percent-encoded before the matching".
            return re.escape(quote(segment.text, safe=_LITERAL_SAFE))
        # Segments are never empty: "/v1/rooms//contents" names no room.
        return r"[^/]+(?:/[^/]+)*" if segment.multi else r"[^/]+"

    regex = ""
    for segment in segments:
        if isinstance(segment, Variable):
            regex += "/(" + "/".join(piece(s) for s in segment.segments) + ")"
        elif isinstance(segment, Wildcard) and segment.multi:
            regex += r"(?:/[^/]+)*"  # zero or more segments
        else:
            regex += "/" + piece(segment)
    if verb is not None:
        regex += ":" + re.escape(quote(verb, safe=_LITERAL_SAFE))
    return re.compile(regex)


@dataclass(frozen=True, slots=True)
class Binding:
    """One HTTP binding of a method: the rule itself or one of its ``additional_bindings``.

    :ivar body: ``""`` (no body), ``"*"`` (every field not bound by the path) or a top-level field name.
    """

    method: Method
    http_method: str
    template: PathTemplate
    body: str
    response_body: str


def rule_of(descriptor_method: MethodDescriptor) -> http_pb2.HttpRule | None:
    """The ``google.api.http`` option of a method descriptor, ``None`` when it has none."""
    options = descriptor_method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def bindings(methods: dict[str, Method] | None = None) -> list[Binding]:
    """Every HTTP binding of the native service, in proto order, additional bindings after their rule.

    :raises TemplateError: a template breaks the grammar or names a field the request does not have.
    """
    methods = native_methods() if methods is None else methods
    found = []
    for descriptor_method in schema.service().methods:
        rule = rule_of(descriptor_method)
        if rule is None:
            continue
        method = methods[descriptor_method.name]
        for one in (rule, *rule.additional_bindings):
            found.append(binding(method, one))
    return found


def binding(method: Method, rule: http_pb2.HttpRule) -> Binding:
    """One rule (or additional binding) of ``method``, checked against its request message.

    :raises TemplateError: the template breaks the grammar or names a field the request does not have.
    """
    kind = rule.WhichOneof("pattern")
    if kind in _PATTERNS:
        http_method, template = kind.upper(), getattr(rule, kind)
    elif kind == "custom":
        http_method, template = rule.custom.kind.upper(), rule.custom.path
    else:
        raise TemplateError(f"{method.name}: HttpRule without a pattern")
    parsed = parse_template(template)
    seen = set()
    for variable in parsed.variables:
        field = resolve(method.input, variable.field_path)
        if field.is_repeated:
            raise TemplateError(f"{method.name} {template!r}: path variables must not be repeated fields")
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            raise TemplateError(f"{method.name} {template!r}: {'.'.join(variable.field_path)} is a message")
        if variable.field_path in seen:
            raise TemplateError(f"{method.name} {template!r}: {'.'.join(variable.field_path)} bound twice")
        seen.add(variable.field_path)
    if rule.body not in ("", "*"):
        resolve(method.input, (rule.body,))
    return Binding(method, http_method, parsed, rule.body, rule.response_body)


def resolve(message: Descriptor, field_path: tuple[str, ...]) -> FieldDescriptor:
    """The field a dotted path names, walking nested messages (:func:`gateway.schema.field_at`).

    :raises TemplateError: a name along the path is not a field.
    """
    try:
        return schema.field_at(message, field_path)
    except LookupError as exc:
        raise TemplateError(str(exc)) from None
