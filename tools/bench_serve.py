"""`vtp-export serve` under load: requests/s and time to first token (p50, p90) at concurrency 1, 4 and 8, for LLaVA-1.5
pruned to 64 tokens (VisionZip) against the unpruned model (`none`), same machine, same run. The vision tower is
LLaVA-1.5's (CLIP ViT-L/14-336, random weights); the LLM is a random one of LLaVA-1.5-7B's width (4096, 32 heads,
vocabulary 32064) cut to --llm-layers decoder layers, on vLLM (the serving venv, tools/setup_serve_venv.sh).

Each request: one 336x336 image as a data URL and a question, streamed, greedy, --new-tokens tokens. TTFT is from
sending the request to the first streamed token, so it holds the image's decoding, the vision graph and prefill;
requests/s is the requests of a level over its wall time. Run from the exporter's venv:

  .venv/bin/python tools/bench_serve.py [--requests 16] [--llm-layers 2] [--new-tokens 16] [--json figures.json]
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.serve.server import SERVE_BIN, ServeProcess, chat, data_url, picture, serve_venv_reason  # noqa: E402

METHODS = (("visionzip", 64), ("none", None))
CONCURRENCY = (1, 4, 8)


def export(out: Path, method: str, keep: int | None, layers: int) -> Path:
    folder = out / f"llava15-{method}"
    if not (folder / "llm-vllm").is_dir():
        command = [sys.executable, "-m", "vtp_export", "--model", "llava15", "--random-weights", "--method", method,
                   "--target", "cpu", "--out", str(folder), "--verify-samples", "1", "--replace"]
        subprocess.run(command + (["--keep", str(keep)] if keep else []), check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "vtp_export", "llm", str(folder), "--format", "vllm", "--llm-layers",
                        str(layers)], check=True, stdout=subprocess.DEVNULL)
    return folder


def timed_request(server: ServeProcess, body: dict) -> tuple[float, float]:
    """(time to first token, total) in seconds of one streamed request."""
    import urllib.request

    start = time.perf_counter()
    request = urllib.request.Request(f"{server.url}/v1/chat/completions", data=json.dumps(body | {"stream": True})
                                     .encode(), headers={"Content-Type": "application/json"})
    first = None
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if first is None and line.startswith("data: ") and '"token_ids"' in line:
                first = time.perf_counter() - start
    return first, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def bench(folder: Path, requests: int, new_tokens: int, log: Path) -> list[dict]:
    server = ServeProcess(folder, log, "--max-model-len", "1024", "--max-tokens", str(new_tokens),
                          "--kv-cache-memory-bytes", str(2 << 30))
    try:
        body = chat([data_url(picture(0, (336, 336)))], "What is in the picture? Describe it in detail.", new_tokens)
        timed_request(server, body)  # warm-up
        rows = []
        for concurrency in CONCURRENCY:
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                results = list(pool.map(lambda _: timed_request(server, body), range(requests)))
            wall = time.perf_counter() - start
            ttft = [first for first, _ in results]
            rows.append({"concurrency": concurrency, "requests": requests, "requests_per_s": requests / wall,
                         "ttft_p50_s": percentile(ttft, 50), "ttft_p90_s": percentile(ttft, 90)})
            print(f"  {folder.name} concurrency {concurrency}: {rows[-1]['requests_per_s']:.2f} req/s, TTFT p50 "
                  f"{rows[-1]['ttft_p50_s']:.2f} s p90 {rows[-1]['ttft_p90_s']:.2f} s", flush=True)
        return rows
    finally:
        server.terminate()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=16, help="requests per concurrency level (default 16)")
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--exports", type=Path, help="folder to keep the two exports in (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    if serve_venv_reason():
        print(f"bench_serve: {serve_venv_reason()}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        root = args.exports or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        figures = {"machine": f"{platform.processor() or platform.machine()}, {cpu_model()}",
                   "serve_venv": str(SERVE_BIN.parent.parent), "llm_layers": args.llm_layers,
                   "new_tokens": args.new_tokens, "results": {}}
        for method, keep in METHODS:
            folder = export(root, method, keep, args.llm_layers)
            label = f"keep {keep}" if keep else "none (576)"
            figures["results"][label] = bench(folder, args.requests, args.new_tokens, root / f"{method}.log")
    print("\n| keep | concurrency | requests/s | TTFT p50 | TTFT p90 |\n| --- | --- | --- | --- | --- |")
    for label, rows in figures["results"].items():
        for row in rows:
            print(f"| {label} | {row['concurrency']} | {row['requests_per_s']:.2f} | {row['ttft_p50_s'] * 1000:.0f} ms "
                  f"| {row['ttft_p90_s'] * 1000:.0f} ms |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
