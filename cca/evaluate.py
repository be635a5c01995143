"""The multi-step editing benchmark: instructions on the synthetic scenes whose every step the ground truth can
check, and the arms that try them.

A task is one object edit of the InstructDiffusion evaluation set (held-out (object, colour) pairs and held-out
phrasings, `instruct.tasks.make_eval_set`) plus one or two whole-picture steps, said in one sentence:

    "Mirror the picture left to right, then switch the red circle to blue."
    "Dye the green star yellow, then rotate the picture a quarter turn clockwise and blur the whole picture."

The truth is exact: the edited scene is re-rendered (instruct.tasks), then the picture steps are applied (quarter
turns and mirrors move pixels exactly; "black and white" is PIL's grey conversion; "blur" a Gaussian of radius
1 px). Turns and mirrors commute with an object edit, so they may be said before or after it; grey and blur are
said last. Grey never follows a recolouring (its colour could not be checked).

A result succeeds when every step is right and nothing else changed:
* turns and mirrors: of the eight square symmetries of the true picture before them, the output is nearest the
  one the steps make (or within 0.5 grey levels of the nearest: symmetric pictures tie);
* black and white: mean saturation at most 0.03; blur: sharpness at most 0.8 of the unblurred truth's;
* the object edit and "nothing else changed": the output, turned back, scored by `instruct.decode.score` against
  the truth before the turns (the issue-16 edit scorer: the new colour on the object's core, the object gone or
  grown, and every pixel away from the object within 10 levels of the truth).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .perception import TRANSFORMS, saturation, sharpness

SPLITS = ("val", "test")
BLUR_RADIUS = 1.0
GREY_MAX_SATURATION = 0.03
BLUR_MAX_SHARPNESS = 0.8
GEOMETRY_TIE = 0.5  # grey levels

# picture steps: the phrasings a task may say, and whether it must come last
PICTURE_STEPS: dict[str, dict[str, Any]] = {
    "flip_horizontal": {"say": ("mirror the picture left to right", "flip the picture horizontally"), "last": False},
    "flip_vertical": {"say": ("flip the picture top to bottom", "mirror the picture top to bottom"), "last": False},
    "rotate_90_clockwise": {"say": ("rotate the picture a quarter turn clockwise", "turn the picture 90 degrees clockwise"),
                            "last": False},
    "rotate_180": {"say": ("turn the picture upside down", "rotate the picture by 180 degrees"), "last": False},
    "rotate_90_counterclockwise": {"say": ("rotate the picture a quarter turn anticlockwise",), "last": False},
    "grayscale": {"say": ("make the picture black and white", "turn the picture grey"), "last": True},
    "blur": {"say": ("blur the whole picture", "soften the whole picture with a blur"), "last": True},
}
GEOMETRIC = tuple(k for k, v in PICTURE_STEPS.items() if not v["last"])


def grey(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).convert("L").convert("RGB"))


def blur(image: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(BLUR_RADIUS)))


FINISHING = {"grayscale": grey, "blur": blur}


@dataclass
class AgentTask:
    index: int
    instruction: str
    source: np.ndarray  # uint8 [H, W, 3]
    target: np.ndarray  # the truth after every step
    edit: Any  # instruct.tasks.InstructExample: the object edit alone (scene, masks, its own phrasing)
    geometric: list[str]  # TRANSFORMS names, in the order applied
    finishing: list[str]  # grayscale / blur, in order
    order: list[str] = field(default_factory=list)  # every step as said: "edit" or a PICTURE_STEPS name


def _compose(names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(a: np.ndarray) -> np.ndarray:
        for n in names:
            a = TRANSFORMS[n](a)
        return np.ascontiguousarray(a)
    return apply


def _inverse(names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    inverse = {"rotate_90_clockwise": "rotate_90_counterclockwise", "rotate_90_counterclockwise": "rotate_90_clockwise"}
    return _compose([inverse.get(n, n) for n in reversed(names)])  # the others undo themselves


def _picture_steps(image: np.ndarray, geometric: Sequence[str], finishing: Sequence[str]) -> np.ndarray:
    """The picture steps applied exactly: grey and blur, then the turns and mirrors (they commute)."""
    for f in finishing:
        image = FINISHING[f](image)
    return _compose(geometric)(image)


def _clause(text: str) -> str:
    text = text.strip().rstrip(".")
    return text if text.startswith("I ") else text[:1].lower() + text[1:]


def make_tasks(data_cfg: Any, n: int, split: str = "val", seed: int = 0) -> list[AgentTask]:
    """`n` tasks of a split. Task j depends only on (split, seed, j): held-out objects and phrasings of the
    InstructDiffusion evaluation set, one or two picture steps, the order drawn."""
    import dataclasses

    from instruct.tasks import make_eval_set

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg = dataclasses.replace(data_cfg, tasks=["edit"])
    edits = make_eval_set(cfg, n, split=split, seed=seed)
    tasks = []
    for j, ex in enumerate(edits):
        rng = np.random.default_rng([seed, j, 20])
        n_steps = int(rng.integers(1, 3))
        allowed = [k for k in PICTURE_STEPS if not (k == "grayscale" and ex.meta["kind"] == "recolour")]
        steps = [allowed[i] for i in rng.choice(len(allowed), n_steps, replace=False)]
        steps = [s for s in steps if not PICTURE_STEPS[s]["last"]] + [s for s in steps if PICTURE_STEPS[s]["last"]]
        geometric = [s for s in steps if s in GEOMETRIC]
        finishing = [s for s in steps if s not in GEOMETRIC]
        said = [s for s in geometric] + ["edit"]
        if rng.random() < 0.5:
            said = ["edit"] + geometric
        said += finishing
        phrases = [_clause(ex.instruction) if s == "edit" else
                   PICTURE_STEPS[s]["say"][int(rng.integers(len(PICTURE_STEPS[s]["say"])))] for s in said]
        text = phrases[0] if len(phrases) == 1 else ", then ".join(phrases[:-1]) + (
            " and " if len(phrases) > 2 else ", then ") + phrases[-1]
        text = text[:1].upper() + text[1:] + "."
        target = _picture_steps(ex.target, geometric, finishing)
        tasks.append(AgentTask(j, text, ex.source, target, ex, geometric, finishing, said))
    return tasks


def check(task: AgentTask, output: np.ndarray) -> dict[str, Any]:
    """Every step of a task checked on one output: {"success", per-step booleans, the edit scorer's fields}."""
    from instruct.decode import score
    from instruct.tasks import InstructExample

    out = np.asarray(output, np.uint8)
    result: dict[str, Any] = {}
    if out.shape != task.target.shape:
        return {"success": False, "size_ok": False, "steps_ok": 0, "steps": len(task.order)}
    # the truth before the turns and mirrors, with the finishing steps
    before_turns = task.edit.target
    source_finished = task.edit.source
    for f in task.finishing:
        before_turns = FINISHING[f](before_turns)
        source_finished = FINISHING[f](source_finished)
    grey_truth = before_turns.astype(np.float32).mean(-1)
    grey_out = out.astype(np.float32).mean(-1)
    errors = {name: float(np.abs(fn(grey_truth) - grey_out).mean()) for name, fn in TRANSFORMS.items()}
    wanted = _compose(task.geometric)(np.arange(16).reshape(4, 4))  # the symmetry the steps make, by its effect
    wanted_name = next(n for n, fn in TRANSFORMS.items() if np.array_equal(fn(np.arange(16).reshape(4, 4)), wanted))
    # a tie (a lone centred object on a plain background looks alike turned) passes
    result["geometry_ok"] = errors[wanted_name] <= min(errors.values()) + GEOMETRY_TIE
    if "grayscale" in task.finishing:
        result["grey_ok"] = saturation(out) <= GREY_MAX_SATURATION
    if "blur" in task.finishing:
        unblurred = _compose(task.geometric)(task.edit.target)
        result["blur_ok"] = sharpness(out) <= BLUR_MAX_SHARPNESS * sharpness(unblurred)
    upright = _inverse(task.geometric)(out)
    example = InstructExample(source_finished, before_turns, task.edit.instruction, "edit", task.edit.meta)
    s = score(example, upright)
    result.update(edit_ok=bool(s["attribute_ok"]), rest_ok=bool(s["rest_ok"]), rest_mae=round(float(s["rest_mae"]), 2))
    oks = [v for k, v in result.items() if k.endswith("_ok")]
    result.update(success=all(oks), checks_ok=int(sum(oks)), checks=len(oks))
    return result


# ------------------------------------------------------------------------------------------------ arms

def agent_arms() -> dict[str, Any]:
    """Arm name -> AgentsConfig, or a string naming a baseline without agents."""
    from .loop import AgentsConfig

    return {
        "one_shot": "one_shot",  # InstructDiffusion alone, given the whole instruction once
        "oracle_plan": "oracle_plan",  # the shortcut: the true split, the edit clause to the model once, exact steps
        "one_agent": AgentsConfig(agents=1, rounds=1),  # one agent, one round: no reflection, no judge's choice
        "cca": AgentsConfig(agents=2, rounds=3),
        "no_reflection": AgentsConfig(agents=2, rounds=3, reflection=False),  # rounds rerun the first plan, new seeds
        "no_cooperation": AgentsConfig(agents=2, rounds=3, cooperation=False),
        "no_competition": AgentsConfig(agents=1, rounds=3),
    }


def run_arm(arm: str, task: AgentTask, pipeline: Any, model_dir: Any, out_dir: Any, *, llm_spec: str = "scripted",
            llm_options: dict[str, Any] | None = None, seed: int = 0, edit_steps: int | None = 25,
            text_scale: float | None = None, image_scale: float | None = None) -> dict[str, Any]:
    """One arm on one task with the editing model `pipeline` (loaded from `model_dir`); returns {"arm", "task",
    the check's fields, "edit_calls", "llm_calls", "rounds", "seconds"}. An agents arm runs in the folder
    out_dir, and a folder that already holds a result.json is read, not rerun."""
    import dataclasses
    import time
    from pathlib import Path

    from .llm import make_llm
    from .loop import CCARun
    from .tools import RunFolder, ToolContext

    spec = agent_arms()[arm]
    start = time.perf_counter()
    scales = {"text_scale": text_scale, "image_scale": image_scale, "steps": edit_steps}
    if spec in ("one_shot", "oracle_plan"):
        text = task.instruction if spec == "one_shot" else task.edit.instruction
        edited = pipeline.edit(task.source, text, seed=seed, **scales)
        output = edited if spec == "one_shot" else _picture_steps(edited, task.geometric, task.finishing)
        info = {"edit_calls": 1, "llm_calls": 0, "rounds": 0}
    else:
        folder = Path(out_dir)
        done = folder / "result.json"
        if not done.exists():
            ctx = ToolContext(RunFolder(folder), instruct_model=model_dir, edit_steps=edit_steps,
                              text_scale=text_scale, image_scale=image_scale)
            ctx._cache["instruct"] = pipeline  # one model for every run
            run = CCARun(make_llm(llm_spec, **(llm_options or {})), ctx, dataclasses.replace(spec, seed=seed))
            result = run(task.source, task.instruction)
            result["edit_calls"] = ctx.counts.get("instruct_edit", 0)
            from data_tools.files import atomic_write_json

            atomic_write_json(done, result)
        result = json.loads(done.read_text())
        output = RunFolder(folder).read_image(result["image"])
        info = {"edit_calls": result.get("edit_calls", 0), "llm_calls": result["llm_calls"],
                "rounds": result["rounds_run"]}
    checked = check(task, output)
    return {"arm": arm, "task": task.index, **checked, **info, "seconds": round(time.perf_counter() - start, 2)}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per arm: success rate, the edit's and the picture steps' rates, mean editing-model and LLM calls."""
    out: dict[str, dict[str, float]] = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        out[arm] = {"n": len(mine), "success": float(np.mean([r["success"] for r in mine])),
                    "edit_ok": float(np.mean([r.get("edit_ok", False) for r in mine])),
                    "rest_ok": float(np.mean([r.get("rest_ok", False) for r in mine])),
                    "geometry_ok": float(np.mean([r.get("geometry_ok", False) for r in mine])),
                    "edit_calls": float(np.mean([r["edit_calls"] for r in mine])),
                    "llm_calls": float(np.mean([r["llm_calls"] for r in mine])),
                    "seconds": float(np.mean([r["seconds"] for r in mine]))}
        judged = [r for r in mine if "agents_all_ok" in r]
        if judged:  # how often the agents' own checks agreed with the truth on their final pick
            out[arm]["self_check_agreement"] = float(np.mean([r["agents_all_ok"] == r["success"] for r in judged]))
            out[arm]["self_check_false_pass"] = float(np.mean([r["agents_all_ok"] and not r["success"] for r in judged]))
            out[arm]["rejected_reply_share"] = float(sum(r["rejected_replies"] for r in judged)
                                                     / max(1, sum(r["replies"] for r in judged)))
    return out


def _run_stats(folder: Any) -> dict[str, Any]:
    """From an agents run's folder: whether its own checks passed its final pick, and how many of the language
    model's replies were rejected by their schemas."""
    best = json.loads((folder / "result.json").read_text()).get("best") or {}
    replies = rejected = 0
    for line in (folder / "log.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "reply":
            replies += 1
            rejected += bool(event.get("rejected"))
    return {"agents_all_ok": bool(best.get("all_ok")), "replies": replies, "rejected_replies": rejected}


def run_benchmark(model_dir: Any, n_tasks: int, out_dir: Any, *, split: str = "val", seed: int = 0,
                  arms: Sequence[str] | None = None, llm_spec: str = "scripted",
                  llm_options: dict[str, Any] | None = None, edit_steps: int | None = 25,
                  text_scale: float | None = None, image_scale: float | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """`hdvila agents eval`: every arm on the same `n_tasks` tasks; writes out_dir/results.json (the rows,
    the summary and the settings) and returns it. Agents runs keep their folders under out_dir/runs/."""
    from pathlib import Path

    from tqdm.auto import tqdm

    from data_tools.files import atomic_write_json
    from instruct.evaluate import eval_settings
    from instruct.pipeline import InstructPipeline

    known = agent_arms()
    arms = list(arms or known)
    unknown = [a for a in arms if a not in known]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; known: {list(known)}")
    out = Path(out_dir)
    settings = {"model": str(model_dir), "split": split, "seed": seed, "llm": llm_spec, "edit_steps": edit_steps,
                "text_scale": text_scale, "image_scale": image_scale}
    # finished runs in out_dir are reused, so they must have been made with these settings
    recorded = out / "settings.json"
    if recorded.exists() and json.loads(recorded.read_text()) != settings:
        raise ValueError(f"{out} holds runs made with other settings ({recorded}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(recorded, settings)
    pipeline = InstructPipeline.from_pretrained(model_dir)
    data_cfg, _ = eval_settings(pipeline)
    tasks = make_tasks(data_cfg, n_tasks, split=split, seed=seed)
    llm_name = llm_spec.replace(":", "-").replace("/", "_")[-60:]
    rows = []
    with tqdm(total=len(arms) * len(tasks), desc="agents eval", disable=not progress) as bar:
        for arm in arms:
            for task in tasks:
                folder = out / "runs" / llm_name / arm / f"task{task.index:03d}"
                row = run_arm(arm, task, pipeline, model_dir, folder, llm_spec=llm_spec, llm_options=llm_options,
                              seed=seed, edit_steps=edit_steps, text_scale=text_scale, image_scale=image_scale)
                if (folder / "result.json").exists():
                    row.update(_run_stats(folder))
                rows.append({**row, "instruction": task.instruction, "steps": task.order,
                             "edit_kind": task.edit.meta["kind"]})
                bar.update()
    results = {"settings": {**settings, "tasks": n_tasks, "arms": arms},
               "summary": summarise(rows), "rows": rows}
    atomic_write_json(out / "results.json", results)
    return results


__all__ = ["AgentTask", "BLUR_RADIUS", "GEOMETRIC", "PICTURE_STEPS", "SPLITS", "agent_arms", "check", "make_tasks", "run_arm", "run_benchmark",
           "summarise"]
