"""The agents' tools: a name, a description and a typed argument schema (pydantic) each, run inside a run folder.

Editing tools take an image path and write a new PNG whose name the loop chooses; understanding tools return a
JSON-able dict. Every path an agent writes in its arguments is relative to the run folder and must stay inside
it: absolute paths, '..', and links out of the folder are refused before anything is read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from data_tools.registry import Registry

from .perception import compare_images, find_objects, object_changes, region_change

MAX_SIDE = 1024  # largest image side a tool will make (resize) or read


class ToolError(ValueError):
    """A tool call that cannot run: an unknown tool, arguments that fail its schema, a path outside the run."""


class RunFolder:
    """A run's folder; `resolve` confines agent-written paths to it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def resolve(self, relative: str) -> Path:
        if not isinstance(relative, str) or not relative or "\x00" in relative:
            raise ToolError(f"a path must be a non-empty string, got {relative!r}")
        rel = Path(relative)
        if rel.is_absolute() or ".." in rel.parts:
            raise ToolError(f"path {relative!r} must be relative to the run folder, without '..'")
        path = (self.root / rel).resolve()  # follows links, so one pointing out is caught below
        if path != self.root and self.root not in path.parents:
            raise ToolError(f"path {relative!r} leads outside the run folder")
        return path

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def read_image(self, relative: str) -> np.ndarray:
        from PIL import Image

        path = self.resolve(relative)
        if not path.is_file():
            raise ToolError(f"no image {relative!r} in the run folder")
        try:
            with Image.open(path) as im:
                if max(im.size) > MAX_SIDE:
                    raise ToolError(f"{relative} is {im.size[0]}x{im.size[1]}; tools read at most {MAX_SIDE} px a side")
                return np.array(im.convert("RGB"), np.uint8)  # a writable copy
        except ToolError:
            raise
        except Exception as exc:  # PIL raises many types for a bad file
            raise ToolError(f"{relative}: not a readable image ({type(exc).__name__})") from None

    def write_image(self, image: np.ndarray, relative: str) -> str:
        from instruct.pipeline import write_png

        path = self.resolve(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(image, path)
        return self.relative(path)


@dataclass
class ToolContext:
    """What tools may use: the run folder, the editing model (loaded on first use) and optional models."""

    run: RunFolder
    instruct_model: str | os.PathLike | None = None  # an exported InstructDiffusion folder
    hdvila_model: str | os.PathLike | None = None  # a pretrained HD-VILA folder, for image-text agreement
    face_oracle: str | os.PathLike | None = None  # a trained animation FaceOracle folder, for face attributes
    edit_steps: int | None = None  # sampler steps of the editing model (None: its edit.yaml)
    text_scale: float | None = None  # the editing model's scales when a call sets none (None: its edit.yaml)
    image_scale: float | None = None
    counts: dict[str, int] = field(default_factory=dict)  # calls of the costly tools
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def pipeline(self):
        if "instruct" not in self._cache:
            if not self.instruct_model:
                raise ToolError("no InstructDiffusion model was given to this run (--instruct-model)")
            from instruct.pipeline import InstructPipeline

            self._cache["instruct"] = InstructPipeline.from_pretrained(self.instruct_model)
        return self._cache["instruct"]

    def oracle(self):
        if "face" not in self._cache:
            if not self.face_oracle:
                raise ToolError("no face oracle was given to this run (--face-oracle)")
            from animation.oracle import FaceOracle

            self._cache["face"] = FaceOracle.from_pretrained(self.face_oracle).eval()
        return self._cache["face"]

    def encoder(self):
        if "hdvila" not in self._cache:
            if not self.hdvila_model:
                raise ToolError("no HD-VILA model was given to this run (--hdvila-model)")
            from hdvila.encoder import load_pretrained

            self._cache["hdvila"] = load_pretrained(self.hdvila_model)
        return self._cache["hdvila"]


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageArgs(Args):
    image: str = Field(min_length=1, max_length=300, description="path of the image, relative to the run folder")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[Args]
    run: Callable[[ToolContext, Any], Any]  # edit tools: -> uint8 image; understanding tools: -> dict
    kind: Literal["edit", "understand"] = "edit"

    def validate(self, arguments: dict[str, Any]) -> Args:
        try:
            return self.args.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            raise ToolError(f"{self.name}: {problems}") from None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "arguments": self.args.model_json_schema()}


TOOLS: Registry[Tool] = Registry("agent tool")


def tool(name: str, description: str, args: type[Args], kind: Literal["edit", "understand"] = "edit"):
    def add(fn):
        TOOLS.register(name, Tool(name, description, args, fn, kind))
        return fn
    return add


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image)


