"""Face crops for GAN training and for `animate run`: from video files, video shards or image folders.

    hdvila animate crops --video clip.mp4 --out faces/ --size 64 [--detector mtcnn] [--every 2]
    hdvila animate train-gan --config ... data.kind=folder data.folder=faces/

With `detector="mtcnn"` (facenet-pytorch, optional: `pip install --no-deps facenet-pytorch`; its weights ship
inside the package, so it runs offline) each frame's most confident face is found, and with `align=True` its five
landmarks are mapped by a similarity transform onto a fixed template (eyes level, same place and scale in every
crop), as FFHQ-style data expects. With `detector=None` the centre square of each frame is used. Frames without a
face are not lost silently: each becomes an entry of the report.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from data_tools.decoders import DEFAULT_BACKEND
from data_tools.files import atomic_write_bytes, atomic_write_text
from data_tools.logs import get_logger
from data_tools.media import VIDEO_EXTENSIONS

log = get_logger(__name__)

# Five landmarks (left eye, right eye, nose tip, left and right mouth corner) of a frontal face in a unit square:
# the widely used 112 x 112 face-recognition template, divided by 112.
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]], np.float64) / 112.0



@dataclass
class Detection:
    box: np.ndarray  # [4] x0, y0, x1, y1 in pixels
    landmarks: np.ndarray | None  # [5, 2] x, y in pixels (TEMPLATE order)
    score: float


class FaceDetector(Protocol):
    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detection | None]: ...


class MTCNNDetector:
    """facenet-pytorch's MTCNN: the most confident face of each frame (uint8 [H, W, 3]) or None."""

    def __init__(self, min_score: float = 0.9, device: str = "cpu"):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise ImportError("detector 'mtcnn' needs facenet-pytorch: pip install --no-deps facenet-pytorch "
                              "(its pins predate this torch; the detector itself runs on it)") from exc
        self.mtcnn = MTCNN(keep_all=False, select_largest=False, device=device)
        self.min_score = min_score

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detection | None]:
        out: list[Detection | None] = [None] * len(frames)
        by_shape: dict[tuple, list[int]] = {}
        for i, frame in enumerate(frames):  # MTCNN batches only frames of one size
            by_shape.setdefault(frame.shape, []).append(i)
        for rows in by_shape.values():
            boxes, scores, points = self.mtcnn.detect([frames[i] for i in rows], landmarks=True)
            for i, b, s, p in zip(rows, boxes, scores, points):
                if b is not None and s is not None and s[0] is not None and float(s[0]) >= self.min_score:
                    out[i] = Detection(np.asarray(b[0], np.float64), np.asarray(p[0], np.float64), float(s[0]))
        return out


