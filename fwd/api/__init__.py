"""The gRPC API: proto conversions, the Api actor (server) and the CLI's client."""
