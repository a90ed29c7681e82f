"""HTTP/2 header blocks of the gRPC port without h2's per-call work: encoded without a dynamic table, the
usual ones once; decoded through a cache of the blocks a connection repeats; sent as frames of our own.

Counted by valgrind (bench/proxy.py instructions), h2's server side of a unary call — decode the request's
headers, encode and frame the answer's headers, message and trailers — was some 40% of the gateway's
instructions for a proxied call. Most of it is work whose result is known in advance; without it, that
side costs 363k instructions a call instead of 766k, and a proxied call 1,096k instead of 1,759k
(bench/RESULTS.md, session 6):

- **encoding** (:class:`BlockEncoder`, the connection's ``encoder``): hpack's encoder looks every header up
  in its dynamic table, Huffman-codes every literal in Python and indexes it. Ours never uses the dynamic
  table: a header is the static table's index when the static table has it whole (``:status 200``), else
  a literal *without indexing* (RFC 7541 §6.2.2) for the few names whose values are the protocol's own
  (:data:`PROTOCOL_FIELDS`: content types, ``grpc-status``…), and *never indexed* (§6.2.3) for everything
  else — metadata may carry secrets, and an intermediary must not index it either. So a block is a pure
  function of its header list, and a list made only of protocol fields (``:status 200`` with
  ``content-type application/grpc``, ``grpc-status 0``) is encoded once per process (:data:`_BLOCKS`,
  bounded); other lists are encoded field by field, their protocol fields from a cache, the rest as plain
  literals (no Huffman: nothing computed per byte). The peer's ``SETTINGS_HEADER_TABLE_SIZE`` only bounds
  the table we may use: we use none, but a change of it is still answered with a table size update to 0
  at the start of the next block (§4.2: a decoder may insist on one after it shrinks its table);
- **decoding** (:class:`CachingDecoder`, the connection's ``decoder``): a client that repeats its headers
  sends the same bytes again (indexed references to its earlier literals), and HPACK decoding is a function
  of the block's bytes, the dynamic table and the decoder's limits. So a block that decoded without
  changing the table is kept with its headers until the table or a limit changes, or the cache is full
  (:data:`DECODED_BLOCKS` blocks of at most :data:`DECODED_BLOCK_BYTES` per connection); a block that
  inserts into the table, resizes it or fails is never kept;
- **framing** (:class:`ServerConnection`, the connection's h2 state machine): ``send_headers`` and
  ``send_data`` on a stream h2 knows take the stream's and the connection's state transitions as h2 does
  (an answer on a closed stream raises as before; a DATA frame beyond a window or the frame size is left to
  h2, which refuses it), then write the frame (HEADERS with CONTINUATIONs past the peer's frame size, DATA)
  themselves, skipping h2's per-header conversions and frame objects.

The same decoder reads the upstream's answers on the front proxy's client connections
(:mod:`gateway.upstream.connection`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from h2.connection import ConnectionInputs, H2Connection
from h2.exceptions import ProtocolError
from h2.stream import StreamInputs
from hpack import Decoder, HeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

#: Header names whose values are the protocol's own, never a secret: their literals are not indexed
#: (RFC 7541 §6.2.2) and cached, and a header list made only of them is encoded once per process.
PROTOCOL_FIELDS = frozenset(
    {":status", "content-type", "grpc-status", "grpc-encoding", "grpc-accept-encoding", "te"}
)
#: Entries of each process-wide encoding cache; when one is full it starts again empty.
ENCODED_ENTRIES = 128
#: Header blocks each connection's decoder keeps, and the largest one kept (bytes): a client repeats a
#: block or a few (one per method it calls), of a few bytes once its headers are in its table; so that a
#: connection pins little memory (a kept list's names and values are mostly the table's own objects).
DECODED_BLOCKS = 8
DECODED_BLOCK_BYTES = 512

_PROTOCOL_NAMES = frozenset(name.encode("ascii") for name in PROTOCOL_FIELDS)
#: An HTTP/2 frame header (RFC 9113 §4.1): length (24 bits, as 16 + 8), type, flags, stream id.
FRAME = struct.Struct(">HBBBL")
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
_TABLE_SIZE_ZERO = b"\x20"  # a dynamic table size update to 0 (RFC 7541 §6.3)

#: HPACK's static table (RFC 7541 Appendix A): whole fields, and the first index of each name.
_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
#: Encoded header lists made only of protocol fields, by the list as given (names and values as ``str`` or
#: ``bytes``, as h2 or grpclib pass them), and encoded protocol fields, by field.
_BLOCKS: dict[tuple[Any, ...], bytes] = {}
_FIELDS: dict[tuple[Any, Any], bytes] = {}
#: The name part of a literal, by the name and whether it is never indexed.
_NAME_PREFIXES: dict[tuple[bytes, bool], bytes] = {}


def integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) whose first byte carries ``first`` above its prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string(value: bytes) -> bytes:
    """An HPACK string literal, not Huffman-coded (RFC 7541 §5.2): nothing to compute per byte."""
    return integer(len(value), 7, 0) + value


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)  # as hpack's encoder does


def literal_field(name: bytes, value: bytes, *, never_indexed: bool, huffman: bool = False) -> bytes:
    """One header as an HPACK literal that leaves the decoder's table alone (RFC 7541 §6.2.2, §6.2.3), its
    name from the static table when the table has it; the value Huffman-coded if asked and shorter."""
    prefix = _NAME_PREFIXES.get((name, never_indexed))
    if prefix is None:  # a name's part is the same for every value (names are not secrets: values may be)
        first = 0x10 if never_indexed else 0x00
        index = _STATIC_NAMES.get(name)
        prefix = integer(index, 4, first) if index is not None else bytes((first,)) + string(name)
        _remember(_NAME_PREFIXES, (name, never_indexed), prefix)
    if huffman:
        coded = _huffman.encode(value)
        if len(coded) < len(value):
            return prefix + integer(len(coded), 7, 0x80) + coded
    length = len(value)
    if length < 0x7F:  # the usual value: its length in one byte
        return prefix + bytes((length,)) + value
    return prefix + string(value)


def _protocol_field(name: bytes, value: bytes) -> bytes:
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        return integer(index, 7, 0x80)  # indexed (RFC 7541 §6.1)
    return literal_field(name, value, never_indexed=False, huffman=True)  # encoded once: worth the bytes


def encode_block(headers: Iterable[Any]) -> bytes:
    """A header list as an HPACK block that uses no dynamic table (see the module docstring).

    :param headers: ``(name, value)`` pairs of ``str`` or ``bytes``, or ``(name, value, sensitive)`` triples,
        or hpack's :class:`~hpack.HeaderTuple` / ``NeverIndexedHeaderTuple``; pseudo-headers first. A mark
        of sensitivity changes nothing: every field but the protocol's is never indexed anyway, and a
        protocol field is encoded by its name and value alone (it is never a secret, and a block found in
        the cache is the same block however its fields were marked: hpack's marked tuples compare equal).
    """
    fields = tuple(headers)
    try:
        block = _BLOCKS.get(fields)
        cacheable = True
    except TypeError:  # a header given as a list: encoded, not cached
        block, cacheable = None, False
    if block is not None:
        return block
    out = []
    for header in fields:
        name, value = _bytes(header[0]), _bytes(header[1])
        if name not in _PROTOCOL_NAMES:  # never indexed, whether marked sensitive or not
            out.append(literal_field(name, value, never_indexed=True))
            cacheable = False
            continue
        field = _FIELDS.get((name, value))
        if field is None:
            field = _protocol_field(name, value)
            _remember(_FIELDS, (name, value), field)
        out.append(field)
    block = b"".join(out)
    if cacheable:
        _remember(_BLOCKS, fields, block)
    return block


def _remember(cache: dict[Any, bytes], key: Any, value: bytes) -> None:
    if len(cache) >= ENCODED_ENTRIES:  # bounded whatever the headers: a client's content type, say
        cache.clear()
    cache[key] = value


class BlockEncoder:
    """The encoder of a server connection (h2's ``H2Connection.encoder``): :func:`encode_block`, and a
    table size update to 0 at the start of the first block after the peer changed its table size."""

    __slots__ = ("_size", "_update")

    def __init__(self) -> None:
        self._size = HeaderTable.DEFAULT_SIZE
        self._update = False

    @property
    def header_table_size(self) -> int:
        """The peer's ``SETTINGS_HEADER_TABLE_SIZE`` (h2 sets it): the most we may use; we use none."""
        return self._size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        if value != self._size:
            self._size = value
            self._update = True

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """The block of ``headers`` (hpack's signature: protocol fields are Huffman-coded, once, whatever
        ``huffman`` says; other literals are not)."""
        if isinstance(headers, dict):
            headers = sorted(headers.items(), key=lambda item: not _bytes(item[0]).startswith(b":"))
        block = encode_block(headers)
        if self._update:
            self._update = False
            return _TABLE_SIZE_ZERO + block
        return block


class _CountedTable(HeaderTable):
    """hpack's header table, counting its changes (an insertion, a resize): a cached block is valid for
    one state of the table."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property  # hpack's property, counted
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class CachingDecoder(Decoder):
    """hpack's decoder, keeping the blocks that decoded without changing its table (module docstring)."""

    def __init__(self, max_header_list_size: int = 2**16) -> None:
        # Kept blocks, by the block: decoded as bytes (``raw``, as h2 asks) and as text.
        self._caches: tuple[dict[bytes, list[HeaderTuple]], dict[bytes, list[HeaderTuple]]] = ({}, {})
        self._max_list = max_header_list_size
        self._max_table = HeaderTable.DEFAULT_SIZE
        super().__init__(max_header_list_size)
        self.header_table = _CountedTable()
        self._changes = 0

    def _forget(self) -> None:
        for cache in self._caches:
            cache.clear()

    # The limits a block was checked against are part of what it decodes to: a change empties the cache.
    @property
    def max_header_list_size(self) -> int:
        return self._max_list

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._max_list = value
        self._forget()

    @property
    def max_allowed_table_size(self) -> int:
        return self._max_table

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self._max_table = value
        self._forget()

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        table: _CountedTable = self.header_table  # type: ignore[assignment]  # set in __init__
        if table.changes != self._changes:  # since the blocks were kept: one that failed half-way, say
            self._changes = table.changes
            self._forget()
        cache = self._caches[raw]
        kept = type(data) is bytes  # not a buffer that may change under the key
        headers = cache.get(data) if kept else None
        if headers is not None:
            return list(headers)  # the caller's own list: h2 does not change it, but may keep it
        headers = list(super().decode(data, raw))
        if table.changes != self._changes:  # this block changed the table: it is not kept, nor the others
            self._changes = table.changes
            self._forget()
        elif kept and len(data) <= DECODED_BLOCK_BYTES:
            if len(cache) >= DECODED_BLOCKS:
                cache.clear()
            cache[data] = headers
            return list(headers)
        return headers


class ServerConnection(H2Connection):
    """h2's connection state machine with :class:`BlockEncoder`, :class:`CachingDecoder`, and HEADERS
    frames written here (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = BlockEncoder()  # type: ignore[assignment]  # hpack's Encoder's interface, as h2 uses it
        self.decoder = CachingDecoder()
        self.decoder.max_header_list_size = self.DEFAULT_MAX_HEADER_LIST_SIZE  # as h2's __init__ sets it

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        stream = self.streams.get(stream_id)
        if (
            stream is None  # h2 opens it, or refuses to
            or not isinstance(headers, list)
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or _informational(headers)
        ):
            super().send_headers(
                stream_id, headers, end_stream, priority_weight, priority_depends_on, priority_exclusive
            )
            return
        # h2's H2Connection.send_headers and H2Stream.send_headers, in their order, for a server's answer:
        # the state transitions raise as h2's do (a closed stream, trailers twice, a closed connection).
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)
        block = self.encoder.encode(headers)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        elif machine.trailers_sent:
            raise ProtocolError("Trailers must have END_STREAM set.")
        self._data_to_send += header_frames(
            stream_id, block, end_stream=end_stream, max_frame=self.max_outbound_frame_size
        )

    def send_data(
        self, stream_id: int, data: bytes | memoryview, end_stream: bool = False, pad_length: Any = None
    ) -> None:
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            stream is None  # h2 raises as it should
            or pad_length is not None
            or not size  # an empty frame: h2 takes no window for it
            or size > self.max_outbound_frame_size  # h2 refuses it
            or size > self.outbound_flow_control_window  # h2 refuses it
            or size > stream.outbound_flow_control_window
        ):
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        # h2's H2Connection.send_data and H2Stream.send_data, in their order: the transitions first (a closed
        # stream raises, its windows untouched), then the windows, then the frame.
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        out = self._data_to_send
        out += FRAME.pack(size >> 8, size & 0xFF, _DATA, _END_STREAM if end_stream else 0, stream_id)
        out += data


def header_frames(stream_id: int, block: bytes, *, end_stream: bool, max_frame: int) -> bytes:
    """A header block as a HEADERS frame, and CONTINUATION frames after it when it is longer than
    ``max_frame`` (END_STREAM on the HEADERS frame, END_HEADERS on the last one, RFC 9113 §6.2, §6.10)."""
    first_flags = _END_STREAM if end_stream else 0
    length = len(block)
    if length <= max_frame:
        return FRAME.pack(length >> 8, length & 0xFF, _HEADERS, first_flags | _END_HEADERS, stream_id) + block
    out = bytearray()
    kind, flags = _HEADERS, first_flags
    for start in range(0, length, max_frame):
        chunk = block[start : start + max_frame]
        if start + max_frame >= length:
            flags |= _END_HEADERS
        size = len(chunk)
        out += FRAME.pack(size >> 8, size & 0xFF, kind, flags, stream_id)
        out += chunk
        kind, flags = _CONTINUATION, 0
    return bytes(out)


def _informational(headers: list[Any]) -> bool:
    """A 1xx answer (h2's ``is_informational_response``: its own path, END_STREAM refused)."""
    if not headers:
        return False
    name, value = headers[0][0], headers[0][1]
    return name in (":status", b":status") and _bytes(value).startswith(b"1")
