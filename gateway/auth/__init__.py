"""Authentication and authorization: one policy, used by the REST and gRPC adapters alike."""
