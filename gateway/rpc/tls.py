"""TLS for the gRPC listener (``listen.grpc_tls``): an ``ssl.SSLContext`` that grpclib serves HTTP/2 with.

gRPC over TLS needs ALPN ``h2`` (RFC 7540 §3.3; grpc-core and grpc-js refuse a connection that does not
negotiate it), and HTTP/2 needs TLS 1.2 or later (RFC 7540 §9.2).
"""

from __future__ import annotations

import ssl

from gateway.config import GrpcTls


class TlsError(ValueError):
    """The certificate or key of ``listen.grpc_tls`` cannot be loaded."""


def server_context(tls: GrpcTls) -> ssl.SSLContext:
    """A server context for ``grpclib.server.Server.start(..., ssl=…)``.

    :raises TlsError: a file is not PEM, or the key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(
            f"listen.grpc_tls: cannot load {tls.cert_file} with {tls.key_file}: {exc.strerror or exc}"
        ) from None
    return context