# ---------------------------------------------------------------------------------------------- editing tools

class InstructEditArgs(ImageArgs):
    text: str = Field(min_length=1, max_length=200, description="one edit as an instruction, e.g. 'Make the red "
                                                                 "circle blue.'")
    text_scale: float | None = Field(None, ge=0.0, le=20.0, description="s_T: how strongly to follow the text "
                                                                      "(default: the model's own)")
    image_scale: float | None = Field(None, ge=0.0, le=5.0, description="s_I: how closely to keep the input image "
                                                                         "(default: the model's own)")
    seed: int = Field(0, ge=0, le=2**31 - 1)


@tool("instruct_edit", "InstructDiffusion: edit objects of the image as one instruction says (recolour, remove or "
      "enlarge a named object). Works on the upright image it was trained on; one edit per call.", InstructEditArgs)
def _instruct_edit(ctx: ToolContext, a: InstructEditArgs) -> np.ndarray:
    image = ctx.run.read_image(a.image)
    pipe = ctx.pipeline()
    if image.shape[:2] != (pipe.image_size, pipe.image_size):
        raise ToolError(f"instruct_edit edits {pipe.image_size}x{pipe.image_size} images, got "
                        f"{image.shape[1]}x{image.shape[0]} (resize first)")
    ctx.counts["instruct_edit"] = ctx.counts.get("instruct_edit", 0) + 1
    return pipe.edit(image, a.text, text_scale=ctx.text_scale if a.text_scale is None else a.text_scale,
                     image_scale=ctx.image_scale if a.image_scale is None else a.image_scale, steps=ctx.edit_steps,
                     seed=a.seed)


class ResizeArgs(ImageArgs):
    width: int = Field(ge=8, le=MAX_SIDE)
    height: int = Field(ge=8, le=MAX_SIDE)


@tool("resize", "Resize the whole image to width x height pixels (bicubic).", ResizeArgs)
def _resize(ctx: ToolContext, a: ResizeArgs) -> np.ndarray:
    from PIL import Image

    return np.asarray(_pil(ctx.run.read_image(a.image)).resize((a.width, a.height), Image.BICUBIC))


class CropArgs(ImageArgs):
    left: int = Field(ge=0)
    top: int = Field(ge=0)
    right: int = Field(ge=1)
    bottom: int = Field(ge=1)


@tool("crop", "Crop the image to the box [left, right) x [top, bottom) in pixels.", CropArgs)
def _crop(ctx: ToolContext, a: CropArgs) -> np.ndarray:
    image = ctx.run.read_image(a.image)
    h, w = image.shape[:2]
    if not (a.left < a.right <= w and a.top < a.bottom <= h):
        raise ToolError(f"crop box ({a.left}, {a.top}, {a.right}, {a.bottom}) is not inside the {w}x{h} image")
    return image[a.top:a.bottom, a.left:a.right].copy()


class RotateArgs(ImageArgs):
    degrees_clockwise: Literal[90, 180, 270] = Field(description="quarter turns only, so no pixel is resampled")


