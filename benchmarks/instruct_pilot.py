"""The InstructDiffusion pilot table (docs/results/instruct.md): one exported model on the VALIDATION split at a
few guidance settings and samplers, with the instruction removed, and the unchanged source as a reference.

    python benchmarks/instruct_pilot.py runs/instruct/small-8k/model runs/instruct/pilot8k

Writes OUT/pilot_val.json and a source | target | output grid per setting. The test split is not touched;
the goals are judged by bench_instruct.py, which chooses the scales on validation and scores test once.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

# (s_T, s_I, sampler steps, sampler)
SETTINGS = [(0.5, 0.5, 25, "euler_ancestral"), (1.0, 0.5, 25, "euler_ancestral"), (3.0, 1.25, 25, "euler_ancestral"),
            (5.0, 1.25, 25, "euler_ancestral"), (1.0, 0.5, 25, "ddim"), (3.0, 1.25, 25, "ddim"),
            (5.0, 1.25, 50, "euler_ancestral")]
HEADLINE = {"segment": "iou_present", "keypoint": "pck", "restore": "psnr_gain", "edit": "edit_acc"}


def main() -> None:
    from data_tools.files import atomic_write_json
    from instruct.evaluate import edit_examples, eval_examples, json_safe, score_outputs
    from instruct.pipeline import InstructPipeline
    from instruct.tasks import example_grid

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--n-per-task", type=int, default=16)
    args = parser.parse_args()
    out = Path(args.out)
    pipe = InstructPipeline.from_pretrained(args.model)
    val = eval_examples(pipe, "val", args.n_per_task)
    rows = []
    for text_scale, image_scale, steps, sampler in SETTINGS:
        started = time.time()
        outputs = edit_examples(pipe, val, text_scale=text_scale, image_scale=image_scale, steps=steps, sampler=sampler)
        summary = score_outputs(val, outputs)
        rows.append({"text_scale": text_scale, "image_scale": image_scale, "steps": steps, "sampler": sampler,
                     "summary": summary, "seconds": time.time() - started})
        print(text_scale, image_scale, steps, sampler, {t: round(s[HEADLINE[t]], 3) for t, s in summary.items()},
              flush=True)
        example_grid(val[::4], out / f"grid_{text_scale}_{image_scale}_{steps}_{sampler}.png", outputs=outputs[::4])
    blank = edit_examples(pipe, val, blank_instruction=True, text_scale=3.0, image_scale=1.25, steps=25)
    rows.append({"blank": True, "text_scale": 3.0, "image_scale": 1.25, "summary": score_outputs(val, blank)})
    rows.append({"identity": True, "summary": score_outputs(val, [e.source for e in val])})
    atomic_write_json(out / "pilot_val.json", json_safe(rows))


if __name__ == "__main__":
    main()
