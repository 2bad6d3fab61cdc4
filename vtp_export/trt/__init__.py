"""TensorRT: lint against a target, the ONNX parser check, the device build recipe, the builder, device detection."""
