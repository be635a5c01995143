"""The search page's web app: FastAPI over a `SearchService`, served by uvicorn.

    app = create_app(SearchService.from_folder("runs/demo/index"))
    serve("runs/demo/index", host="127.0.0.1", port=8000)            # what `hdvila serve` runs

FastAPI (on Starlette) because it checks query types for us and its thread pool runs the blocking model and
FAISS calls off the event loop; uvicorn because it is the server both projects document. The page is three
static files (no inline script, so the Content-Security-Policy can forbid it) that use the same JSON API a
script would:

    GET /api/info                                   the index: size, kind, recall options, limits
    GET /api/search?q=TEXT&k=10[&nprobe=N][&ef=N]   text to video
    GET /api/similar?id=ID&k=10[&nprobe=N][&ef=N]   video to video ("more like this")
    GET /api/clips/ID/thumbnail                     JPEG written when the index was built
    GET /api/clips/ID/video                         the clip's mp4, read in place from its shard (Range requests)

Every error is JSON {"error": message}; a failure inside the server answers "internal error" and is logged,
never sent as a traceback.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Iterator

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from data_tools.logs import get_logger

from .service import (BadRequest, NotFound, RangeNotSatisfiable, SearchService, ServeLimits, iter_file_range,
                      parse_byte_range)

log = get_logger(__name__)

STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8")}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Pure ASGI middleware: the same headers on every response, streamed ones included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _static(name: str) -> bytes:
    return resources.files("hdvila.serve").joinpath("static", name).read_bytes()


def _validation_message(exc) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def create_app(service: SearchService) -> FastAPI:
    limits = service.limits
    app = FastAPI(title="hdvila search", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    static = {route: (_static(name), media) for route, (name, media) in STATIC_FILES.items()}

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return error(400, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return error(404, str(exc))

    @app.exception_handler(RangeNotSatisfiable)
    async def unsatisfiable(request: Request, exc: RangeNotSatisfiable):
        return error(416, str(exc), {"Content-Range": f"bytes */{exc.size}"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return error(exc.status_code, message)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error")

    def page(route: str) -> Response:
        body, media = static[route]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    for route in STATIC_FILES:
        app.add_api_route(route, lambda route=route: page(route), methods=["GET"], include_in_schema=False)
    # browsers ask for it unprompted; "no content" keeps their consoles free of a 404
    app.add_api_route("/favicon.ico", lambda: Response(status_code=204), methods=["GET"], include_in_schema=False)

    def effort():  # a fresh Query per parameter: FastAPI binds one to the first name it meets
        return Query(None, ge=1, le=limits.max_effort)

    # answers are plain dicts of JSON types: JSONResponse skips FastAPI's per-field encoder walk
    @app.get("/api/info")
    def info():
        return JSONResponse(service.about())

    # searches queue for one worker thread of their own (the service runs one at a time anyway) instead of
    # holding a thread of the shared pool each while they wait; thumbnails and video keep flowing meanwhile
    searcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")

    async def on_searcher(fn, *args):
        return JSONResponse(await asyncio.get_running_loop().run_in_executor(searcher, fn, *args))

    @app.get("/api/search")
    async def search(q: str = Query(..., max_length=limits.max_query_chars),
                     k: int = Query(10, ge=1, le=limits.max_k), nprobe: int | None = effort(),
                     ef: int | None = effort()):
        return await on_searcher(service.search_text, q, k, nprobe, ef)

    @app.get("/api/similar")
    async def similar(id: int = Query(..., ge=0), k: int = Query(10, ge=1, le=limits.max_k),
                      nprobe: int | None = effort(), ef: int | None = effort()):
        return await on_searcher(service.similar, id, k, nprobe, ef)

    @app.get("/api/clips/{clip}/thumbnail")
    def thumbnail(clip: int):
        return Response(service.thumbnail(clip), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/clips/{clip}/video")
    def video(clip: int, request: Request):
        path, offset, size = service.video(clip)
        wanted = parse_byte_range(request.headers.get("range"), size)
        start, end = wanted if wanted is not None else (0, size - 1)
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1),
                   "Cache-Control": "private, max-age=300"}
        if wanted is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return StreamingResponse(iter_file_range(path, offset + start, end - start + 1),
                                 status_code=206 if wanted is not None else 200, media_type="video/mp4",
                                 headers=headers)

    app.add_middleware(SecurityHeaders)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(index_dir: str | Path, model_dir: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits | None = None, log_level: str = "info") -> None:
    """Load the index and its model, then serve the page until interrupted."""
    import uvicorn

    encoder = None
    if model_dir is not None:
        from hdvila.encoder import load_pretrained

        encoder = load_pretrained(model_dir)
    service = SearchService.from_folder(index_dir, encoder=encoder, limits=limits)
    if not is_loopback(host):
        log.warning("serving on %s: anyone who can reach this address can search the index and play its clips",
                    host)
    shown = f"[{host}]" if ":" in host else host
    print(f"searching {service.index.ntotal} clips of {index_dir} at http://{shown}:{port}/  (Ctrl-C stops)",
          flush=True)
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, server_header=False,
                proxy_headers=False)


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` from a background thread on a free port; yields its base URL. For tests and benchmarks."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", server_header=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
