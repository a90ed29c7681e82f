"""Fixtures of the golden-case corpus: the REST app over a memory backend and the frozen clock."""
