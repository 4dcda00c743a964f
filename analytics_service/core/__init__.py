"""Pure domain: no gRPC, no protobuf, no SQL."""
