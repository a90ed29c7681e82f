"""Front proxy: gRPC services run elsewhere (``upstreams:``), served through the gateway.

Each upstream is a surface (:class:`~gateway.upstream.surface.UpstreamSurface`, built from its entry in
``upstreams:`` next to the plugins' surfaces): its services on the gateway's gRPC port, raw bytes through
one pooled HTTP/2 connection (:mod:`~gateway.upstream.proxy`, :mod:`~gateway.upstream.connection`), and
REST routes from its descriptors (:mod:`~gateway.upstream.rest`), behind the gateway's own keys,
permissions (``<upstream>:<Method>``), room patterns (``room_field``), rate limits, access log and metrics
(``surface="upstream:<name>"``). It has no backend: the upstream keeps its state. See
``docs/front-proxy.md``.
"""
