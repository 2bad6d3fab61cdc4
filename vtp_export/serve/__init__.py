"""Serving at scale: an OpenAI-compatible endpoint that runs an export's vision graph and hands the pruned image
embeddings to a vLLM engine serving the export's LLM without a vision tower (`vtp-export serve DIR`).

llm_folder.py writes the LLM as a folder vLLM loads (needs torch: the exporter's or the serving venv); the other
modules run in the serving venv (tools/setup_serve_venv.sh), where vLLM is installed."""
