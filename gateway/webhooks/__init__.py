"""Webhooks (``API.md``, "Webhooks"): signed HTTP POSTs of each room change, from a durable outbox.

- :mod:`gateway.core.outbox`: the outbox as backends see it (routes, messages, attempts).
- :mod:`~gateway.webhooks.payload`: a message's body and Standard Webhooks headers.
- :mod:`~gateway.webhooks.deliverer`: the per-endpoint loops that claim, send and settle messages.
- :mod:`~gateway.webhooks.manager`: the management API's operations (``webhooks:manage``).
"""
