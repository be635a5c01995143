from __future__ import annotations

import json

import pytest

from data_tools.ingest.config import SentenceConfig
from data_tools.ingest.transcripts import (
    Cue,
    TranscriptError,
    cues_to_sentences,
    parse_timestamp,
    read_transcript,
)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def spans(cues):
    return [(c.start, c.end, c.text) for c in cues]


# ---------------------------------------------------------------------------------------------- timestamps

@pytest.mark.parametrize(
    "text, seconds",
    [
        ("01:02:03.500", 3723.5),
        ("01:02:03,500", 3723.5),
        ("02:03.250", 123.25),
        ("7.5", 7.5),
        (" 00:00:01.000 ", 1.0),
        ("100:00:00.000", 360000.0),
        (7, 7.0),
        (7.25, 7.25),
    ],
)
def test_parse_timestamp_accepts_common_forms(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds)


@pytest.mark.parametrize("junk", ["abc", "", "1:2:3:4", "00:00:61.000", "00:61:00.000", "-1", "1.2.3", None, True, float("nan"), -2.0])
def test_parse_timestamp_rejects_junk(junk):
    with pytest.raises(TranscriptError):
        parse_timestamp(junk)


# ---------------------------------------------------------------------------------------------- reading

def test_srt_with_ids_tags_entities_bom_and_crlf(tmp_path):
    srt = (
        "1\r\n00:00:01,000 --> 00:00:02,500\r\n<i>Hello</i> &amp; welcome\r\nto the show\r\n\r\n"
        "2\r\n00:00:03,000 --> 00:00:04,000 X1:100 X2:200\r\n{\\an8}<font color=\"red\">Second</font> cue &lt;3\r\n\r\n"
        "3\r\n00:00:05,000 --> 00:00:06,000\r\n<b></b>\r\n"
    )
    path = write(tmp_path, "a.srt", b"\xef\xbb\xbf" + srt.encode("utf-8"))
    assert spans(read_transcript(path)) == [
        (1.0, 2.5, "Hello & welcome to the show"),
        (3.0, 4.0, "Second cue <3"),
    ]  # the tag-only third cue is dropped


def test_srt_cues_are_sorted_by_start(tmp_path):
    path = write(
        tmp_path,
        "b.srt",
        "1\n00:00:05,000 --> 00:00:06,000\nlater\n\n2\n00:00:01,000 --> 00:00:02,000\nearlier\n",
    )
    assert [c.text for c in read_transcript(path)] == ["earlier", "later"]


def test_vtt_header_notes_styles_ids_settings_and_inline_tags(tmp_path):
    vtt = """WEBVTT - some title
Kind: captions
Language: en

NOTE this is a comment
spanning two lines

STYLE
::cue { color: yellow }

intro-1
00:01.000 --> 00:03.000 align:start position:10%
<v Roger>Hi<00:00:01.500><c> there</c> &quot;friend&quot;&nbsp;!

00:00:04.000 --> 00:00:05.000 line:0
<c.colorE5E5E5>bye</c> &#8212; now
"""
    path = write(tmp_path, "c.vtt", vtt)
    assert spans(read_transcript(path)) == [
        (1.0, 3.0, 'Hi there "friend" !'),
        (4.0, 5.0, "bye \u2014 now"),
    ]


def test_vtt_rolling_auto_captions_are_deduplicated(tmp_path):
    vtt = """WEBVTT

00:00:00.000 --> 00:00:02.000 align:start position:0%
so<00:00:00.500><c> today</c><00:00:01.000><c> we</c>

00:00:02.000 --> 00:00:02.010 align:start position:0%
so today we

00:00:02.010 --> 00:00:04.000 align:start position:0%
so today we
talk<00:00:02.500><c> about</c><00:00:03.000><c> rivers</c>

00:00:04.000 --> 00:00:04.010 align:start position:0%
talk about rivers

00:00:04.010 --> 00:00:06.000 align:start position:0%
talk about rivers
and lakes
"""
    path = write(tmp_path, "yt.vtt", vtt)
    assert spans(read_transcript(path)) == [
        (0.0, 2.01, "so today we"),
        (2.01, 4.01, "talk about rivers"),
        (4.01, 6.0, "and lakes"),
    ]


