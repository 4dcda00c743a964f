"""gRPC servicers, interceptors and protobuf <-> domain mapping."""
