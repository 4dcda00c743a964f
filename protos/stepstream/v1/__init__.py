"""Generated stubs of the `stepstream.v1` protobuf package (see protos/generate.py)."""
