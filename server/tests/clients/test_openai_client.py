"""`kvpress serve` through the official `openai` Python client: chat completions, streaming,
a stored context answered from two clients, a context created on one replica and answered on
another through Redis, error objects, a load of 32 concurrent clients and `kill -9` faults.

Run by `scripts/test-server-clients.sh` (which makes the venv and builds the binary)."""

import concurrent.futures
import os
import shutil
import statistics
import tempfile
import threading
import time
import unittest

import openai

from harness import Redis, Server, kvpress, needle_text, run_answer

KNORM = {"press": "knorm", "compression_ratio": 0.75}
QUESTION = "What is the special magic number for ocean mentioned in the provided text?"


def client(server, **kwargs):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=600, **kwargs)


def ask(server, context_id, question, max_tokens=48, c=None):
    c = c or client(server)
    response = c.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=max_tokens,
        extra_body={"context_id": context_id},
    )
    return response.choices[0].message.content


class OneServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.store = tempfile.mkdtemp()
        cls.server = Server(cls.store)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.store, ignore_errors=True)

    def test_chat_completion_equals_kvpress_generate(self):
        prompt = "What is the capital of France?"
        response = client(self.server).chat.completions.create(
            model=self.server.model, messages=[{"role": "user", "content": prompt}],
            temperature=0, max_tokens=30)
        text = response.choices[0].message.content
        expected = kvpress("generate", "--prompt", prompt, "--max-new-tokens", "30").strip()
        self.assertEqual(text, expected)
        self.assertEqual(response.choices[0].finish_reason, "stop")
        self.assertGreater(response.usage.prompt_tokens, 0)
        self.assertEqual(response.usage.total_tokens,
                         response.usage.prompt_tokens + response.usage.completion_tokens)

    def test_streaming_adds_up_to_the_answer(self):
        c = client(self.server)
        kwargs = dict(model=self.server.model, temperature=0, max_tokens=40,
                      messages=[{"role": "user", "content": "Name three colours."}])
        whole = c.chat.completions.create(**kwargs).choices[0].message.content
        chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        self.assertEqual(text, whole)
        self.assertIsNotNone(chunks[-1].usage)
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        self.assertEqual(len(finishes), 1)

    def test_a_stored_context_answers_two_clients_as_kvpress_run(self):
        info = self.server.create_context(needle_text(), KNORM)
        self.assertEqual(info["context_tokens"], 1175)
        expected = run_answer(os.path.join(self.store, info["id"] + ".kvp"), QUESTION, 48)
        self.assertIn("7340912", expected)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: ask(self.server, info["id"], QUESTION).strip(), range(2)))
        self.assertEqual(answers, [expected, expected])

    def test_bad_requests_raise_the_clients_errors(self):
        c = client(self.server)
        with self.assertRaises(openai.BadRequestError) as error:
            c.chat.completions.create(model=self.server.model, messages=[], max_tokens=5)
        self.assertIn("messages", str(error.exception))
        with self.assertRaises(openai.BadRequestError) as error:
            c.chat.completions.create(model=self.server.model, max_tokens=5, presence_penalty=1.0,
                                      messages=[{"role": "user", "content": "Hi"}])
        self.assertIn("presence_penalty", str(error.exception))
        with self.assertRaises(openai.NotFoundError) as error:
            ask(self.server, "ctx-0123456789abcdef", QUESTION)
        self.assertIn("no context", str(error.exception))
        with self.assertRaises(openai.NotFoundError):
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])


class Replicas(unittest.TestCase):
    def test_a_context_made_on_one_replica_answers_on_another_through_redis(self):
        if shutil.which("redis-server") is None:
            if os.environ.get("KVPRESS_REQUIRE_REDIS") == "1":
                self.fail("redis-server is not installed (KVPRESS_REQUIRE_REDIS=1)")
            self.skipTest("NOT RUN: redis-server is not installed (apt-get install redis-server)")
        redis = Redis()
        a = b = None
        try:
            a = Server(redis.url)
            b = Server(redis.url)
            info = a.create_context(needle_text(), KNORM)
            on_a = ask(a, info["id"], QUESTION)
            on_b = ask(b, info["id"], QUESTION)
            self.assertEqual(on_b, on_a)
            self.assertIn("7340912", on_b)
            listed = [c["id"] for c in b.get("/v1/contexts")["data"]]
            self.assertEqual(listed, [info["id"]])
            status, _ = b.request("DELETE", f"/v1/contexts/{info['id']}")
            self.assertEqual(status, 200)
            status, body = a.request("GET", f"/v1/contexts/{info['id']}")
            # a may still hold it in memory; the store no longer lists it.
            self.assertEqual(a.get("/v1/contexts")["data"], [])
        finally:
            for server in (a, b):
                if server:
                    server.stop()
            redis.stop()


