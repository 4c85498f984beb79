"""Concurrent streams: our server (`edge-runtime serve --parallel N`) against llama.cpp's own
`llama-server --parallel N`, same model, same threads, same run.

For 1, 4, 8 and 16 concurrent streaming completions (each server started with as many
slots as streams, 512 positions of KV each): aggregate generated tokens/s, time to first
token p50/p95 and the server's RSS. Then 1,000 short requests against our server at 8
slots: RSS after the first 100 and after all of them (flat means no leak per request).

llama-server is built from the llama.cpp inside the pinned llama-cpp-python sdist
(cmake, about 6 minutes the first time; kept in ~/.cache/edge-runtime/llama-server-build).

    python tools/bench_server.py [--streams 1,4,8,16] [--tokens 64] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
SDIST = ROOT / ".cache" / "llama-cpp-python-0.3.36"
BUILD = Path.home() / ".cache" / "edge-runtime" / "llama-server-build"
PROMPTS = [f"Write a short story about a {w} who lives in a {p}." for w in
           ("fox", "robot", "baker", "pilot", "cat", "sailor", "gardener", "clockmaker")
           for p in ("lighthouse", "forest", "city", "desert")]


def llama_server_binary() -> Path:
    binary = BUILD / "bin" / "llama-server"
    if binary.exists():
        return binary
    source = SDIST / "vendor" / "llama.cpp"
    if not source.is_dir():
        sys.exit(f"{source} is missing: run tools/install_test_deps.sh (it unpacks the llama-cpp-python sdist)")
    print(f"building llama-server from {source} ...", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(source), "-B", str(BUILD), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(BUILD), "--target", "llama-server", "-j", str(os.cpu_count())],
                   check=True, stdout=subprocess.DEVNULL)
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """A server process on a free port, waited for until /health answers."""

    def __init__(self, kind: str, model: Path, slots: int, threads: int) -> None:
        self.port = free_port()
        if kind == "ours":
            cmd = [sys.executable, "-m", "edge_runtime", "serve", "--model", str(model), "--port", str(self.port),
                   "--parallel", str(slots), "--ctx", "512", "--threads", str(threads), "--max-queue", "2048"]
        else:
            cmd = [str(llama_server_binary()), "-m", str(model), "--port", str(self.port), "-np", str(slots),
                   "-c", str(512 * slots), "-t", str(threads), "-tb", str(threads), "--no-webui"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        end = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"{kind} server did not start: {' '.join(cmd)}")
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)


async def one_stream(c: openai.AsyncOpenAI, prompt: str, tokens: int) -> tuple[float, int]:
    """(time to first token, generated tokens) of one streamed completion."""
    t0 = time.perf_counter()
    ttft, used = 0.0, 0
    stream = await c.completions.create(model="m", prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
    async for event in stream:
        if not ttft and event.choices and event.choices[0].text:
            ttft = time.perf_counter() - t0
        if event.usage:
            used = event.usage.completion_tokens
    return ttft, used


async def load(url: str, streams: int, tokens: int, rounds: int) -> dict:
    async with client(url) as c:
        await one_stream(c, "Warm up", 4)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(c, PROMPTS[i % len(PROMPTS)], tokens)
                                         for i in range(streams * rounds)))
        wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    generated = sum(r[1] for r in results)
    return {"tok_s": generated / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], "tokens": generated}


async def many_requests(url: str, n: int, workers: int) -> tuple[int, int]:
    done = failed = 0

    async def worker(c: openai.AsyncOpenAI, k: int) -> None:
        nonlocal done, failed
        for i in range(k, n, workers):
            try:
                await c.completions.create(model="m", prompt=PROMPTS[i % len(PROMPTS)] + f" ({i})", max_tokens=8,
                                           temperature=0)
            except openai.APIError:
                failed += 1
            done += 1

    async with client(url) as c:
        await asyncio.gather(*(worker(c, k) for k in range(workers)))
    return done, failed


def main() -> int:
    from edge_runtime.default_model import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: the embedded Gemma 3 270M)")
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per reply")
    ap.add_argument("--rounds", type=int, default=2, help="waves of requests per level")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--requests", type=int, default=1000, help="short requests for the RSS check (0: skip)")
    args = ap.parse_args()
    model = args.model or default_model_path()
    levels = [int(x) for x in args.streams.split(",")]
    rows: dict[int, dict[str, dict]] = {}
    for n in levels:
        for kind in ("llama-server", "ours"):
            server = Server(kind, model, n, args.threads)
            try:
                stats = asyncio.run(load(server.url, n, args.tokens, args.rounds))
                stats["rss_mb"] = rss_mb(server.proc.pid)
            finally:
                server.close()
            rows.setdefault(n, {})[kind] = stats
            print(f"{kind:12} {n:2} streams: {stats['tok_s']:6.1f} tok/s  TTFT p50 {stats['ttft_p50']:.2f} s "
                  f"p95 {stats['ttft_p95']:.2f} s  RSS {stats['rss_mb']:.0f} MB", flush=True)
    print("\nstreams  llama-server  ours   ours/llama  ours/ours@1")
    base = rows.get(1, {}).get("ours", {}).get("tok_s")
    for n in levels:
        theirs, ours = rows[n]["llama-server"]["tok_s"], rows[n]["ours"]["tok_s"]
        scale = f"{ours / base:.2f}x" if base else "-"
        print(f"{n:7}  {theirs:12.1f}  {ours:5.1f}  {ours / theirs:9.2f}x  {scale:>10}")
    if 8 in rows and base:
        ratio = rows[8]["ours"]["tok_s"] / rows[8]["llama-server"]["tok_s"]
        print(f"targets at 8 streams: {ratio:.2f}x llama-server (>= 0.90), "
              f"{rows[8]['ours']['tok_s'] / base:.2f}x our one-stream rate (>= 1.80)")
    if args.requests:
        server = Server("ours", model, 8, args.threads)
        try:
            asyncio.run(many_requests(server.url, 100, 8))
            first = rss_mb(server.proc.pid)
            done, failed = asyncio.run(many_requests(server.url, args.requests - 100, 8))
            last = rss_mb(server.proc.pid)
        finally:
            server.close()
        print(f"RSS over {done + 100} requests (8 at a time): {first:.0f} MB after 100, {last:.0f} MB after all "
              f"({last - first:+.0f} MB); failed: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