def test_single_repeated_word_in_normal_speech_is_kept(tmp_path):
    path = write(
        tmp_path,
        "d.srt",
        "1\n00:00:00,000 --> 00:00:02,000\nwhat I mean is\n\n2\n00:00:02,000 --> 00:00:04,000\nis this right\n",
    )
    assert [c.text for c in read_transcript(path)] == ["what I mean is", "is this right"]


def test_json_list_with_number_and_string_times(tmp_path):
    data = [
        {"start": "00:00:02.000", "end": "00:00:03.000", "text": "second"},
        {"start": 0.5, "end": 1.5, "text": " <i>first</i> "},
    ]
    path = write(tmp_path, "e.json", json.dumps(data))
    assert spans(read_transcript(path)) == [(0.5, 1.5, "first"), (2.0, 3.0, "second")]


def test_whisper_segments_and_cues_objects(tmp_path):
    whisper = {
        "text": " Hello there. General Kenobi.",
        "segments": [
            {"id": 0, "seek": 0, "start": 0.0, "end": 1.2, "text": " Hello there.", "words": []},
            {"id": 1, "seek": 0, "start": 1.2, "end": 2.8, "text": " General Kenobi."},
        ],
        "language": "en",
    }
    assert spans(read_transcript(write(tmp_path, "w.json", json.dumps(whisper)))) == [
        (0.0, 1.2, "Hello there."),
        (1.2, 2.8, "General Kenobi."),
    ]
    cues = {"cues": [{"start": "00:01.000", "end": "00:02.000", "text": "x"}]}
    assert spans(read_transcript(write(tmp_path, "k.json", json.dumps(cues)))) == [(1.0, 2.0, "x")]


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    body = b"1\n00:00:01,000 --> 00:00:02,000\nna\xefve\xff\n"  # 0xef (a lone lead byte) is byte 34
    with pytest.raises(TranscriptError, match=r"UTF-8.*0xef.*offset 34\b"):
        read_transcript(write(tmp_path, "bad.srt", body))
    with pytest.raises(TranscriptError, match=r"UTF-8.*offset 37\b"):  # offsets count the BOM too
        read_transcript(write(tmp_path, "bom.srt", b"\xef\xbb\xbf" + body))


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.srt", "", "empty"),
        ("blank.vtt", "  \n\n", "empty"),
        ("header_only.vtt", "WEBVTT\n\n", "no cues"),
        ("no_header.vtt", "00:00.000 --> 00:01.000\nhi\n", "WEBVTT"),
        ("bad_time.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:0x,000 --> 00:00:04,000\nbad\n", r"line 6 \(cue 2\)"),
        ("no_arrow.srt", "1\n00:00:01,000 -> 00:00:02,000\nhello\n", "line 2"),
        ("backwards.srt", "1\n00:00:05,000 --> 00:00:02,000\nhello\n", "before start"),
        ("bad.json", '[{"start": 1, "end": 2, "text": "a"},', "invalid JSON"),
        ("missing.json", '[{"start": 1, "text": "a"}]', "cue 1: missing end"),
        ("bad_time.json", '{"segments": [{"start": "soon", "end": 2, "text": "a"}]}', "cue 1: malformed timestamp"),
        ("backwards.json", '[{"start": 3, "end": 2, "text": "a"}]', "before start"),
        ("object.json", '{"foo": []}', "segments"),
        ("tags_only.srt", "1\n00:00:01,000 --> 00:00:02,000\n<i></i>\n", "empty"),
        ("notes.txt", "hello", "unsupported"),
    ],
)
def test_unusable_transcripts_raise_with_reason(tmp_path, name, content, reason):
    with pytest.raises(TranscriptError, match=reason):
        read_transcript(write(tmp_path, name, content))


