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
