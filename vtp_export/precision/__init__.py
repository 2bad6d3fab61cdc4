"""Reduced precision: ModelOpt transforms of the verified fp32 graph, fidelity against it, calibration inputs."""
