"""The gRPC API: servicer, protobuf conversion, device authentication, artifacts, health."""
