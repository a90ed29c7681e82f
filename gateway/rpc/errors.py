"""Errors on gRPC, made in one place: a :class:`~gateway.errors.GatewayError` becomes a ``GRPCError``.

grpclib's split (``grpclib.exceptions``): a ``GatewayError`` is an expected outcome and becomes a
``GRPCError`` with its status and message (:func:`grpc_error`: the server listeners raise it, the handlers
through :func:`grpc_errors`); anything else is a bug, logged with its traceback and answered INTERNAL with a
generic message, never the exception's text.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"


def grpc_error(err: GatewayError) -> GRPCError:
    """The gRPC answer to ``err``: its canonical status (the codes are gRPC's) and its message."""
    return GRPCError(Status(err.code.value), err.message)


@contextlib.contextmanager
def grpc_errors(method: str) -> Iterator[None]:
    """Answer a :class:`GatewayError` with its status and message, and a bug with INTERNAL.

    :param method: named in the log line of an unexpected error.
    """
    try:
        yield
    except GRPCError:
        raise
    except GatewayError as err:
        raise grpc_error(err) from err
    except Exception:
        log.exception("unexpected error in %s", method)
        raise GRPCError(Status.INTERNAL, INTERNAL_MESSAGE) from None
