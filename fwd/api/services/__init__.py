"""The fwd.v1 gRPC services, one module each; the Api actor (fwd.actors.api) serves them."""
