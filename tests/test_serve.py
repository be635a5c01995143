"""The search page: its clip media, its JSON API (every bad input), the `hdvila serve` command, and the page
itself in a real headless Chromium (type, see results in score order, click, the video plays)."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import hdvila  # noqa: F401  (registers the model configs)
from data_tools.decoders import open_video
from hdvila.retrieval.clip_media import MEDIA_FILE, THUMB_OFFSETS_FILE, THUMBS_FILE, ClipMedia, write_clip_media
from hdvila.retrieval.index import load_index_folder
from hdvila.serve.app import CONTENT_SECURITY_POLICY, create_app, is_loopback, running_server
from hdvila.serve.service import RangeNotSatisfiable, SearchService, ServeLimits, parse_byte_range

from serve_helpers import HOSTILE_CAPTION, artifacts_dir, build_serving_index, chromium_path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return build_serving_index(tmp_path_factory.mktemp("serve"), kinds=("flat", "ivf", "hnsw"))


@pytest.fixture(scope="module")
def service(folders):
    return SearchService.from_folder(folders["flat"])


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        yield c


def member_bytes(service, clip: int) -> bytes:
    """The clip's mp4 as the tar library reads it, found by its sample key (not through the index's offsets)."""
    key = service.records[clip]["key"]
    for shard in service.info["shard_files"]:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name == f"{key}.mp4":
                    return tar.extractfile(member).read()
    raise AssertionError(f"{key}.mp4 not found")


# ------------------------------------------------------------------------------------------------- media

def test_index_folder_has_a_thumbnail_and_a_video_location_for_every_clip(folders, service):
    info = json.loads((folders["flat"] / "info.json").read_text())
    assert info["media"] == {"playable": service.index.ntotal, "thumbnails": service.index.ntotal,
                             "missing_video": 0, "thumbnail_failures": 0}
    assert all(os.path.isabs(p) for p in info["shard_files"])
    for clip in range(service.index.ntotal):
        path, offset, size = service.media.video_location(clip)
        with open(path, "rb") as fh:
            fh.seek(offset)
            assert fh.read(size) == member_bytes(service, clip)


def test_thumbnail_is_the_clips_middle_frame(service):
    for clip in (0, service.index.ntotal - 1):
        thumb = Image.open(io.BytesIO(service.thumbnail(clip)))
        assert thumb.format == "JPEG" and max(thumb.size) <= 320 and thumb.size[1] <= 180
        with open_video(member_bytes(service, clip), backend="pyav") as reader:
            frame = reader.get_frames([reader.num_frames // 2])[0]
        expected = np.asarray(Image.fromarray(frame).resize(thumb.size, Image.Resampling.BILINEAR), np.float32)
        other = np.asarray(Image.fromarray(np.roll(frame, frame.shape[1] // 2, axis=1)).resize(
            thumb.size, Image.Resampling.BILINEAR), np.float32)
        error = np.abs(np.asarray(thumb.convert("RGB"), np.float32) - expected).mean()
        assert error < 6.0 and error < np.abs(other - expected).mean() / 2


def test_a_bad_clip_is_reported_and_the_good_ones_keep_their_media(service, tmp_path):
    good = member_bytes(service, 0)
    shard = tmp_path / "mixed.tar"
    with tarfile.open(shard, "w") as tar:
        for name, payload in (("a.mp4", good), ("a.txt", b"caption"), ("b.mp4", b"\x00not a video" * 50),
                              ("c.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out = tmp_path / "media"
    out.mkdir()
    counts = write_clip_media(out, [str(shard)], ["a", "b", "c"], backend="pyav", progress=False)
    assert counts == {"playable": 2, "thumbnails": 1, "missing_video": 1, "thumbnail_failures": 1}
    media = ClipMedia(out, [str(shard)], 3)
    assert Image.open(io.BytesIO(media.thumbnail(0))).format == "JPEG"
    assert media.thumbnail(1) is None and media.thumbnail(2) is None
    path, offset, size = media.video_location(0)
    assert path.read_bytes()[offset:offset + size] == good
    assert media.video_location(2) is None
    with pytest.raises(KeyError):
        media.thumbnail(3)


def test_clip_media_refuses_files_that_do_not_describe_the_index(folders, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folders["flat"], broken)
    count = len((broken / "clips.jsonl").read_text().splitlines())
    info = json.loads((broken / "info.json").read_text())
    offsets = np.load(broken / THUMB_OFFSETS_FILE)
    offsets[-1] += 10  # claims more bytes than thumbnails.bin holds
    np.save(broken / THUMB_OFFSETS_FILE, offsets)
    with pytest.raises(ValueError, match="does not describe"):
        ClipMedia(broken, info["shard_files"], count)
    shutil.copy(folders["flat"] / THUMB_OFFSETS_FILE, broken / THUMB_OFFSETS_FILE)
    media = np.load(broken / MEDIA_FILE)
    media[0, 0] = len(info["shard_files"])  # a shard the folder does not list
    np.save(broken / MEDIA_FILE, media)
    with pytest.raises(ValueError, match="names shards"):
        ClipMedia(broken, info["shard_files"], count)
    np.save(broken / MEDIA_FILE, media.astype(object), allow_pickle=True)  # a pickle is never loaded
    with pytest.raises(ValueError):
        ClipMedia(broken, info["shard_files"], count)


def test_a_shard_replaced_by_a_shorter_one_is_not_misread(folders, tmp_path, service):
    copy = tmp_path / "copy"
    shutil.copytree(folders["flat"], copy)
    info = json.loads((copy / "info.json").read_text())
    shards = []
    for i, shard in enumerate(info["shard_files"]):
        shards.append(str(tmp_path / f"{i}.tar"))
        shutil.copy(shard, shards[-1])
    info["shard_files"] = shards
    (copy / "info.json").write_text(json.dumps(info))
    media = ClipMedia(copy, shards, service.index.ntotal)
    last = int(np.argmax(media.media[:, 1]))  # the clip furthest into its shard
    shard = shards[int(media.media[last, 0])]
    with open(shard, "r+b") as fh:
        fh.truncate(int(media.media[last, 1]) + 10)
    assert media.video_location(last) is None
    assert media.video_location(0 if last else 1) is not None or int(media.media[0, 0]) == int(media.media[last, 0])


# ------------------------------------------------------------------------------------------------- API

def test_search_returns_the_exact_top_k_in_score_order(client, service):
    answer = client.get("/api/search", params={"q": "a red circle moves to the left", "k": 5}).json()
    scores = [h["score"] for h in answer["hits"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and [h["rank"] for h in answer["hits"]] == [1, 2, 3, 4, 5]
    query = service.encoder.encode_text(["a red circle moves to the left"]).numpy()[0]
    gallery = service.index.reconstruct_n(0, service.index.ntotal)
    expected = np.argsort(-(gallery @ query), kind="stable")[:5]
    assert [h["id"] for h in answer["hits"]] == expected.tolist()
    assert np.allclose(scores, (gallery @ query)[expected], atol=1e-5)
    first = answer["hits"][0]
    assert first["thumbnail"] == f"/api/clips/{first['id']}/thumbnail" and first["video"].endswith("/video")
    assert first["caption"] == service.records[first["id"]]["caption"]
    assert "/" not in (first["source"] or "")  # no server folder leaks into the page


def test_more_like_this_ranks_by_the_clips_own_embedding_and_leaves_it_out(client, service):
    answer = client.get("/api/similar", params={"id": 2, "k": 4}).json()
    gallery = service.index.reconstruct_n(0, service.index.ntotal)
    order = [i for i in np.argsort(-(gallery @ gallery[2]), kind="stable") if i != 2][:4]
    assert [h["id"] for h in answer["hits"]] == [int(i) for i in order]
    assert answer["like"]["id"] == 2 and all(h["id"] != 2 for h in answer["hits"])


def test_k_larger_than_the_index_returns_every_clip_once(client, service):
    answer = client.get("/api/search", params={"q": "anything", "k": 100}).json()
    assert sorted(h["id"] for h in answer["hits"]) == list(range(service.index.ntotal))


@pytest.mark.parametrize("kind,param,value,echo", [("ivf", "nprobe", 4096, "nprobe"), ("hnsw", "ef", 7, "ef")])
def test_recall_options_reach_the_index(folders, kind, param, value, echo):
    service = SearchService.from_folder(folders[kind])
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        about = c.get("/api/info").json()
        assert about["kind"] == kind
        answer = c.get("/api/search", params={"q": "a square", "k": 3, param: value}).json()
        expected = min(value, about["nlist"]) if kind == "ivf" else value
        assert answer[echo] == expected and len(answer["hits"]) == 3
        assert c.get("/api/similar", params={"id": 1, "k": 3, param: value}).status_code == 200


def test_an_ivfpq_gallery_is_served_with_nprobe_and_more_like_this(folders, service, tmp_path):
    """A compressed (ivfpq) folder: too big a gallery for the tiny corpus, so 600 stored vectors around its
    clips' own embeddings, with the tiny model to embed the text."""
    from hdvila.retrieval.index import IndexParams, build_index, save_index_folder

    flat, _, _ = load_index_folder(folders["flat"])
    clips = np.stack([flat.reconstruct(i) for i in range(flat.ntotal)])
    rng = np.random.default_rng(0)
    vectors = clips[np.arange(600) % len(clips)] + 0.05 * rng.standard_normal((600, clips.shape[1]))
    index = build_index(vectors, "ivfpq", IndexParams(nlist=8, pq_m=16, nprobe=2, rerank=50))
    save_index_folder(tmp_path / "ivfpq", index, [{"key": f"v{i}", "caption": f"vector {i}"} for i in range(600)],
                      {"model": str(folders["model"]), "params": vars(index.params)})
    compressed = SearchService.from_folder(tmp_path / "ivfpq")
    with TestClient(create_app(compressed), raise_server_exceptions=False) as c:
        about = c.get("/api/info").json()
        assert about["kind"] == "ivfpq" and about["nlist"] == 8 and about["count"] == 600
        answer = c.get("/api/search", params={"q": "a square", "k": 5, "nprobe": 4096}).json()
        assert answer["nprobe"] == 8 and len(answer["hits"]) == 5
        scores = [h["score"] for h in answer["hits"]]
        assert scores == sorted(scores, reverse=True) and answer["hits"][0]["caption"].startswith("vector ")
        like = c.get("/api/similar", params={"id": 3, "k": 4}).json()
        assert like["like"]["id"] == 3 and all(h["id"] != 3 for h in like["hits"])
        # the nearest stored vectors of clip 3's neighbours share its source clip (ids 3 + 12j)
        assert any(h["id"] % len(clips) == 3 for h in like["hits"])


