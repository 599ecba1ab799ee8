"""Throughput and latency of `kvpress serve` (run by scripts/bench-serve.sh, release build):

- 1, 8 and 32 concurrent streaming clients answering from stored contexts, full cache
  (`no_press`) against `adakv(snapkv)@0.5`: aggregate tokens/s, time to first token and time
  per token (p50 / p99), and the memory each stored context takes;
- the stall: the gaps between tokens of a running answer alone, and while the server
  compresses a new context beside it.
"""

import concurrent.futures
import os
import statistics
import sys
import tempfile
import threading
import time

import openai

from harness import Server

PRESSES = {
    "full cache": {"press": "no_press"},
    "adakv(snapkv)@0.5": {"press": "adakv", "alpha_safeguard": 0.2,
                          "inner": {"press": "snapkv", "compression_ratio": 0.5,
                                    "window_size": 64, "kernel_size": 5}},
}
QUESTIONS = ["What does this license say about distributing copies?",
             "Who may use the program?", "Summarise the first section.",
             "What is said about warranties?"]
CLIENTS = [int(n) for n in os.environ.get("KVPRESS_BENCH_CLIENTS", "1,8,32").split(",")]
REQUESTS = int(os.environ.get("KVPRESS_BENCH_REQUESTS", "2"))
MAX_TOKENS = int(os.environ.get("KVPRESS_BENCH_TOKENS", "32"))


def context_text():
    path = os.environ.get("KVPRESS_BENCH_TEXT", "/usr/share/common-licenses/GPL-3")
    with open(path) as f:
        return f.read()[: int(os.environ.get("KVPRESS_BENCH_BYTES", "16000"))]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def stream_one(server, context_id, question):
    """(seconds to the first token, [seconds between tokens], tokens)."""
    c = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=600)
    start = time.perf_counter()
    first, gaps, last, tokens = None, [], None, 0
    for chunk in c.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": question}], temperature=0,
            max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
            extra_body={"context_id": context_id}):
        now = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = now - start
            else:
                gaps.append(now - last)
            last = now
    return first, gaps, tokens


def load(server, context_id, clients):
    ttft, gaps, tokens = [], [], 0
    lock = threading.Lock()

    def client(i):
        nonlocal tokens
        for r in range(REQUESTS):
            f, g, t = stream_one(server, context_id, QUESTIONS[(i + r) % len(QUESTIONS)])
            with lock:
                ttft.append(f)
                gaps.extend(g)
                tokens += t

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    return tokens / wall, ttft, gaps


def main():
    store = tempfile.mkdtemp()
    server = Server(store, "--max-batch", "32", "--max-queue", "64")
    text = context_text()
    print(f"model {server.model}; context {len(text)} bytes; {REQUESTS} requests per client, "
          f"{MAX_TOKENS} tokens each, greedy, streamed")
    print("| contexts | clients | tokens/s (all) | TTFT p50 / p99 (s) | per token p50 / p99 (ms) |")
    print("|---|---|---|---|---|")
    try:
        infos = {name: server.create_context(text, press) for name, press in PRESSES.items()}
        for clients in CLIENTS:
            for name, info in infos.items():
                rate, ttft, gaps = load(server, info["id"], clients)
                print(f"| {name} | {clients} | {rate:.1f} | {statistics.median(ttft):.2f} / "
                      f"{pct(ttft, 0.99):.2f} | {1e3 * statistics.median(gaps):.1f} / "
                      f"{1e3 * pct(gaps, 0.99):.1f} |", flush=True)
        print()
        for name, info in infos.items():
            print(f"{name}: {info['context_tokens']} tokens, kept {info['kept_fraction']:.3f}, "
                  f"KV {info['kv_bytes'] / 2**20:.2f} MiB in memory, "
                  f"{info['stored_bytes'] / 2**20:.2f} MiB in the store")
        # The stall: one answer's token gaps alone, then while a context is compressed.
        context_id = infos["adakv(snapkv)@0.5"]["id"]
        _, alone, _ = stream_one(server, context_id, QUESTIONS[0])
        results = []
        compress = threading.Thread(target=lambda: results.append(
            server.create_context(text + " ", PRESSES["full cache"])))
        beside = []

        def answer_beside():
            _, g, _ = stream_one(server, context_id, QUESTIONS[0])
            beside.extend(g)

        answer = threading.Thread(target=answer_beside)
        answer.start()
        time.sleep(0.3)
        start = time.perf_counter()
        compress.start()
        compress.join()
        compress_seconds = time.perf_counter() - start
        answer.join()
        print(f"\nstall: gaps between tokens of one answer alone p50 {1e3 * statistics.median(alone):.1f} ms, "
              f"max {1e3 * max(alone):.1f} ms; beside a {results[0]['context_tokens']}-token "
              f"compression ({compress_seconds:.2f} s): p50 {1e3 * statistics.median(beside):.1f} ms, "
              f"max {1e3 * max(beside):.1f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
