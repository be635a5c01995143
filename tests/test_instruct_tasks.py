"""Instruction data (issue 16): procedural scenes, face landmarks, the four task converters, held-out axes, the
training stream and its resumption, evaluation sets."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from animation.faces import (FACE_LANDMARKS, HAIR, IRIS, LIP, MOUTH, SKIN, FaceFactors, _ramp,
                             face_landmarks, render_faces)
from data_tools.config import load_config
from data_tools.photos import FRAME_SPLITS, PHOTO_SPLITS, PhotoPool
from data_tools.scenes import PARTS, Scene, SceneObject, sample_scene, textured_background
from data_tools.synth import COLOURS, SHAPES, shape_distance
from data_tools.training import BatchStream
from instruct.tasks import (EDIT_KINDS, KEYPOINT_COLOURS, KEYPOINT_PARTS, MARK_COLOURS, RESTORE_KINDS, TASKS,
                            TEMPLATES, ExampleSampler, InstructDataConfig, _choice, check_config, degrade, disk_mask,
                            example_grid, heldout_combos, keypoint_radius, make_eval_set, make_instruct_batches,
                            template_pattern, training_examples)

CFG = InstructDataConfig()


@pytest.fixture(scope="module")
def sampler() -> ExampleSampler:
    return ExampleSampler(CFG)


def _plain_scene(objects, size=32, grey=100) -> Scene:
    return Scene(np.full((size, size, 3), grey, np.uint8), tuple(objects))


# --- scenes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64, 256])
def test_scene_render_is_the_coverage_composite(size):
    rng = np.random.default_rng(size)
    for _ in range(10):
        scene = sample_scene(rng, size)
        cov = scene.coverage()
        colours = np.array([o.rgb for o in scene.objects], np.float32)
        expected = np.einsum("nhw,nc->hwc", cov, colours) + (1 - cov.sum(0))[..., None] * scene.background
        # each paste rounds once: at most half a level per object
        assert np.abs(scene.render() - expected).max() <= 0.5 * len(scene.objects) + 1e-3
        masks = scene.masks()
        assert masks.sum(0).max() <= 1  # disjoint
        assert masks.shape == (len(scene.objects), size, size) and masks.any(axis=(1, 2)).all()
        assert len({o.combo for o in scene.objects}) == len(scene.objects) <= 3
        for obj in scene.objects:  # inside the image
            assert 1.2 * obj.r <= min(obj.x, obj.y, size - obj.x, size - obj.y)


def test_masks_are_exact_for_circle_and_square():
    c = np.arange(32) + 0.5
    dx, dy = c[None, :] - 15, c[:, None] - 17
    circle = _plain_scene([SceneObject("circle", "red", 15, 17, 6.3)])
    np.testing.assert_array_equal(circle.masks()[0], dx ** 2 + dy ** 2 <= 6.3 ** 2)
    square = _plain_scene([SceneObject("square", "blue", 15, 17, 6.3)])
    np.testing.assert_array_equal(square.masks()[0], np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * 6.3)


def test_masks_are_occlusion_aware():
    red = SceneObject("circle", "red", 12, 16, 7.0)
    blue = SceneObject("square", "blue", 19, 16, 6.0)
    scene = _plain_scene([red, blue])
    masks = scene.masks()
    alone = _plain_scene([red]).masks()[0]
    hidden = alone & masks[1]
    assert hidden.sum() > 10  # they do overlap
    assert not (masks[0] & masks[1]).any()
    np.testing.assert_array_equal(masks[0], alone & ~masks[1])  # the later object takes the overlap
    img = scene.render()
    assert (img[masks[1]] == blue.rgb).all(-1).mean() > 0.6 and (img[hidden] == blue.rgb).all(-1).mean() > 0.6
    # drawn the other way round, the red circle takes the overlap
    swapped = _plain_scene([blue, red]).masks()
    assert swapped[1][hidden].all()


def test_keypoints_lie_on_the_outline_where_expected():
    obj = SceneObject("circle", "green", 16, 16, 8.0)
    kp = obj.keypoints()
    assert kp == {"centre": (16, 16), "top": pytest.approx((16, 8)), "bottom": pytest.approx((16, 24)),
                  "left side": pytest.approx((8, 16)), "right side": pytest.approx((24, 16))}
    assert SceneObject("triangle", "red", 16, 16, 5.0).keypoints()["top"] == pytest.approx((16, 16 - 1.2 * 5.0))
    for shape in SHAPES:
        o = SceneObject(shape, "red", 20, 20, 7.0)
        for part, (x, y) in o.keypoints().items():
            d = float(shape_distance(shape, np.float64(x - 20), np.float64(y - 20), 7.0))
            assert (d < -1) if part == "centre" else abs(d) < 1e-6, (shape, part, d)
        pts = o.keypoints()
        assert pts["top"][1] < 20 < pts["bottom"][1] and pts["left side"][0] < 20 < pts["right side"][0]


def test_part_visibility_follows_occlusion():
    low = SceneObject("circle", "red", 12, 16, 6.0)
    top = SceneObject("square", "blue", 18, 16, 5.0)
    scene = _plain_scene([low, top])
    vis = scene.visible_keypoints(0)
    assert "right side" not in vis and "left side" in vis and "centre" in vis  # (18, 16) is under the square
    assert set(scene.visible_keypoints(1)) == set(PARTS)


def test_edit_rerenders_change_only_that_object():
    rng = np.random.default_rng(3)
    for _ in range(20):
        scene = sample_scene(rng, 32, n_objects=3)
        cov = scene.coverage()
        src = scene.render()
        for i in range(len(scene.objects)):
            colour = next(c for c in COLOURS if c != scene.objects[i].colour)
            for edited in (scene.recoloured(i, colour), scene.removed(i)):
                changed = (edited.render() != src).any(-1)
                assert not (changed & (cov[i] == 0)).any()
                assert changed[scene.masks()[i]].mean() > 0.9
            np.testing.assert_array_equal(scene.removed(i).background, scene.background)


def test_sample_scene_deterministic_and_respects_combos():
    a, b = (sample_scene(np.random.default_rng(7), 48) for _ in range(2))
    np.testing.assert_array_equal(a.render(), b.render())
    assert a.objects == b.objects
    allowed = [("circle", "red"), ("star", "blue"), ("cross", "green")]
    for seed in range(20):
        s = sample_scene(np.random.default_rng(seed), 32, combos=allowed[:2], include=("square", "orange"))
        combos = {o.combo for o in s.objects}
        assert ("square", "orange") in combos and combos <= set(allowed[:2]) | {("square", "orange")}
    with pytest.raises(ValueError, match=">= 16"):
        sample_scene(np.random.default_rng(0), 12)
    with pytest.raises(ValueError, match="unknown shape"):
        sample_scene(np.random.default_rng(0), 32, combos=[("hexagon", "red")])


def test_textured_background_is_achromatic_noise():
    bg = textured_background(np.random.default_rng(0), 32, noise=6, name="white")
    assert (bg[..., 0] == bg[..., 1]).all() and bg.std() > 1 and np.abs(bg.astype(int) - 238).max() <= 6


# --- faces ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("turn", [-1.0, 0.0, 0.7])
def test_face_landmarks_sit_on_their_features(turn):
    f = FaceFactors(head_turn=turn, mouth_open=1.0, eye_left=1.0, eye_right=1.0, smile=0.4, brow_raise=0.3)
    v = f.to_vector()[None]
    img = render_faces(v, 128)[0].astype(np.float32)
    pts = face_landmarks(v, 128)
    skin, hair = _ramp(SKIN, v[:, 2])[0] * 255, _ramp(HAIR, v[:, 3])[0] * 255
    expected = {"left eye": np.array(IRIS) * 255, "right eye": np.array(IRIS) * 255, "nose": 0.82 * skin,
                "mouth": np.array(MOUTH) * 255, "left eyebrow": 0.65 * hair, "right eyebrow": 0.65 * hair,
                "left mouth corner": np.array(LIP) * 255, "right mouth corner": np.array(LIP) * 255,
                "chin": 0.72 * skin}
    assert set(pts) == set(FACE_LANDMARKS) == set(expected)
    for name, colour in expected.items():
        x, y = pts[name][0]
        assert np.abs(img[int(y), int(x)] - colour).max() < 12, name


def test_face_landmarks_mirror_for_a_frontal_face_and_scale_with_size():
    v = FaceFactors().to_vector()[None]
    small, big = face_landmarks(v, 32), face_landmarks(v, 96)
    for name in FACE_LANDMARKS:
        np.testing.assert_allclose(big[name], small[name] * 3, rtol=1e-5)
    for left in ("left eye", "left eyebrow", "left mouth corner"):
        right = left.replace("left", "right")
        np.testing.assert_allclose(small[left][0, 0] + small[right][0, 0], 32, atol=1e-4)
        np.testing.assert_allclose(small[left][0, 1], small[right][0, 1], atol=1e-6)


# --- converters ----------------------------------------------------------------------------------------------

def test_segment_blends_the_named_objects_mask_half_way(sampler):
    rng = np.random.default_rng(0)
    present = 0
    for _ in range(60):
        ex = sampler.segment(rng)
        m = ex.meta
        scene = m["scene"]
        names = {o.combo for o in scene.objects}
        assert ex.instruction.count(m["object"]) == 1 and m["mark"] in ex.instruction
        if m["absent"]:
            assert (m["shape"], m["colour"]) not in names and not m["mask"].any()
            np.testing.assert_array_equal(ex.target, ex.source)
            continue
        present += 1
        i = scene.index(m["shape"], m["colour"])
        np.testing.assert_array_equal(m["mask"], scene.masks()[i])
        np.testing.assert_array_equal(ex.source, scene.render())
        expect = (ex.source.astype(int) + np.array(MARK_COLOURS[m["mark"]]) + 1) // 2
        np.testing.assert_array_equal(ex.target[m["mask"]], expect[m["mask"]])
        np.testing.assert_array_equal(ex.target[~m["mask"]], ex.source[~m["mask"]])
    assert present > 30


def test_absent_rate_is_one_in_five(sampler):
    rng = np.random.default_rng(11)
    n = 800
    absent = sum(sampler.segment(rng).meta["absent"] for _ in range(n))
    sd = np.sqrt(n * 0.2 * 0.8)
    assert abs(absent - 0.2 * n) <= 4 * sd, absent


@pytest.mark.parametrize("size", [32, 64])
def test_keypoint_disks_fixed_radius_distinct_colours_right_places(size):
    s = ExampleSampler(InstructDataConfig(size=size))
    rng = np.random.default_rng(size)
    radius = keypoint_radius(size)
    counts, kinds = [], set()
    for _ in range(150):
        ex = s.keypoint(rng)
        m = ex.meta
        k = len(m["points"])
        counts.append(k)
        kinds.add(m["source_kind"])
        assert 1 <= k <= 5 and len(set(m["colours"])) == k and m["radius"] == radius
        assert len(re.findall(r"\.( |$)", ex.instruction)) >= k  # one sentence per part
        union = np.zeros((size, size), bool)
        for (x, y), colour in zip(m["points"], m["colours"]):
            disk = disk_mask(size, x, y, radius)
            assert (ex.target[disk] == KEYPOINT_COLOURS[colour]).all()  # opaque
            unclipped = disk_mask(size + 4 * radius, x + 2 * radius, y + 2 * radius, radius)
            assert disk.sum() == unclipped.sum() >= 5  # the whole disk of the fixed radius is in the image
            union |= disk
        np.testing.assert_array_equal(ex.target[~union], ex.source[~union])
        # the points are the true parts
        for obj, part, (x, y) in zip(m["objects"], m["parts"], m["points"]):
            if m["source_kind"] == "face":
                assert (x, y) == tuple(face_landmarks(m["factors"], size)[part][0])
            else:
                scene = m["scene"]
                i = next(j for j, o in enumerate(scene.objects) if f"the {o.name}" == obj)
                assert scene.objects[i].keypoints()[part] == pytest.approx((x, y))
                assert scene.part_visible(i, x, y)
    assert set(counts) == {1, 2, 3, 4, 5} and kinds == {"face", "scene"}


def test_restore_targets_are_the_clean_crops(sampler):
    for seed in range(12):
        ex = sampler.restore(np.random.default_rng(seed))
        replay = np.random.default_rng(seed)
        _choice(replay, CFG.restore_kinds)
        clean, name = sampler.photos.crop(replay, CFG.size)
        np.testing.assert_array_equal(ex.target, clean)
        assert ex.meta["photo"] == name and ex.meta["kind"] in RESTORE_KINDS
        assert not np.array_equal(ex.source, ex.target)


def test_degradations():
    from scipy.ndimage import gaussian_filter

    clean = np.random.default_rng(0).integers(40, 216, (64, 64, 3)).astype(np.uint8)
    noisy, sigma = degrade(clean, "denoise", np.random.default_rng(1))
    assert 10 <= sigma <= 35 and abs((noisy.astype(float) - clean).std() / sigma - 1) < 0.1
    blurred, s = degrade(clean, "deblur", np.random.default_rng(2))
    ref = gaussian_filter(clean.astype(np.float32), (s, s, 0), mode="reflect")
    assert np.abs(blurred - ref).max() <= 0.51 and blurred.std() < clean.std()
    marked, opacity = degrade(clean, "watermark", np.random.default_rng(3))
    diff = np.abs(marked.astype(int) - clean).max(-1)
    assert 0.35 <= opacity <= 0.65 and 0.01 < (diff > 0).mean() < 0.5
    with pytest.raises(ValueError, match="unknown restoration"):
        degrade(clean, "dehaze", np.random.default_rng(0))


def test_photo_splits_are_disjoint():
    names = [set(v) for v in PHOTO_SPLITS.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    spans = sorted(FRAME_SPLITS.values())
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # with a gap between blocks
    val = PhotoPool.load("val", 32)
    assert set(val.names) == set(PHOTO_SPLITS["val"]) | {f"bigbuckbunny:{k}" for k in range(*FRAME_SPLITS["val"], 2)}
    assert val.images[-1].shape == (128, 228, 3) and min(val.images[0].shape[:2]) == 128


def test_photo_pool_cache_dir_and_sources(tmp_path):
    import data_tools.photos as photos

    first = PhotoPool.load("test", 32, source="photos", cache_dir=tmp_path)
    assert first.names == PHOTO_SPLITS["test"] and len(list(tmp_path.iterdir())) == 1  # one entry, nothing else
    photos._pool.cache_clear()
    again = PhotoPool.load("test", 32, source="photos", cache_dir=tmp_path)  # read back from the disk entry
    for a, b in zip(first.images, again.images, strict=True):
        np.testing.assert_array_equal(a, b)
    frames = PhotoPool.load("test", 32, source="frames")
    assert all(n.startswith("bigbuckbunny:") for n in frames.names)
    crop, name = frames.crop(np.random.default_rng(0), 40)
    assert crop.shape == (40, 40, 3) and crop.dtype == np.uint8 and name in frames.names
    with pytest.raises(ValueError, match="photo source"):
        PhotoPool.load("test", 32, source="web")


def test_edit_targets_differ_only_at_the_object(sampler):
    rng = np.random.default_rng(5)
    kinds = set()
    for _ in range(60):
        ex = sampler.edit(rng)
        m = ex.meta
        kinds.add(m["kind"])
        scene = m["scene"]
        i = scene.index(m["shape"], m["colour"])
        changed = (ex.target != ex.source).any(-1)
        assert changed.any() and not (changed & ~m["region"]).any()
        expected = {"recolour": lambda: scene.recoloured(i, m.get("new_colour", "red")),
                    "remove": lambda: scene.removed(i), "bigger": lambda: scene.scaled(i, 1.4)}[m["kind"]]()
        np.testing.assert_array_equal(ex.target, expected.render())
        assert m["object"] in ex.instruction
        if m["kind"] == "recolour":
            assert m["new_colour"] != m["colour"] and m["new_colour"] in ex.instruction
            assert (m["shape"], m["new_colour"]) not in heldout_combos(0).objects  # training combos only
        if m["kind"] == "bigger":
            assert m["grown"].sum() >= 4 and not (m["grown"] & m["mask"]).any()
    assert kinds == set(EDIT_KINDS)


# --- templates and held-out axes -----------------------------------------------------------------------------

def test_templates_train_and_heldout_disjoint():
    for family, sets in TEMPLATES.items():
        assert 8 <= len(sets["train"]) <= 11 and 3 <= len(sets["heldout"]) <= 4, family
        assert not set(sets["train"]) & set(sets["heldout"])
        for t in sets["heldout"]:  # a held-out sentence is never also readable as a training one
            sentence = t.format(object="the red circle", colour="blue", part="top")
            assert not any(template_pattern(u, GROUPS).fullmatch(sentence) for u in sets["train"]), t


def test_heldout_combos_deterministic_and_spread():
    a, b, c = heldout_combos(0), heldout_combos(0), heldout_combos(1)
    assert a == b and a != c
    train_objects = {(s, k) for s in SHAPES for k in COLOURS} - set(a.objects)
    assert len(a.objects) == round(0.25 * len(SHAPES) * len(COLOURS))
    assert {s for s, _ in train_objects} == set(SHAPES) and {k for _, k in train_objects} == set(COLOURS)
    for part in KEYPOINT_PARTS:
        held = {k for p, k in a.keypoints if p == part}
        assert len(held) == 2 and held <= set(KEYPOINT_COLOURS)
    counts = np.bincount([list(KEYPOINT_COLOURS).index(k) for _, k in a.keypoints])
    assert counts.max() - counts.min() <= 1


_alt = "|".join  # noqa: E731
GROUPS = {"object": f"the person|the (?:{_alt(COLOURS)}) (?:{_alt(SHAPES)})",
          "colour": _alt(set(COLOURS) | set(MARK_COLOURS) | set(KEYPOINT_COLOURS)), "part": _alt(KEYPOINT_PARTS)}


def _parse(instruction: str, families: list[str], phrasing: str) -> list[dict]:
    """Split an instruction into sentences of the given templates; [] if some text matches none."""
    found, pos = [], 0
    patterns = [template_pattern(t, GROUPS) for f in families for t in TEMPLATES[f][phrasing]]
    while pos < len(instruction):
        for p in patterns:
            for end in [m.end() for m in re.finditer(r"[.?!](?= |$)", instruction[pos:])]:
                hit = p.fullmatch(instruction, pos, pos + end)
                if hit:
                    found.append(hit.groupdict())
                    pos += end + 1
                    break
            else:
                continue
            break
        else:
            return []
    return found


FAMILIES = {"segment": ["segment"], "keypoint": ["keypoint"], "restore": list(RESTORE_KINDS), "edit": list(EDIT_KINDS)}


def test_training_batches_hold_no_heldout_phrasing_or_combo():
    held = heldout_combos(CFG.heldout_seed)
    source = make_instruct_batches(CFG, 32, seed=1)
    seen_tasks = set()
    for index, batch in zip(range(12), source(0)):
        for text, task in zip(batch["instruction"], batch["task"]):
            seen_tasks.add(task)
            sentences = _parse(text, FAMILIES[task], "train")
            assert sentences, text
            assert not _parse(text, FAMILIES[task], "heldout"), text
            for s in sentences:
                if "object" in s and s["object"] != "the person":
                    colour, shape = s["object"].removeprefix("the ").split(" ")
                    assert (shape, colour) not in held.objects, text
                if "part" in s:
                    assert (s["part"], s["colour"]) not in held.keypoints, text
    assert seen_tasks == set(TASKS)
    # and no held-out pair is drawn anywhere in a training scene (not only in the named object)
    sampler = ExampleSampler(CFG)
    for index in range(6):
        for ex in training_examples(sampler, 32, seed=1, epoch=0, index=index):
            scene = ex.meta.get("scene")
            if scene is not None:
                assert not {o.combo for o in scene.objects} & set(held.objects)


@pytest.mark.parametrize("combos,phrasing", [("heldout", "heldout"), ("heldout", "train"), ("train", "heldout")])
def test_eval_sets_follow_both_axes(combos, phrasing):
    held = heldout_combos(CFG.heldout_seed)
    examples = make_eval_set(CFG, 12, "val", seed=0, combos=combos, phrasing=phrasing)
    assert [e.task for e in examples] == [t for t in CFG.tasks for _ in range(12)]
    for ex in examples:
        assert _parse(ex.instruction, FAMILIES[ex.task], phrasing), ex.instruction
        m = ex.meta
        if ex.task in ("segment", "edit"):
            assert ((m["shape"], m["colour"]) in held.objects) == (combos == "heldout")
        if ex.task == "keypoint":
            assert all(m["heldout_combo"]) if combos == "heldout" else not any(m["heldout_combo"])
        if ex.task == "restore":
            assert m["photo"] in PHOTO_SPLITS["val"] or m["photo"].startswith("bigbuckbunny:")


def test_eval_sets_deterministic_val_and_test_differ():
    val = make_eval_set(CFG, 4, "val", seed=0)
    again = make_eval_set(CFG, 6, "val", seed=0)
    test = make_eval_set(CFG, 4, "test", seed=0)
    prefix = [e for t in CFG.tasks for e in [x for x in again if x.task == t][:4]]  # a larger set extends a smaller
    for a, b in zip(val, prefix, strict=True):
        np.testing.assert_array_equal(a.source, b.source)
        assert a.instruction == b.instruction
    assert all(not np.array_equal(a.source, b.source) for a, b in zip(val, test))
    restore_test = [e.meta["photo"] for e in make_eval_set(InstructDataConfig(tasks=["restore"]), 30, "test")]
    assert not set(restore_test) & (set(PHOTO_SPLITS["train"]) | set(PHOTO_SPLITS["val"]))
    assert all(int(p.split(":")[1]) >= FRAME_SPLITS["test"][0] for p in restore_test if p.startswith("bigbuckbunny"))


# --- the stream ----------------------------------------------------------------------------------------------

def test_batches_format():
    batch = next(iter(make_instruct_batches(InstructDataConfig(size=48), 6, seed=0)(0)))
    assert set(batch) == {"source", "target", "instruction", "task"}
    for key in ("source", "target"):
        x = batch[key]
        assert x.dtype == torch.float32 and x.shape == (6, 3, 48, 48)
        assert x.min() >= -1 and x.max() <= 1
    assert len(batch["instruction"]) == 6 and all(isinstance(t, str) and t for t in batch["instruction"])
    assert set(batch["task"]) <= set(TASKS)


def test_stream_is_deterministic_and_resumes_mid_epoch():
    cfg = InstructDataConfig(epoch_batches=5)
    first = list(make_instruct_batches(cfg, 4, seed=3)(0))
    assert len(first) == 5
    assert not torch.equal(first[0]["source"], first[1]["source"])  # each batch index draws its own examples
    again = make_instruct_batches(cfg, 4, seed=3)(0)
    again.skip_batches(3)
    resumed = list(again)
    assert len(resumed) == 2
    for a, b in zip(first[3:], resumed):
        assert torch.equal(a["source"], b["source"]) and torch.equal(a["target"], b["target"])
        assert a["instruction"] == b["instruction"]
    # through the trainer's own stream: seek to (epoch 0, 3 batches consumed), then epoch 1 follows
    stream = BatchStream(make_instruct_batches(cfg, 4, seed=3))
    stream.seek(0, 3)
    assert stream.next()["instruction"] == first[3]["instruction"]
    stream.next()
    epoch1 = stream.next()
    assert stream.epoch == 1 and epoch1["instruction"] != first[0]["instruction"]
    other_rank = next(iter(make_instruct_batches(cfg, 4, seed=3, rank=1, world_size=2)(0)))
    other_seed = next(iter(make_instruct_batches(cfg, 4, seed=4)(0)))
    assert not torch.equal(other_rank["source"], first[0]["source"])
    assert not torch.equal(other_seed["source"], first[0]["source"])


def test_task_weights_and_config_checks(tmp_path):
    only = InstructDataConfig(task_weights={"segment": 1.0, "keypoint": 0.0, "restore": 0.0, "edit": 0.0})
    batch = next(iter(make_instruct_batches(only, 16, seed=0)(0)))
    assert batch["task"] == ["segment"] * 16
    bad = [InstructDataConfig(tasks=["segment", "pose"]), InstructDataConfig(size=12), InstructDataConfig(tasks=[]),
           InstructDataConfig(task_weights={"depth": 1.0}), InstructDataConfig(edit_kinds=["shrink"]),
           InstructDataConfig(absent_fraction=1.5), InstructDataConfig(photo_source="web"),
           InstructDataConfig(task_weights={t: 0.0 for t in TASKS})]
    for cfg in bad:
        with pytest.raises(ValueError):
            check_config(cfg)
    with pytest.raises(ValueError, match="unknown tasks"):
        make_instruct_batches(InstructDataConfig(tasks=["depth"]), 4, seed=0)
    with pytest.raises(ValueError, match=">= 16"):
        make_eval_set(InstructDataConfig(size=8), 2)
    with pytest.raises(ValueError, match="split"):
        make_eval_set(CFG, 2, split="train")
    with pytest.raises(ValueError, match="combos"):
        make_eval_set(CFG, 2, combos="unseen")
    with pytest.raises(ValueError, match="unknown task"):
        ExampleSampler(CFG).example("depth", np.random.default_rng(0))
    path = tmp_path / "data.yaml"
    path.write_text("size: 64\ntasks: [segment, edit]\ntask_weights: {edit: 2.0}\n")
    cfg = load_config(InstructDataConfig, path, ["heldout_seed=3"])
    assert (cfg.size, cfg.tasks, cfg.task_weights, cfg.heldout_seed) == (64, ["segment", "edit"], {"edit": 2.0}, 3)
    check_config(cfg)


def test_example_grid(tmp_path):
    from PIL import Image

    examples = make_eval_set(InstructDataConfig(tasks=["segment", "edit"]), 2, "val")
    path = example_grid(examples, tmp_path / "grid.png", scale=2)
    with Image.open(path) as im:
        assert im.size == (2 * (2 * 32 + 3), 2 * (4 * 32 + 5))
    path = example_grid(examples, tmp_path / "out.png", outputs=[e.source for e in examples], scale=1)
    with Image.open(path) as im:
        assert im.size == (3 * 32 + 4, 4 * 32 + 5)
    with pytest.raises(ValueError):
        example_grid([], tmp_path / "none.png")
