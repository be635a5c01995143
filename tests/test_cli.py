"""The `hdvila data` commands end to end: synth -> build -> inspect -> train-tokenizer."""
import json

from PIL import Image

from data_tools.tokenizer import load_tokenizer
from hdvila.cli import main


def test_synth_build_inspect_and_tokenizer(tmp_path, capsys):
    corpus, shards = tmp_path / "corpus", tmp_path / "shards"
    assert main(["--quiet", "data", "synth", "--out", str(corpus), "--num-videos", "4", "--seed", "3",
                 "height=48", "width=64", "event_seconds=2.0", "num_heldout_videos=1"]) == 0
    assert (corpus / "synth_config.yaml").exists()
    assert main(["--quiet", "data", "build", str(corpus / "train"), "--out", str(shards), "--workers", "2",
                 "sentences.min_duration=1.0", "transcode.preset=ultrafast"]) == 0
    report = json.loads((shards / "build_report.json").read_text())
    assert report["clips_written"] == 6 and report["problems"] == 0  # 3 train videos x 2 events
    assert (shards / "build_config.yaml").read_text().count("workers: 2") == 1
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert main(["--quiet", "data", "inspect", str(shards / "*.tar"), "--sheet", str(sheet)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 6 and summary["resolutions"] == {"64x48": 6}
    assert summary["duration_s"]["min"] == 2.0 and Image.open(sheet).size[0] > 64
    tok_dir = tmp_path / "tok"
    assert main(["--quiet", "data", "train-tokenizer", "--texts", str(corpus / "train"), "--out", str(tok_dir),
                 "--vocab-size", "200", "--min-frequency", "1"]) == 0
    tok = load_tokenizer(str(tok_dir))
    first_caption = (corpus / "metadata.jsonl").read_text().splitlines()[0]
    ids = tok([json.loads(first_caption)["text"]], max_len=32)["input_ids"][0]
    assert tok.unk_id not in ids.tolist()


def test_bad_override_exits_with_a_clear_message(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["data", "build", str(tmp_path), "--out", str(tmp_path / "o"), "sentences.max_duraton=3"])
    assert exc.value.code == 2
    assert "did you mean 'max_duration'" in capsys.readouterr().err


def test_pretrained_migrate_refuses_a_folder_it_cannot_read(tmp_path):
    import pytest

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(SystemExit) as info:
        main(["--quiet", "pretrained", "migrate", str(tmp_path)])
    assert "is not a pretrained folder" in str(info.value.code) and "hdvila-v0" in str(info.value.code)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
