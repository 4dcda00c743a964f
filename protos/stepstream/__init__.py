"""The stepstream contract: generated protobuf and gRPC stubs live in `stepstream.v1`."""
