"""Load test of the search page's server: concurrent clients on 127.0.0.1, requests/s and latency, zero errors.

    python benchmarks/bench_serve.py                       # the demo's index (run `make demo` first)
    python benchmarks/bench_serve.py --index DIR --clients 20 --seconds 10

`hdvila serve` runs in its own process (as a user runs it); the clients are asyncio httpx connections in this
one. Three loads, 10 s each: `/api/info` alone (what HTTP costs), text search, and a page-like mix (per
search: the thumbnails of the first results and the first 64 KiB of one video). The reference beside them is the same search called in-process,
one query at a time: the work with no HTTP, so the server's overhead is the difference. The page's screenshot
for the README (a search, the first result playing) is taken against the same server with Chromium.
Writes docs/benchmarks/serve.{md,json} and docs/images/serve_search.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from common import LAUNCHER_VARIABLES, load_average, machine_line

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT_QUERY = "a red circle moves to the left"


def latency_summary(latencies_s: list[float], errors: int, seconds: float) -> dict:
    ms = np.asarray(latencies_s, np.float64) * 1000
    done = len(ms)
    return {"requests": done, "errors": errors, "seconds": round(seconds, 2),
            "requests_per_s": round(done / seconds, 1) if seconds > 0 else 0.0,
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if done else None,
            "p95_ms": round(float(np.percentile(ms, 95)), 2) if done else None,
            "max_ms": round(float(ms.max()), 2) if done else None}


LOADS = ("info", "search", "mix")


async def _client(http, base: str, queries: list[str], load: str, stop: float, seed: int,
                  latencies: list[float], failures: list[str]) -> None:
    rng = random.Random(seed)

    async def timed(path: str, **kwargs) -> object:
        started = time.perf_counter()
        try:
            response = await http.get(base + path, **kwargs)
            ok = response.status_code in (200, 206)
        except Exception as exc:  # a refused or dropped connection is an error of the run, not of the client
            failures.append(f"{path}: {type(exc).__name__}")
            return None
        latencies.append(time.perf_counter() - started)
        if not ok:
            failures.append(f"{path}: HTTP {response.status_code}")
            return None
        return response

    while time.perf_counter() < stop:
        if load == "info":
            await timed("/api/info")
            continue
        query = rng.choice(queries)
        response = await timed("/api/search", params={"q": query, "k": 10})
        if load != "mix" or response is None:
            continue
        hits = response.json()["hits"]
        for hit in hits[:4]:
            if hit["thumbnail"] and time.perf_counter() < stop:
                await timed(hit["thumbnail"])
        if hits and hits[0]["video"] and time.perf_counter() < stop:
            await timed(hits[0]["video"], headers={"Range": "bytes=0-65535"})


async def run_load(base: str, queries: list[str], clients: int = 20, seconds: float = 10.0, load: str = "search",
                   seed: int = 0) -> dict:
    """`clients` concurrent connections hammering `base` for `seconds` with one of LOADS: "info" (the smallest
    JSON answer: what HTTP alone costs), "search", or "mix" (a page's requests per search). Every request's
    latency, every error."""
    import httpx

    if load not in LOADS:
        raise ValueError(f"load must be one of {LOADS}")
    latencies: list[float] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:
        started = time.perf_counter()
        stop = started + seconds
        await asyncio.gather(*(_client(http, base, queries, load, stop, seed + i, latencies, failures)
                               for i in range(clients)))
        elapsed = time.perf_counter() - started
    summary = latency_summary(latencies, len(failures), elapsed)
    summary["clients"] = clients
    summary["error_examples"] = sorted(set(failures))[:5]
    return summary


def in_process_reference(index_dir: Path, queries: list[str], repeats: int = 200) -> dict:
    """The same search with no HTTP: encode the text and read the index, one query at a time."""
    from hdvila.serve.service import SearchService

    service = SearchService.from_folder(index_dir)
    for query in queries[:5]:
        service.search_text(query, 10)  # warm-up
    latencies = []
    started = time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        service.search_text(queries[i % len(queries)], 10)
        latencies.append(time.perf_counter() - t0)
    return latency_summary(latencies, 0, time.perf_counter() - started)


def measure_cpu(server_pid: int, work) -> dict:
    """work()'s result plus the cores the server and this process (the clients) kept busy meanwhile."""
    import psutil

    server, clients = psutil.Process(server_pid), psutil.Process()
    busy = lambda p: sum(p.cpu_times()[:2])  # noqa: E731  user + system
    s0, c0, t0 = busy(server), busy(clients), time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - t0
    return {**result, "server_cores_busy": round((busy(server) - s0) / elapsed, 2),
            "client_cores_busy": round((busy(clients) - c0) / elapsed, 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path, port: int, threads: int) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for key in LAUNCHER_VARIABLES:
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "hdvila.cli", "--quiet", "serve", "--index", str(index_dir),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=REPO)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2).raise_for_status()
            return proc
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"hdvila serve did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.3)


