"""Test support shipped with the package: the backend conformance suite (:mod:`.conformance`)."""
