#!/usr/bin/env python3
"""A stub judge for recap's `http(...)` verifier (docs/rewards.md), on localhost.

Answers `POST` requests whose body is `{"items": [...]}` (the objects an `exec` grader reads:
`id`, `prompt`, `completion`, `answer`, `fields`) with `{"rewards": [...]}`, one per item: 1.0
when the row's expected answer (`fields.answer`) occurs in the completion (or equals the
extracted `answer`), else 0.0; `null` for a row without one. A real judge would ask a reward
model here.

Usage: judge_server.py [--port N] [--fail-first N] [--delay SECONDS]
  --port        port on 127.0.0.1 (default 0: any free port)
  --fail-first  answer the first N requests with 503, to exercise the client's retries
  --delay       wait this long before each answer, to exercise its timeout
The first line on stdout is `listening on http://127.0.0.1:PORT/`.
"""

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def reward(item):
    expected = item.get("fields", {}).get("answer")
    if expected is None:
        return None
    expected = str(expected).strip()
    answer = item.get("answer")
    if answer is not None:
        return 1.0 if str(answer).strip() == expected else 0.0
    return 1.0 if expected in item.get("completion", "") else 0.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0)
    opts = p.parse_args()
    state = {"requests": 0}

    class Judge(BaseHTTPRequestHandler):
        def do_POST(self):
            state["requests"] += 1
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if opts.delay:
                time.sleep(opts.delay)
            if state["requests"] <= opts.fail_first:
                self.answer(503, {"error": "warming up"})
                return
            try:
                items = json.loads(body)["items"]
            except (ValueError, KeyError, TypeError):
                self.answer(400, {"error": "expected {\"items\": [...]}"})
                return
            self.answer(200, {"rewards": [reward(i) for i in items]})

        def answer(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", opts.port), Judge)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
