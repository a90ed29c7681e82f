"""Webhooks (``API.md``, "Webhooks"): signed HTTP POSTs of each room change, from a durable outbox.

- :mod:`gateway.core.outbox`: the outbox as backends see it (routes, messages, attempts).
- :mod:`~gateway.webhooks.payload`: a message's body and Standard Webhooks headers.
- :mod:`~gateway.webhooks.deliverer`: the per-endpoint loops that claim, send and settle messages.
- :mod:`~gateway.webhooks.manager`: the management API's operations (``webhooks:manage``).
- :mod:`~gateway.webhooks.supervisor`: the gateway's side of its delivery worker process
  (``webhooks.delivery: process``); :mod:`~gateway.webhooks.worker`: the worker's main;
  :mod:`~gateway.webhooks.channel`: what crosses between them (settings, wake-ups, metrics).
"""
