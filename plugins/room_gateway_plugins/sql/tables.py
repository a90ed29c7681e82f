"""The tables as the queries see them: the schema as the migrations leave it (:func:`.migrations.metadata`),
so that it is declared once, by the migrations, and never again here.
"""

from __future__ import annotations

from room_gateway_plugins.sql import migrations

metadata = migrations.metadata()

rooms = metadata.tables["rooms"]
#: A variable's row stays when it is deleted (``value`` NULL), so that its versions never repeat.
variables = metadata.tables["variables"]
#: PostgreSQL only: notification bodies too big for a NOTIFY payload, read by id by the receivers.
notification_bodies = metadata.tables["notification_bodies"]
schema_version = metadata.tables["schema_version"]
#: Each room's last seq (its change log's head); a write's upsert of it locks the room's writers in order.
room_heads = metadata.tables["room_heads"]
#: The change log: one row per retained change, its payload the wire format's JSON text.
changes = metadata.tables["changes"]
#: ``epoch``: the log's incarnation.
log_meta = metadata.tables["log_meta"]
#: Connections per (room, user, instance), and each instance's last heartbeat.
presence = metadata.tables["presence"]
presence_instances = metadata.tables["presence_instances"]
#: The webhook outbox (one row per endpoint and message) and each endpoint's state.
webhook_messages = metadata.tables["webhook_messages"]
webhook_endpoints = metadata.tables["webhook_endpoints"]
