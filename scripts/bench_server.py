#!/usr/bin/env python3
"""Throughput of `g4rt serve` under concurrent streaming clients (the official openai client).

    .venv/bin/python scripts/bench_server.py [MODEL] --clients 1,4,16 --requests 32 --max-tokens 64

Starts the server (or uses --url), runs each client count with every client streaming chat
requests back to back, and prints a Markdown table: requests/s, generated tokens/s (all streams
together), per-stream decode tokens/s, and time to first token (median, p90). Run it on a quiet
machine: anything else running skews the numbers."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

TOPICS = ["the sea", "mountains", "a library", "rain", "the moon", "trains", "a garden", "winter",
          "a market", "music", "bridges", "the desert", "a lighthouse", "bees", "clocks", "rivers"]


def start_server(model, port, parallel, extra):
    cmd = [sys.executable, "-m", "g4rt", "serve", *( [model] if model else []), "--port", str(port),
           "--parallel", str(parallel), "-q", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready in 60 s")


def one_request(client, model, i, max_tokens, completion):
    prompt = f"Write a short poem about {TOPICS[i % len(TOPICS)]} (number {i})."
    t0 = time.perf_counter()
    first, n = None, 0
    if completion:
        stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                           stream=True, stream_options={"include_usage": True})
    else:
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and first is None:
            text = chunk.choices[0].text if completion else (chunk.choices[0].delta.content or "")
            if text:
                first = time.perf_counter() - t0
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
    total = time.perf_counter() - t0
    return first if first is not None else total, total, n


def run_level(url, model, clients, requests, max_tokens, completion):
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: one_request(client, model, i, max_tokens, completion), range(requests)))
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    per_stream = statistics.median((r[2] - 1) / (r[1] - r[0]) for r in results if r[2] > 1 and r[1] > r[0])
    return {"clients": clients, "requests": requests, "wall_s": wall, "req_s": requests / wall,
            "tok_s": tokens / wall, "stream_tok_s": per_stream, "ttft_med": statistics.median(ttft),
            "ttft_p90": ttft[int(0.9 * (len(ttft) - 1))], "tokens": tokens}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="GGUF file (default: the bundled Gemma 3 270M)")
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=32, help="requests per client count")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=4, help="--parallel of the started server")
    ap.add_argument("--completions", action="store_true", help="/v1/completions instead of chat")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `g4rt serve` argument")
    args = ap.parse_args()

    proc = None
    url = args.url
    if url is None:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc, url = start_server(args.model, port, args.parallel, args.server_arg)
    try:
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        run_level(url, model, 1, 2, 8, args.completions)          # warm-up: graphs recorded, caches paged in
        print(f"model {model}, server --parallel {args.parallel}, {args.max_tokens} tokens per request, "
              f"{'completions' if args.completions else 'chat'}, {os.cpu_count()} CPUs\n")
        print("| clients | requests | req/s | generated tok/s (all) | per-stream tok/s (median) | TTFT median | TTFT p90 |")
        print("|---|---|---|---|---|---|---|")
        for c in (int(x) for x in args.clients.split(",")):
            r = run_level(url, model, c, max(args.requests, c), args.max_tokens, args.completions)
            print(f"| {c} | {r['requests']} | {r['req_s']:.2f} | {r['tok_s']:.1f} | {r['stream_tok_s']:.1f} | "
                  f"{r['ttft_med'] * 1e3:.0f} ms | {r['ttft_p90'] * 1e3:.0f} ms |", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
