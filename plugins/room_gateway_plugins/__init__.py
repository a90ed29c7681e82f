"""Built-in plugins of room-gateway, installed as the ``room_gateway_plugins`` package."""
