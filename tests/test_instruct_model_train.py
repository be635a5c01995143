"""The InstructDiffusion recipe end to end on the tiny config: condition dropout, a CLI training run that lowers
the loss and exports a pretrained folder, `hdvila instruct edit` in a fresh process, `hdvila instruct eval`."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_tools.config import ConfigError, load_config
from data_tools.training.metrics import read_metrics
from hdvila.cli import main as cli_main
from instruct.pipeline import InstructPipeline, write_png
from instruct.tasks import InstructDataConfig, make_eval_set
from instruct.train import InstructConfig, condition_dropout

CONFIG = "instruct/tiny"
STEPS = 40
# set in this process by the in-process training run (a world of one); a child would join that group's store
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_condition_dropout_rates_and_never_both():
    generator = torch.Generator().manual_seed(0)
    n = 200_000
    drop_text, drop_image = condition_dropout(n, generator, 0.075, 0.075)
    assert not (drop_text & drop_image).any()
    assert drop_text.float().mean().item() == pytest.approx(0.075, abs=0.003)
    assert drop_image.float().mean().item() == pytest.approx(0.075, abs=0.003)
    # at the limit every sample drops exactly one condition
    drop_text, drop_image = condition_dropout(10_000, generator, 0.5, 0.5)
    assert torch.equal(drop_text ^ drop_image, torch.ones(10_000, dtype=torch.bool))
    none_text, none_image = condition_dropout(1000, generator, 0.0, 0.0)
    assert not none_text.any() and not none_image.any()


def test_config_checks():
    cfg = load_config(InstructConfig, CONFIG)
    assert cfg.data.size == 16 and cfg.edit.sampler == "euler_ancestral"
    cases = [(["text_dropout=0.6", "image_dropout=0.5"], "never drops both"),
             (["weighting.name=importance"], "importance"),
             (["model_overrides={widht: 3}"], "unknown instruct model config keys"),
             (["edit.sampler=euler_ancestal"], "did you mean 'euler_ancestral'"),
             (["edit.sampler=heun", "edit.eta=1.0"], "eta"),
             (["data.tasks=[segmentation]"], "unknown tasks"),
             (["model=instruct-tny"], "did you mean 'instruct-tiny'")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(InstructConfig, CONFIG, overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("instruct") / "run"
    assert cli_main(["--quiet", "instruct", "train", "--config", CONFIG, f"output_dir={out}",
                     f"train.max_steps={STEPS}", "train.log_every=10", "train.val_every=20",
                     "train.save_every=20"]) == 0
    return out


def test_tiny_run_lowers_the_loss_validates_and_exports(trained):
    records = read_metrics(trained / "metrics.jsonl")
    first, last = records[0], records[-1]
    assert last["step"] == STEPS and last["loss"] < 0.75 * first["loss"], (first["loss"], last["loss"])
    assert {"mse/segment", "mse/keypoint", "mse/restore", "mse/edit", "dropped_text", "dropped_image"} <= set(first)
    validated = [r for r in records if "val/segment/iou" in r]
    assert [r["step"] for r in validated] == [20, 40]
    assert {"val/keypoint/pck", "val/restore/psnr_gain", "val/edit/edit_acc"} <= set(validated[0])
    assert (trained / "samples" / "step0000020.png").is_file() and (trained / "samples.png").is_file()
    pipe = InstructPipeline.from_pretrained(trained / "model")
    assert pipe.config.target == "v" and pipe.run_config["data"]["size"] == 16
    assert pipe.model.config.text_encoder == "packaged:all-minilm-l6-v2"
    source = make_eval_set(InstructDataConfig(size=16), 1, "val", seed=5)[0].source
    a = pipe.edit(source, "Make the red circle blue.", steps=3, seed=1)
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, pipe.edit(source, "Make the red circle blue.", steps=3, seed=1))
    with pytest.raises(ValueError, match="instructions"):
        pipe.edit(np.stack([source, source]), ["one", "two", "three"])


def test_edit_command_in_a_fresh_process_and_its_input_checks(trained, tmp_path, capsys):
    example = make_eval_set(InstructDataConfig(size=16), 1, "val", seed=2)[3]
    write_png(example.source, tmp_path / "in.png")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "hdvila.cli", "--quiet", "instruct", "edit", "--model",
                           str(trained / "model"), "--image", str(tmp_path / "in.png"), "--text",
                           example.instruction, "--out", str(tmp_path / "out.png"), "--steps", "5",
                           "--text-scale", "4", "--image-scale", "1.5"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "euler_ancestral 5 steps, s_T=4.0, s_I=1.5" in proc.stdout
    from PIL import Image

    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    # bad inputs fail with a message and exit code 2, before the model loads
    write_png(np.zeros((20, 24, 3), np.uint8), tmp_path / "big.png")
    (tmp_path / "junk.png").write_text("not an image")
    for image, message in [("big.png", "24x20 pixels; this model edits 16x16"), ("junk.png", "not a readable image"),
                           ("missing.png", "no such image file")]:
        code = cli_main(["instruct", "edit", "--model", str(trained / "model"), "--image", str(tmp_path / image),
                         "--text", "x", "--out", str(tmp_path / "bad.png")])
        assert code == 2 and message in capsys.readouterr().err
    code = cli_main(["instruct", "edit", "--model", str(trained / "model"), "--image", str(tmp_path / "in.png"),
                     "--text", "x", "--out", str(tmp_path / "bad.png"), "--sampler", "hune"])
    assert code == 2 and "did you mean 'heun'" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()
    code = cli_main(["instruct", "edit", "--model", str(trained / "model"), "--image", str(tmp_path / "in.png"),
                     "--text", "x", "--out", str(tmp_path / "bad.png"), "--steps", "100000"])
    assert code == 2 and "between 1 and 1000" in capsys.readouterr().err
    code = cli_main(["instruct", "edit", "--model", str(trained / "model"), "--image", str(tmp_path / "in.png"),
                     "--text", "x", "--out", str(tmp_path / "in.png" / "out.png"), "--steps", "1"])  # under a file
    assert code == 2 and "cannot write --out" in capsys.readouterr().err
    assert cli_main(["instruct", "edit", "--model", str(trained / "model"), "--image", str(tmp_path / "big.png"),
                     "--text", "x", "--out", str(tmp_path / "resized.png"), "--resize", "--steps", "2"]) == 0
    with Image.open(tmp_path / "resized.png") as im:
        assert im.size == (16, 16)


def test_eval_command_writes_results_figure_and_examples(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_main(["--quiet", "instruct", "eval", "--model", str(trained / "model"), "--split", "test",
                     "--n-per-task", "1", "--steps", "2", "--sweep", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert '"no_instruction"' in printed

    def no_nan(value):
        raise ValueError(f"{value} in strict JSON")

    results = json.loads((out / "results.json").read_text(), parse_constant=no_nan)
    assert set(results["instructed"]) == {"segment", "keypoint", "restore", "edit"}
    assert set(results["no_instruction"]) == set(results["instructed"])
    assert results["settings"]["split"] == "test" and results["settings"]["examples"] == 4
    assert [(r["text_scale"], r["image_scale"]) for r in results["sweep"]] == [(1.0, 1.25), (5.0, 1.25)]
    assert (out / "figure.png").stat().st_size > 1000 and (out / "examples.png").is_file()


def test_a_resumed_run_continues_exactly(trained, tmp_path):
    # noise, λ and dropout come from step_generator, batches from (seed, epoch, index), the EMA from the checkpoint
    from instruct.model import InstructUNet

    out = tmp_path / "resumed"
    args = ["--quiet", "instruct", "train", "--config", CONFIG, f"output_dir={out}", "train.log_every=10",
            "train.val_every=20", "train.save_every=20"]
    assert cli_main(args + ["train.max_steps=20"]) == 0
    assert cli_main(args + [f"train.max_steps={STEPS}", "--resume"]) == 0
    straight = InstructUNet.from_pretrained(trained / "model").state_dict()
    resumed = InstructUNet.from_pretrained(out / "model").state_dict()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-5, msg=name)


def test_edit_inputs_are_checked_from_the_header_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    import data_tools.images
    import instruct.pipeline as P

    write_png(np.zeros((20, 24, 3), np.uint8), tmp_path / "big.png")
    write_png(np.zeros((16, 16, 3), np.uint8), tmp_path / "ok.png")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    with monkeypatch.context() as m:
        m.setattr(data_tools.images, "read_image_file", no_decoding)
        with pytest.raises(P.EditInputError, match="24x20 pixels; this model edits 16x16"):
            P.read_input_image(tmp_path / "big.png", 16)
    # an image over the pixel cap is refused even with --resize (a small file can declare a huge image)
    monkeypatch.setattr(P, "MAX_INPUT_PIXELS", 400)
    with pytest.raises(P.EditInputError, match="more than the 400"):
        P.read_input_image(tmp_path / "big.png", 16, resize=True)
    assert P.read_input_image(tmp_path / "ok.png", 16).shape == (16, 16, 3)
    # a missing or foreign model folder and an output path that is a folder are input errors, not tracebacks
    with pytest.raises(P.EditInputError, match="not an exported instruct model"):
        P.edit_file(tmp_path / "no-model", tmp_path / "ok.png", "x", tmp_path / "out.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(P.EditInputError, match="is a folder"):
        P.edit_file(tmp_path / "no-model", tmp_path / "ok.png", "x", tmp_path / "dir.png")


def test_bench_scores_an_arm_on_val_then_test_with_the_diagnostics(trained):
    from bench_helpers import load_benchmark

    bench = load_benchmark("bench_instruct")
    arm = bench.evaluate_arm(trained / "model", bench.TASKS, n_val=1, n_test=2, text_scales=[1.0, 5.0],
                             image_scales=[1.25], steps=2)
    assert [(r["text_scale"], r["image_scale"]) for r in arm["sweep"]] == [(1.0, 1.25), (5.0, 1.25)]
    assert set(arm["tasks"]) == set(bench.TASKS)
    for task, row in arm["tasks"].items():
        assert row["scales"]["text_scale"] in (1.0, 5.0) and row["scales"]["image_scale"] == 1.25
        assert len(row["values"]) == len(row["no_instruction"]) == 2 and row["summary"]["n"] == 2
        # the seen-pairs diagnostic exists exactly for the tasks that name (object or part, colour) pairs
        assert ("seen_combinations" in row) == (task in bench.COMBINATION_TASKS)