def test_video_is_served_from_the_shard_with_range_requests(client, service):
    whole = member_bytes(service, 1)
    size = len(whole)
    full = client.get("/api/clips/1/video")
    assert full.status_code == 200 and full.content == whole and full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-type"] == "video/mp4"
    cases = {"bytes=0-99": (0, 99), "bytes=10-": (10, size - 1), "bytes=-50": (size - 50, size - 1),
             f"bytes=5-{size + 1000}": (5, size - 1)}
    for header, (start, end) in cases.items():
        part = client.get("/api/clips/1/video", headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == whole[start:end + 1]
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert int(part.headers["content-length"]) == end - start + 1
    for ignored in ("bytes=0-1,5-6", "bytes=9-3", "items=0-5", "bytes=x-y"):  # RFC 9110: ignore, send it all
        assert client.get("/api/clips/1/video", headers={"Range": ignored}).content == whole
    past = client.get("/api/clips/1/video", headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert "error" in past.json()


def test_parse_byte_range_cases():
    assert parse_byte_range(None, 100) is None and parse_byte_range("", 100) is None
    assert parse_byte_range("bytes=0-0", 100) == (0, 0)
    assert parse_byte_range("bytes=-500", 100) == (0, 99)
    assert parse_byte_range("bytes=99999999999999999999999-", 100) is None  # absurd numbers are ignored
    with pytest.raises(RangeNotSatisfiable):
        parse_byte_range("bytes=100-", 100)
    with pytest.raises(RangeNotSatisfiable):
        parse_byte_range("bytes=-0", 100)


BAD_REQUESTS = [
    ("/api/search", {}, 422),
    ("/api/search", {"q": ""}, 400),
    ("/api/search", {"q": "  \x00\x1b  "}, 400),
    ("/api/search", {"q": "x" * 201}, 422),
    ("/api/search", {"q": "ok", "k": 0}, 422),
    ("/api/search", {"q": "ok", "k": 101}, 422),
    ("/api/search", {"q": "ok", "k": "ten"}, 422),
    ("/api/search", {"q": "ok", "k": "1e9"}, 422),
    ("/api/search", {"q": "ok", "nprobe": 0}, 422),
    ("/api/search", {"q": "ok", "ef": 100000}, 422),
    ("/api/similar", {"id": -1}, 422),
    ("/api/similar", {"id": 10 ** 6}, 404),
    ("/api/similar", {"id": "../etc/passwd"}, 422),
    ("/api/similar", {"id": 0, "k": 1000}, 422),
    ("/api/clips/999999/thumbnail", {}, 404),
    ("/api/clips/-3/video", {}, 404),
    ("/api/clips/abc/video", {}, 422),
    ("/api/clips/..%2F..%2Fetc%2Fpasswd/video", {}, 404),
    ("/api/clips/1/../../../etc/passwd", {}, 404),
    ("/static/../../setup.py", {}, 404),
    ("/nothing-here", {}, 404),
]


@pytest.mark.parametrize("path,params,status", BAD_REQUESTS)
def test_bad_requests_get_a_json_message_and_no_traceback(client, path, params, status):
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in response.text and "File \"" not in response.text


def test_an_internal_failure_is_reported_without_its_details(folders, monkeypatch):
    service = SearchService.from_folder(folders["flat"])

    def broken(texts):
        raise RuntimeError("secret detail at /srv/private/model.safetensors")

    monkeypatch.setattr(service.encoder, "encode_text", broken)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        response = c.get("/api/search", params={"q": "hello"})
    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    assert "secret" not in response.text


def test_every_response_carries_a_restrictive_policy(client):
    for path in ("/", "/app.js", "/api/info", "/api/clips/0/thumbnail", "/nothing-here"):
        headers = client.get(path).headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    page = client.get("/").text
    assert "<script>" not in page and not re.search(r"\son[a-z]+\s*=", page)  # no inline script or handler


def test_the_page_never_parses_index_text_as_html(client):
    script = client.get("/app.js").text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script
    answer = client.get("/api/similar", params={"id": 1, "k": 100}).json()
    hostile = [h for h in answer["hits"] if h["id"] == 0]
    assert hostile and hostile[0]["caption"] == HOSTILE_CAPTION  # JSON carries it verbatim; the page escapes it


def test_an_index_built_before_clip_media_still_searches(folders, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(folders["flat"], old)
    for name in (MEDIA_FILE, THUMBS_FILE, THUMB_OFFSETS_FILE):
        (old / name).unlink()
    with TestClient(create_app(SearchService.from_folder(old)), raise_server_exceptions=False) as c:
        about = c.get("/api/info").json()
        assert about["thumbnails"] is False and about["playback"] is False
        hits = c.get("/api/search", params={"q": "a circle", "k": 3}).json()["hits"]
        assert len(hits) == 3 and hits[0]["thumbnail"] is None and hits[0]["video"] is None
        for path in ("/api/clips/0/thumbnail", "/api/clips/0/video"):
            response = c.get(path)
            assert response.status_code == 404 and "rebuild" in response.json()["error"]


def test_limits_are_configurable(folders):
    service = SearchService.from_folder(folders["flat"], limits=ServeLimits(max_query_chars=10, max_k=3))
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        assert c.get("/api/search", params={"q": "x" * 11}).status_code == 422
        assert c.get("/api/search", params={"q": "x", "k": 4}).status_code == 422
        assert c.get("/api/info").json()["limits"]["max_k"] == 3


# ------------------------------------------------------------------------------------------------- the command

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening socket on `port`, from the kernel's table (/proc/net/tcp)."""
    found = set()
    with open("/proc/net/tcp") as fh:
        for line in list(fh)[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A = LISTEN; the address is little-endian hex
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def test_serve_command_binds_this_machine_only_by_default(folders):
    import httpx

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    proc = subprocess.Popen([sys.executable, "-m", "hdvila.cli", "--quiet", "serve", "--index", str(folders["flat"]),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                about = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "hdvila serve did not come up"
                time.sleep(0.3)
        assert about["count"] > 0
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out


# ------------------------------------------------------------------------------------------------- the browser

def browser_or_skip() -> str:
    path = chromium_path()
    if path is None:
        message = ("no Chromium found: the search page's browser tests need Debian's chromium package "
                   "(apt-get install -y chromium) or HDVILA_CHROMIUM=/path/to/chromium")
        if os.environ.get("HDVILA_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def page_and_url(service):
    chromium = browser_or_skip()
    from playwright.sync_api import sync_playwright

    with running_server(create_app(service)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        messages = []
        page.on("console", lambda m: messages.append((m.type, m.text)))
        page.on("pageerror", lambda e: messages.append(("pageerror", str(e))))
        page.goto(url + "/")
        # function predicates: the page's policy forbids the string eval that a bare expression would need
        page.wait_for_function("() => document.getElementById('about').textContent.includes('clips')")
        yield page, url, messages
        browser.close()


def test_typing_a_query_shows_results_in_score_order_and_the_first_one_plays(page_and_url, client):
    page, url, messages = page_and_url
    query = "a red circle moves to the left"
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_function("() => document.querySelectorAll('.hit').length > 0")
    shown = page.eval_on_selector_all(".hit", "cards => cards.map(c => [Number(c.dataset.id), "
                                               "Number(c.dataset.score)])")
    api = client.get("/api/search", params={"q": query, "k": 10}).json()["hits"]
    assert [i for i, _ in shown] == [h["id"] for h in api]
    scores = [s for _, s in shown]
    assert scores == sorted(scores, reverse=True)
    page.click(".hit >> nth=0")
    page.wait_for_function("() => { const v = document.getElementById('video');"
                           " return v.currentTime > 0.3 && v.readyState >= 2; }", timeout=30_000)
    assert page.get_attribute("#video", "src") == f"/api/clips/{shown[0][0]}/video"
    played = page.evaluate("() => document.getElementById('video').currentTime")
    page.screenshot(path=str(artifacts_dir() / "serve_search.png"))
    assert played > 0.3
    thumbs_loaded = page.eval_on_selector_all(".hit img", "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
    assert thumbs_loaded == len(shown)
    policy_errors = [text for kind, text in messages if "Content Security Policy" in text or kind == "pageerror"]
    assert not policy_errors, policy_errors


def test_more_like_this_and_captions_render_as_text(page_and_url):
    page, url, messages = page_and_url
    page.select_option("#k", "50")
    page.fill("#query", "a shape")
    page.press("#query", "Enter")
    page.wait_for_function("() => document.querySelectorAll('.hit').length > 0")
    page.wait_for_function("() => document.querySelector('.hit[data-id=\"0\"]') !== null")
    caption = page.text_content('.hit[data-id="0"] .caption')
    assert caption == HOSTILE_CAPTION
    assert page.evaluate("() => document.getElementById('injected') === null && "
                         "document.getElementById('bold') === null")
    first = page.get_attribute(".hit >> nth=0", "data-id")
    page.click(".hit >> nth=0 >> button.like")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('like')")
    ids = page.eval_on_selector_all(".hit", "cards => cards.map(c => c.dataset.id)")
    assert first not in ids and len(ids) > 0


def test_the_page_shows_an_api_error_to_the_user(page_and_url):
    page, url, messages = page_and_url
    page.fill("#query", "   ")
    page.evaluate("() => document.getElementById('search-form').requestSubmit()")
    page.wait_for_function("() => document.getElementById('status').classList.contains('error')")
    assert "type a sentence" in page.text_content("#status")