def get_detector(name: str | None, **kwargs) -> FaceDetector | None:
    if name in (None, "none", "center"):
        return None
    if name == "mtcnn":
        return MTCNNDetector(**kwargs)
    raise ValueError(f"detector must be 'mtcnn' or none, got {name!r}")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking points src [K, 2] to dst [K, 2],
    as a 2 x 3 matrix M with dst ≈ M @ [x, y, 1] (Umeyama's closed form, reflections excluded)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / max(s.var(0).sum(), 1e-12)
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def template_points(size: int, margin: float) -> np.ndarray:
    """TEMPLATE in a size x size crop, shrunk about the centre so that `margin` of the face's scale is left on
    each side (hair, chin and background stay in the picture)."""
    return ((TEMPLATE - 0.5) / (1.0 + 2.0 * margin) + 0.5) * size


def align_face(frame: np.ndarray, landmarks: np.ndarray, size: int, margin: float = 0.35) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] with the five landmarks on `template_points(size, margin)`."""
    from PIL import Image

    m = similarity_transform(landmarks, template_points(size, margin))
    inverse = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]  # PIL maps output pixels back to input pixels
    im = Image.fromarray(frame).transform((size, size), Image.Transform.AFFINE, inverse.flatten().tolist(),
                                          resample=Image.Resampling.BICUBIC)
    return np.asarray(im)


def box_crop(frame: np.ndarray, box: np.ndarray | None, size: int, margin: float = 0.35) -> np.ndarray:
    """The square around `box` grown by `margin` of its size on each side (the centre square of the frame when
    box is None), clamped into the frame, resized to size x size."""
    from PIL import Image

    h, w = frame.shape[:2]
    if box is None:
        side = min(h, w)
        cx, cy = w / 2, h / 2
    else:
        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = min(side, h, w)
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    side = int(round(side))
    crop = Image.fromarray(frame[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


@dataclass
class CropReport:
    frames: int = 0
    crops: int = 0
    no_face: list[str] = field(default_factory=list)  # "source#frame" of frames where no face was found
    unreadable: list[str] = field(default_factory=list)  # sources that failed to decode, with the reason

    def to_dict(self) -> dict:
        return {"frames": self.frames, "crops": self.crops, "no_face": self.no_face, "unreadable": self.unreadable}


def crop_faces(frames: Sequence[np.ndarray], size: int, detector: FaceDetector | None = None, align: bool = True,
               margin: float = 0.35) -> list[np.ndarray | None]:
    """One crop (uint8 [size, size, 3]) per frame, None where the detector found no face."""
    if detector is None:
        return [box_crop(f, None, size) for f in frames]
    out: list[np.ndarray | None] = []
    for frame, det in zip(frames, detector(frames)):
        if det is None:
            out.append(None)
        elif align and det.landmarks is not None:
            out.append(align_face(frame, det.landmarks, size, margin))
        else:
            out.append(box_crop(frame, det.box, size, margin))
    return out


def _video_frames(source, every: int, max_frames: int | None, backend: str) -> Iterator[np.ndarray]:
    from data_tools.decoders.base import open_video

    with open_video(source, backend=backend) as reader:
        indices = list(range(0, reader.num_frames, max(1, every)))[:max_frames]
        for start in range(0, len(indices), 32):
            yield from reader.get_frames(indices[start:start + 32])


def _source_items(path: Path) -> Iterator[tuple[str, Path | bytes | str]]:
    """(label, image path | video bytes | video path), one at a time: a shard's members are read as they come."""
    if path.is_dir():
        for image in sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")):
            yield str(image), image
    elif path.suffix == ".tar":
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and Path(member.name).suffix.lower() in VIDEO_EXTENSIONS:
                    yield f"{path}:{member.name}", tar.extractfile(member).read()
    else:
        yield str(path), str(path)


def iter_sources(sources: Iterable[str | Path], every: int = 1, max_frames: int | None = None,
                 backend: str = DEFAULT_BACKEND, report: CropReport | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(label, uint8 frame) from video files, webdataset shards (.tar, every video member) and image folders.
    Sources that fail to decode go to report.unreadable (or raise when no report is given)."""
    from PIL import Image

    for source in sources:
        for label, item in _source_items(Path(source)):
            try:
                if isinstance(item, Path):
                    with Image.open(item) as im:
                        frames, step = [np.asarray(im.convert("RGB"))], 1
                else:
                    frames, step = list(_video_frames(item, every, max_frames, backend)), every
            except Exception as exc:  # one bad file is a report entry, not the end of the job
                if report is None:
                    raise
                report.unreadable.append(f"{label}: {type(exc).__name__}: {exc}"[:300])
                continue
            for i, frame in enumerate(frames):
                yield f"{label}#{i * step}", frame


def write_face_crops(sources: Sequence[str | Path], out_dir: str | Path, size: int = 64, *,
                     detector: str | None = "mtcnn", align: bool = True, margin: float = 0.35, every: int = 1,
                     max_frames: int | None = None, backend: str = DEFAULT_BACKEND, progress: bool = True) -> CropReport:
    """Crop every `every`-th frame of every source into out_dir/000000.png ... plus out_dir/crops_report.json."""
    from PIL import Image
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    det = get_detector(detector)
    report = CropReport()
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        crops = crop_faces([f for _, f in batch], size, det, align, margin)
        for (label, _), crop in zip(batch, crops):
            if crop is None:
                report.no_face.append(label)
                continue
            buf = io.BytesIO()
            Image.fromarray(crop).save(buf, format="PNG")
            atomic_write_bytes(out / f"{report.crops:06d}.png", buf.getvalue())
            report.crops += 1
        batch.clear()

    for label, frame in tqdm(iter_sources(sources, every, max_frames, backend, report), desc="face crops",
                             unit="frame", disable=not progress):
        report.frames += 1
        batch.append((label, frame))
        if len(batch) == 16:
            flush()
    flush()
    atomic_write_text(out / "crops_report.json", json.dumps(report.to_dict(), indent=1))
    if report.no_face or report.unreadable:
        log.warning("%d of %d frames had no face; %d sources unreadable (see %s)", len(report.no_face),
                    report.frames, len(report.unreadable), out / "crops_report.json")
    return report
