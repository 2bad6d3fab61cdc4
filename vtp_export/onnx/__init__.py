"""ONNX: graph I/O names, export, onnxruntime sessions, graph signatures, random inputs."""