@tool("rotate", "Rotate the whole picture clockwise by 90, 180 or 270 degrees (180 turns it upside down).", RotateArgs)
def _rotate(ctx: ToolContext, a: RotateArgs) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(ctx.run.read_image(a.image), k=-(a.degrees_clockwise // 90)))


class FlipArgs(ImageArgs):
    direction: Literal["horizontal", "vertical"] = Field(description="horizontal mirrors left-right, vertical "
                                                                     "top-bottom")


@tool("flip", "Mirror the whole picture left to right (horizontal) or top to bottom (vertical).", FlipArgs)
def _flip(ctx: ToolContext, a: FlipArgs) -> np.ndarray:
    image = ctx.run.read_image(a.image)
    return np.ascontiguousarray(image[:, ::-1] if a.direction == "horizontal" else image[::-1])


@tool("grayscale", "Make the whole picture black and white (grey levels only).", ImageArgs)
def _grayscale(ctx: ToolContext, a: ImageArgs) -> np.ndarray:
    return np.asarray(_pil(ctx.run.read_image(a.image)).convert("L").convert("RGB"))


class BlurArgs(ImageArgs):
    radius: float = Field(1.0, gt=0.0, le=10.0, description="Gaussian blur radius in pixels")


@tool("blur", "Blur the whole picture with a Gaussian of the given radius.", BlurArgs)
def _blur(ctx: ToolContext, a: BlurArgs) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(_pil(ctx.run.read_image(a.image)).filter(ImageFilter.GaussianBlur(a.radius)))


class ColourArgs(ImageArgs):
    factor: float = Field(ge=0.0, le=3.0, description="0 grey, 1 unchanged, >1 more saturated")


@tool("colour", "Change the colourfulness of the whole picture by a factor.", ColourArgs)
def _colour(ctx: ToolContext, a: ColourArgs) -> np.ndarray:
    from PIL import ImageEnhance

    return np.asarray(ImageEnhance.Color(_pil(ctx.run.read_image(a.image))).enhance(a.factor))


# ---------------------------------------------------------------------------------------- understanding tools

@tool("find_objects", "List the coloured objects seen in an image: colour, shape, centre and area.", ImageArgs,
      kind="understand")
def _find_objects(ctx: ToolContext, a: ImageArgs) -> dict:
    return {"objects": find_objects(ctx.run.read_image(a.image))}


class PairArgs(Args):
    before: str = Field(min_length=1, max_length=300, description="the image before the edit")
    after: str = Field(min_length=1, max_length=300, description="the image after the edit")


@tool("object_changes", "Compare the objects of two images: which appeared, which disappeared, and how the area of "
      "each kept object changed.", PairArgs, kind="understand")
def _object_changes(ctx: ToolContext, a: PairArgs) -> dict:
    return object_changes(ctx.run.read_image(a.before), ctx.run.read_image(a.after))


@tool("compare_images", "Compare two whole images: which rotation or mirror of the first the second is nearest to, "
      "how much changed, and the ratios of sharpness and colourfulness.", PairArgs, kind="understand")
def _compare(ctx: ToolContext, a: PairArgs) -> dict:
    return compare_images(ctx.run.read_image(a.before), ctx.run.read_image(a.after))


class RegionArgs(PairArgs):
    colour: str = Field(min_length=1, max_length=20, description="the edited object's colour in the first image")
    shape: str = Field(min_length=1, max_length=20, description="its shape")
    grow: float = Field(1.0, ge=1.0, le=3.0, description="how much larger the object may have become")


@tool("region_change", "How an edit of one object changed the picture: the change outside the object (should be "
      "near zero), and whether the object's place now looks like its surroundings.", RegionArgs, kind="understand")
def _region(ctx: ToolContext, a: RegionArgs) -> dict:
    try:
        return region_change(ctx.run.read_image(a.before), ctx.run.read_image(a.after), a.colour, a.shape, a.grow)
    except ValueError as exc:
        raise ToolError(f"region_change: {exc}") from None


class AgreementArgs(ImageArgs):
    texts: list[str] = Field(min_length=1, max_length=16, description="candidate descriptions of the image")


@tool("text_agreement", "HD-VILA image-text agreement: the cosine between the image and each text, and which text "
      "fits best.", AgreementArgs, kind="understand")
def _agreement(ctx: ToolContext, a: AgreementArgs) -> dict:
    enc = ctx.encoder()
    image = ctx.run.read_image(a.image)
    frames = np.repeat(image[None], 4, axis=0)  # a still as a short clip
    v = enc.encode_video([frames])
    t = enc.encode_text([s[:200] for s in a.texts])
    cos = (t @ v.T)[:, 0].tolist()
    return {"cosines": [round(float(c), 4) for c in cos], "best": int(np.argmax(cos))}


@tool("face_attributes", "Read a synthetic face's attributes (smile, mouth open, eyes open, brows, head turn and its "
      "identity factors) with the face domain's oracle.", ImageArgs, kind="understand")
def _face(ctx: ToolContext, a: ImageArgs) -> dict:
    import torch

    from animation.faces import FACTOR_NAMES
    from data_tools.images import from_uint8_images

    oracle = ctx.oracle()
    x = from_uint8_images(ctx.run.read_image(a.image)[None])
    factors = oracle.predict(torch.as_tensor(x))[0].tolist()
    return {name: round(float(v), 3) for name, v in zip(FACTOR_NAMES, factors)}


def run_tool(ctx: ToolContext, name: str, arguments: dict[str, Any], out: str | None = None) -> dict[str, Any]:
    """Validate and run one call. An edit tool's image goes to `out` (a run-folder path the loop chose); the
    result is {"image": path} for edit tools, the tool's dict for understanding tools."""
    if name not in TOOLS:
        raise ToolError(str(TOOLS.unknown(name)))
    t = TOOLS.get(name)
    args = t.validate(arguments)
    result = t.run(ctx, args)
    if t.kind == "understand":
        return result
    if out is None:
        raise ToolError(f"{name} makes an image; the loop must name where it goes")
    image = np.asarray(result)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ToolError(f"{name} returned {image.dtype} {image.shape}, not an RGB image")
    return {"image": ctx.run.write_image(image, out)}


__all__ = ["MAX_SIDE", "RunFolder", "TOOLS", "Tool", "ToolContext", "ToolError", "run_tool"]
