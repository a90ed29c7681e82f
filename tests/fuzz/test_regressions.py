"""Every crash the fuzzers found (``tests/fuzz/targets.py``), kept as a test of its fix.

Each input made a parser raise something other than its documented error, which the caller would not have
caught: a 500 on the REST edge, a traceback from ``room-gateway serve``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config_loader import ConfigError, load_config
from gateway.edge.json_codec import parse_timestamp
from gateway.edge.streams import resume_position
from gateway.errors import InvalidArgument
from tests.fuzz.targets import ENVIRONMENT, TARGETS


@pytest.mark.parametrize("offset", ["+92:00", "-24:00", "+24:01"])
def test_a_timestamp_offset_of_a_day_or_more_is_invalid(offset: str) -> None:
    # json_codec: ValueError from datetime.timezone() (a 500 on every REST field holding a Timestamp)
    with pytest.raises(InvalidArgument, match="createTime is not a valid time"):
        parse_timestamp(f"2020-01-01T00:00:00.5{offset}", "createTime")
    TARGETS["json_codec"](
        b'0\x00\x00\x00{"roomId":"lobby","createTime":"2020-01-01T00:00:00.5' + offset.encode() + b'"}'
    )


def test_a_control_character_in_the_config_is_a_config_error(tmp_path: Path) -> None:
    # config_loader: yaml.reader.ReaderError escaped load_config (a traceback instead of the line)
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"listen: {http: '127.0.0.1:0'}\nauth:\n  keys: [] # see\x0ffull.yaml\n")
    with pytest.raises(ConfigError, match=r"line 3: character #x000f is not allowed in YAML"):
        load_config(path, ENVIRONMENT)


@pytest.mark.parametrize("seq", ["9223372036854775808", "9999999999999999999"])
def test_a_last_event_id_beyond_int64_is_invalid(seq: str) -> None:
    # stream_positions: a 19-digit seq over int64 reached the store (SQLite: OverflowError, a 500 on
    # ListenRoom and ListenEvents); the URL's afterSeq was refused as out of range already.
    with pytest.raises(InvalidArgument, match="Last-Event-ID must be <epoch>:<seq>"):
        resume_position(f"epoch:{seq}")
    TARGETS["stream_positions"](f"epoch:{seq}\n".encode())
    assert resume_position("epoch:9223372036854775807") == {"after_seq": 2**63 - 1, "epoch": "epoch"}