class Load(unittest.TestCase):
    """32 concurrent clients, a fixed number of requests each; every fourth client first creates
    a context of its own (during the load), the others reuse four shared ones: zero failures,
    every answer equal to its one-at-a-time answer (asked again afterwards, alone); latency and
    throughput are printed."""

    CLIENTS = int(os.environ.get("KVPRESS_LOAD_CLIENTS", "32"))
    REQUESTS = int(os.environ.get("KVPRESS_LOAD_REQUESTS", "2"))
    QUESTIONS = [QUESTION, "What is the text about?", "Is there a magic number in the text?",
                 "Which number is mentioned for ocean?"]

    def test_concurrent_clients(self):
        store = tempfile.mkdtemp()
        server = Server(store, "--max-batch", "16", "--max-queue", "64")
        try:
            texts = [needle_text().replace("7340912", str(7340912 + i)) for i in range(4)]
            shared = [server.create_context(t, KNORM)["id"] for t in texts]
            latencies, tokens, failures, answers = [], [], [], []
            lock = threading.Lock()

            def one_client(i):
                c = client(server)
                try:
                    if i % 4 == 0:
                        text = needle_text().replace("7340912", str(5550000 + i))
                        contexts = [server.create_context(text, KNORM)["id"]]
                    else:
                        contexts = shared
                except Exception as error:  # noqa: BLE001 - every failure is reported
                    with lock:
                        failures.append(f"client {i} creating its context: {error}")
                    return
                for r in range(self.REQUESTS):
                    job = (contexts[(i + r) % len(contexts)], self.QUESTIONS[(i * 3 + r) % 4])
                    start = time.perf_counter()
                    try:
                        response = c.chat.completions.create(
                            model=server.model, messages=[{"role": "user", "content": job[1]}],
                            temperature=0, max_tokens=24, extra_body={"context_id": job[0]})
                        with lock:
                            latencies.append(time.perf_counter() - start)
                            tokens.append(response.usage.completion_tokens)
                            answers.append((job, response.choices[0].message.content))
                    except Exception as error:  # noqa: BLE001 - every failure is reported
                        with lock:
                            failures.append(f"{job}: {error}")

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(self.CLIENTS) as pool:
                list(pool.map(one_client, range(self.CLIENTS)))
            wall = time.perf_counter() - start
            self.assertEqual(failures, [])
            self.assertEqual(len(answers), self.CLIENTS * self.REQUESTS)
            alone = {job: ask(server, *job, max_tokens=24) for job in sorted({j for j, _ in answers})}
            for job, text in answers:
                self.assertEqual(text, alone[job], job)
            latencies.sort()
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            created = (self.CLIENTS + 3) // 4
            print(f"\nload: {self.CLIENTS} clients x {self.REQUESTS} requests ({created} of them "
                  f"creating a context first), 0 failed; latency p50 "
                  f"{statistics.median(latencies):.2f} s, p99 {p99:.2f} s; "
                  f"{sum(tokens) / wall:.1f} tokens/s in all ({wall:.1f} s)")
        finally:
            server.stop()
            shutil.rmtree(store, ignore_errors=True)


def wait_for_temporary_file(folder, before, timeout=120):
    """Returns as soon as a new temporary file (a dot file) is in `folder`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(name.startswith(".") for name in set(os.listdir(folder)) - before):
            return
    raise AssertionError("no store write began")


class Faults(unittest.TestCase):
    """`kill -9` while contexts are uploaded, compressed and written to the store, at delays
    spread over a compression's time and beyond: after a restart every context the server
    confirmed is listed and answers, every context the store lists loads, and nothing
    half-written is served."""

    # Kill after this fraction of a compression's time; `None`: as soon as the store's
    # temporary file appears (the write has begun and is not complete).
    FRACTIONS = (0.0, 0.3, 0.6, 0.9, 1.0, 1.1, None, None, None)

    def test_kill_during_uploads_and_store_writes(self):
        store = tempfile.mkdtemp()
        confirmed, outcomes = [], []
        try:
            for fraction in self.FRACTIONS:
                server = Server(store)
                start = time.perf_counter()
                confirmed.append(server.create_context(needle_text(), KNORM)["id"])
                compress_seconds = time.perf_counter() - start
                before = set(os.listdir(store))
                results = []
                thread = threading.Thread(target=lambda: results.append(
                    server.request("POST", "/v1/contexts", {"text": needle_text(), "press": KNORM})))
                thread.start()
                if fraction is None:
                    wait_for_temporary_file(store, before)
                else:
                    time.sleep(fraction * compress_seconds)
                server.kill()
                thread.join()
                confirmed += [body["id"] for status, body in results if status == 200]
                new = set(os.listdir(store)) - before
                if any(name.startswith(".") for name in new) and not any(n.startswith("ctx-") for n in new):
                    outcomes.append("during the store write")
                elif new and not results[0][0]:
                    outcomes.append("after the write, before the answer")
                elif results[0][0] == 200:
                    outcomes.append("after the answer")
                else:
                    outcomes.append("during the upload or compression")
            print(f"\nkills: {', '.join(outcomes)}")
            server = Server(store)
            try:
                listed = [c["id"] for c in server.get("/v1/contexts")["data"]]
                for context_id in confirmed:
                    self.assertIn(context_id, listed)
                for context_id in listed:
                    status, body = server.request("GET", f"/v1/contexts/{context_id}")
                    self.assertEqual(status, 200, body)
                    self.assertEqual(body["context_tokens"], 1175)
                self.assertIn("7340912", ask(server, confirmed[-1], QUESTION))
                # The temporary files of the killed writes are gone once the store opens.
                self.assertEqual([f for f in os.listdir(store) if f.startswith(".")], [])
            finally:
                server.stop()
        finally:
            shutil.rmtree(store, ignore_errors=True)

    def test_sigterm_lets_a_running_answer_finish(self):
        store = tempfile.mkdtemp()
        server = Server(store)
        try:
            results = []
            thread = threading.Thread(target=lambda: results.append(client(server).chat.completions.create(
                model=server.model, messages=[{"role": "user", "content": "Tell me a story."}],
                temperature=0, max_tokens=60)))
            thread.start()
            time.sleep(1.0)
            self.assertEqual(server.stop(), 0)
            thread.join()
            self.assertEqual(len(results), 1)
            self.assertGreater(results[0].usage.completion_tokens, 0)
        finally:
            shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
