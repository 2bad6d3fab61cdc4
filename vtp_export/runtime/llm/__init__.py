"""The LLM half of the runtime: the backend protocol, the registry of backends, transformers, llama.cpp, GGUF
conversion."""