def test_missing_file(tmp_path):
    with pytest.raises(TranscriptError, match="not found"):
        read_transcript(tmp_path / "nope.srt")


# ---------------------------------------------------------------------------------------------- sentences

LOOSE = SentenceConfig(min_duration=0.0, max_duration=100.0, max_words=1000)


def test_sentence_spanning_cues_gets_interpolated_boundaries():
    cues = [Cue(0.0, 4.0, "Hello there my"), Cue(4.0, 8.0, "friend. How are"), Cue(8.0, 10.0, "you doing?")]
    out = cues_to_sentences(cues, LOOSE)
    # "friend." ends at char 7 of the 15-char cue 2, "How" starts at char 8
    assert [c.text for c in out] == ["Hello there my friend.", "How are you doing?"]
    assert out[0].start == pytest.approx(0.0) and out[0].end == pytest.approx(4 + 4 * 7 / 15)
    assert out[1].start == pytest.approx(4 + 4 * 8 / 15) and out[1].end == pytest.approx(10.0)


def test_several_sentences_inside_one_cue():
    out = cues_to_sentences([Cue(0.0, 10.0, "Hello world. How are you?")], LOOSE)
    # 25 characters over 10 s: "Hello world." ends at char 12, "How" starts at char 13
    assert [c.text for c in out] == ["Hello world.", "How are you?"]
    assert (out[0].start, out[0].end) == (0.0, pytest.approx(4.8))
    assert (out[1].start, out[1].end) == (pytest.approx(5.2), 10.0)


def test_abbreviations_and_decimals_do_not_end_sentences():
    text = "Dr. Smith met Mr. Jones at 3.5 p.m. in the U.S. today, e.g. near Washington. Then it rained!"
    out = cues_to_sentences([Cue(0.0, 20.0, text)], LOOSE)
    assert [c.text for c in out] == [
        "Dr. Smith met Mr. Jones at 3.5 p.m. in the U.S. today, e.g. near Washington.",
        "Then it rained!",
    ]


def test_quotes_ellipsis_and_whitespace():
    out = cues_to_sentences([Cue(0.0, 9.0, '  He said "stop!"   Then   he\tleft… And so  on.  ')], LOOSE)
    assert [c.text for c in out] == ['He said "stop!"', "Then he left…", "And so on."]


def test_punctuation_only_pieces_are_dropped():
    out = cues_to_sentences([Cue(0.0, 2.0, "Fine."), Cue(2.0, 3.0, "..."), Cue(3.0, 5.0, "Good.")], LOOSE)
    assert [c.text for c in out] == ["Fine.", "Good."]


def test_long_sentence_is_split_into_fitting_pieces():
    words = [f"word{i:02d}" for i in range(60)]
    cfg = SentenceConfig(min_duration=1.0, max_duration=20.0, max_words=80)
    out = cues_to_sentences([Cue(0.0, 30.0, " ".join(words[:30])), Cue(30.0, 60.0, " ".join(words[30:]) + ".")], cfg)
    assert len(out) == 3  # 60 s needs three 20 s pieces, no more
    assert all(c.end - c.start <= 20.0 + 1e-6 for c in out)
    assert " ".join(c.text for c in out) == " ".join(words) + "."
    assert out[0].start == 0.0 and out[-1].end == 60.0
    assert all(a.end <= b.start for a, b in zip(out, out[1:]))
    # near-equal: every piece within 15% of 20 s
    assert all(abs((c.end - c.start) - 20.0) < 3.0 for c in out)


