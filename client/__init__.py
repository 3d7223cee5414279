"""The gRPC client of the `ssa_engine` Triton model."""
