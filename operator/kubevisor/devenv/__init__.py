"""Local development cluster: control plane binaries, simulated nodes. Used by hack/ and tests."""
