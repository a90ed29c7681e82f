"""HeaderBlockScanner follows frame headers however the input is cut: a header block over the limit is
caught in the frame that crosses it, a block within it (and any DATA) passes."""

from __future__ import annotations

import pytest

from gateway.rpc.h2limits import HeaderBlockScanner

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, CONTINUATION, DATA = 0x1, 0x9, 0x0
END_HEADERS = 0x4


def frame(kind: int, payload: bytes, flags: int = 0, stream: int = 1) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def fed(scanner: HeaderBlockScanner, data: bytes, cut: int) -> bool:
    """Feed ``data`` in pieces of ``cut`` bytes; whether every piece passed."""
    return all(scanner.scan(data[at : at + cut]) for at in range(0, len(data), cut))


@pytest.mark.parametrize("cut", [1, 2, 7, 9, 10, 64, 100_000])
def test_blocks_within_the_limit_pass_and_larger_ones_are_caught(cut: int) -> None:
    fine = PREFACE + frame(HEADERS, b"h" * 600) + frame(CONTINUATION, b"c" * 300, END_HEADERS)
    fine += frame(DATA, b"d" * 5000) + frame(HEADERS, b"h" * 900, END_HEADERS, stream=3)
    assert fed(HeaderBlockScanner(1024), fine, cut)
    too_large = PREFACE + frame(HEADERS, b"h" * 600) + frame(CONTINUATION, b"c" * 800)  # > 1024 + padding
    too_large += frame(CONTINUATION, b"c" * 10, END_HEADERS)
    assert not fed(HeaderBlockScanner(1024), too_large, cut)
