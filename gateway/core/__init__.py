"""The transport-free domain core: rooms, variables, events and their rules, over a backend plugin."""