def test_too_many_words_is_split_even_when_short():
    words = [f"w{i:02d}" for i in range(30)]
    cfg = SentenceConfig(min_duration=0.0, max_duration=100.0, max_words=10)
    out = cues_to_sentences([Cue(0.0, 12.0, " ".join(words) + ".")], cfg)
    assert [len(c.text.split()) for c in out] == [10, 10, 10]
    assert " ".join(c.text for c in out).split() == words[:29] + ["w29."]


def test_long_split_prefers_a_comma_near_the_middle():
    words = [f"w{i:02d}" for i in range(20)]
    words[8] += ","  # one word before the ideal middle
    cfg = SentenceConfig(min_duration=0.0, max_duration=12.0)
    out = cues_to_sentences([Cue(0.0, 20.0, " ".join(words))], cfg)
    assert len(out) == 2
    assert out[0].text.endswith("w08,")


def test_short_sentence_merges_with_next_then_previous():
    cfg = SentenceConfig(min_duration=4.0, max_duration=20.0)
    out = cues_to_sentences([Cue(0.0, 1.0, "Hi."), Cue(1.0, 8.0, "This is a longer sentence.")], cfg)
    assert spans(out) == [(0.0, 8.0, "Hi. This is a longer sentence.")]
    out = cues_to_sentences([Cue(0.0, 8.0, "This is a longer sentence."), Cue(8.0, 9.0, "Bye.")], cfg)
    assert spans(out) == [(0.0, 9.0, "This is a longer sentence. Bye.")]


def test_short_sentence_widens_when_merge_would_be_too_long():
    cfg = SentenceConfig(min_duration=4.0, max_duration=10.0)
    out = cues_to_sentences([Cue(0.0, 9.5, "A rather long first sentence."), Cue(20.0, 21.0, "Hi.")], cfg)
    assert spans(out) == [(0.0, 9.5, "A rather long first sentence."), (18.5, 22.5, "Hi.")]


def test_widening_stays_inside_the_video_and_drops_what_cannot_fit():
    cfg = SentenceConfig(min_duration=4.0, max_duration=20.0, merge_short=False)
    assert spans(cues_to_sentences([Cue(10.0, 11.0, "Hi.")], cfg)) == [(8.5, 12.5, "Hi.")]
    assert spans(cues_to_sentences([Cue(0.5, 1.5, "Hi.")], cfg)) == [(0.0, 4.0, "Hi.")]
    assert spans(cues_to_sentences([Cue(10.0, 11.0, "Hi.")], cfg, video_duration=12.0)) == [(8.0, 12.0, "Hi.")]
    assert cues_to_sentences([Cue(0.5, 1.5, "Hi.")], cfg, video_duration=3.0) == []


def test_spans_are_clipped_to_the_video():
    cfg = SentenceConfig(min_duration=1.0, max_duration=20.0, merge_short=False)
    cues = [Cue(0.0, 10.0, "One."), Cue(12.0, 20.0, "Two."), Cue(30.0, 40.0, "Three.")]
    assert spans(cues_to_sentences(cues, cfg, video_duration=15.0)) == [(0.0, 10.0, "One."), (12.0, 15.0, "Two.")]


def test_unpunctuated_asr_still_gives_sensible_spans():
    cues = [
        Cue(i * 2.5, i * 2.5 + 2.5, " ".join(f"tok{i}x{j}" for j in range(6)))
        for i in range(40)  # 100 s, 240 words, not a single full stop
    ]
    cfg = SentenceConfig()
    out = cues_to_sentences(cues, cfg)
    assert len(out) == 5
    assert all(cfg.min_duration <= c.end - c.start <= cfg.max_duration + 1e-6 for c in out)
    assert all(len(c.text.split()) <= cfg.max_words for c in out)
    assert " ".join(c.text for c in out) == " ".join(c.text for c in cues)
    assert cues_to_sentences(cues, cfg) == out  # deterministic


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError):
        cues_to_sentences([Cue(0, 1, "x")], SentenceConfig(min_duration=30.0, max_duration=20.0))
