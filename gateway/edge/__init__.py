"""The REST/JSON edge: Starlette routes derived from the proto's HttpRules, onto the one Dispatcher.

Entry point: :func:`gateway.edge.app.create_http_app`.
"""