def take_screenshot(base: str, path: Path, chromium: str, query: str = SCREENSHOT_QUERY) -> dict:
    """A search typed into the page, the first result clicked and playing, as a PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 860})
        page.goto(base + "/")
        page.wait_for_function("() => document.getElementById('about').textContent.includes('clips')")
        page.fill("#query", query)
        page.press("#query", "Enter")
        page.wait_for_function("() => document.querySelectorAll('.hit').length > 0")
        page.click(".hit >> nth=0")
        page.wait_for_function("() => document.getElementById('video').currentTime > 1.0", timeout=30_000)
        page.evaluate("() => document.getElementById('video').pause()")
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        browser.close()
    return {"query": query, "file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)}


def write_report(results: dict, out: Path) -> None:
    from data_tools.files import atomic_write_json, atomic_write_text

    rows = [("in-process search (no HTTP, 1 query at a time)", results["reference"]),
            ("HTTP, `/api/info` only (what HTTP alone costs)", results["info"]),
            ("HTTP, text search only", results["search"]),
            ("HTTP, page-like mix", results["mix"])]
    lines = [
        "# Search page server under load",
        "",
        f"`python benchmarks/bench_serve.py --index {results['index']}`: `hdvila serve` in its own process on "
        f"{results['server_threads']} OpenMP thread(s), {results['clients']} concurrent httpx clients on 127.0.0.1 in "
        f"another, {results['seconds']:.0f} s per load. Index: {results['index_count']} clips, {results['index_kind']}, "
        f"{results['index_dim']} dims (the demo's model). The mix is what the page asks per search: the search, "
        "the thumbnails of the first 4 results and the first 64 KiB of the first video.",
        "",
        "| load | requests | errors | requests/s | p50 ms | p95 ms | max ms | server cores busy | client cores busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['requests']} | {r['errors']} | {r['requests_per_s']} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['max_ms']} | {r.get('server_cores_busy', '-')} | "
                     f"{r.get('client_cores_busy', '-')} |")
    search, ref = results["search"], results["reference"]
    errors = sum(results[load]["errors"] for load in LOADS)
    total = sum(results[load]["requests"] for load in LOADS)
    lines += [
        "",
        f"- Errors: {errors} in {total} requests.",
        f"- Text search over HTTP serves {search['requests_per_s']} requests/s against "
        f"{ref['requests_per_s']} searches/s in-process ({results['overhead_pct']:.0f}% less): the server spends "
        f"{1000 * search['server_cores_busy'] / search['requests_per_s']:.2f} ms of CPU per search request "
        f"against {ref['p50_ms']:.2f} ms for the search itself; the rest is HTTP, JSON and the thread pool. "
        f"Latency under {results['clients']} clients is mostly queueing: the model runs one query at a time.",
        "- The clients run on the same 2 cores as the server. Where the client column nears 1.0 (the `/api/info` "
        "and mix loads) the Python client, not the server, sets the pace, so those rows are floors.",
        "",
        f"Machine: {results['machine']}; load average before the run {results['load_average']:.2f}. "
        f"Libraries: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}.",
        "",
    ]
    if results.get("screenshot"):
        lines += [f"Screenshot (`{results['screenshot']['query']}`, first result playing): "
                  f"![the search page](../images/{Path(results['screenshot']['file']).name})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    atomic_write_json(out.with_suffix(".json"), results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="runs/demo/index", help="index folder (`make demo` writes one)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "serve.md"))
    parser.add_argument("--screenshot", default=str(REPO / "docs" / "images" / "serve_search.png"),
                        help="PNG of the page ('' skips it)")
    args = parser.parse_args(argv)
    index_dir = Path(args.index).resolve()
    records = [json.loads(line) for line in (index_dir / "clips.jsonl").read_text().splitlines() if line.strip()]
    info = json.loads((index_dir / "info.json").read_text())
    queries = sorted({r["caption"] for r in records if r.get("caption")})[:200] or [SCREENSHOT_QUERY]
    load_before = load_average()
    print(f"in-process reference over {len(queries)} captions as queries ...", flush=True)
    reference = in_process_reference(index_dir, queries)
    port = free_port()
    server = start_server(index_dir, port, args.server_threads)
    base = f"http://127.0.0.1:{port}"
    try:
        loads = {}
        for seed, load in enumerate(LOADS):
            print(f"{load} load: {args.clients} clients for {args.seconds:.0f} s ...", flush=True)
            loads[load] = measure_cpu(server.pid, lambda: asyncio.run(
                run_load(base, queries, args.clients, args.seconds, load=load, seed=1000 * seed)))
        search = loads["search"]
        chromium = os.environ.get("HDVILA_CHROMIUM") or shutil.which("chromium")
        screenshot = (take_screenshot(base, Path(args.screenshot), chromium)
                      if args.screenshot and chromium else None)
    finally:
        server.terminate()
        server.wait(timeout=30)
    results = {
        "index": os.path.relpath(index_dir, REPO), "index_count": info["count"], "index_kind": info["kind"],
        "index_dim": info["dim"], "clients": args.clients, "seconds": args.seconds,
        "server_threads": args.server_threads, "reference": reference, **loads,
        "overhead_pct": 100 * (1 - search["requests_per_s"] / reference["requests_per_s"]),
        "screenshot": screenshot, "machine": machine_line(), "load_average": load_before,
        "versions": {name: version(name) for name in ("fastapi", "starlette", "uvicorn", "httptools",
                                                      "uvloop", "httpx", "faiss-cpu", "torch")} | {"python": platform.python_version()},
    }
    write_report(results, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    return 1 if any(loads[load]["errors"] for load in LOADS) else 0


if __name__ == "__main__":
    sys.exit(main())
