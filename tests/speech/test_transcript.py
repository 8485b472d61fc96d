"""Moshi's text stream from word alignments, against streams worked out by hand from
moshi-finetune's rules (Interleaver.build_token_stream), and the transcript checks."""

import json

import pytest

from inplace_ttt.speech.transcript import MAIN_SPEAKER, Word, read_alignments, text_stream

PAD, END = 3, 0
PIECES = {"a": [10], "bc": [11, 12], "def": [13, 14, 15]}


def stream(words, frames):
    return text_stream(words, frames, lambda w: PIECES[w], PAD, END)


def main(text, start, end):
    return Word(text, start, end, MAIN_SPEAKER)


def test_each_word_starts_at_the_frame_of_its_start_with_end_of_padding_before_it():
    # " a" at 0 s -> frame 0 (no frame before it); "bc" at 0.5 s -> frame floor(6.25) = 6, frame 5
    # becomes end-of-padding; "def" at 0.64 s -> 0.64 * 12.5 = 8.0 -> frame 8, right after "bc"'s
    # last token (not padding: no end-of-padding); 12 frames
    tokens, stats = stream([main(" a", 0.0, 0.3), main("bc", 0.5, 0.9), main("def ", 0.64, 1.0)], 12)
    assert tokens == [10, PAD, PAD, PAD, PAD, END, 11, 12, 13, 14, 15, PAD]
    assert (stats.words, stats.cut_tokens, stats.zero_duration) == (3, 0, 0)


def test_a_word_starting_inside_the_previous_one_cuts_it_and_other_speakers_are_left_out():
    words = [
        main("a", 1.05, 1.2),  # unsorted on purpose: frame floor(13.125) = 13
        main("def", 1.0, 1.5),  # frame 12.5 -> 12: 13 at 12, then "a" replaces 14, 15
        Word("bc", 0.2, 0.5, "SPEAKER_USER"),  # the user's words are not Moshi's text
        main("bc", 0.4, 0.4),  # zero duration: dropped, as moshi-finetune does
    ]
    tokens, stats = stream(words, 16)
    assert tokens == [PAD] * 11 + [END, 13, 10, PAD, PAD]
    assert (stats.words, stats.cut_tokens, stats.zero_duration) == (2, 2, 1)


def test_tokens_past_the_last_frame_are_counted_as_cut():
    tokens, stats = stream([main("def", 0.9, 1.0)], 13)  # 0.9 * 12.5 = 11.25 -> frame 11 of 13 (1 s of audio)
    assert tokens[10:] == [END, 13, 14] and stats.cut_tokens == 1


def write(tmp_path, data) -> object:
    path = tmp_path / "a.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_alignments_are_read_as_annotate_writes_them(tmp_path):
    path = write(tmp_path, {"alignments": [[" Hello", [0.1, 0.42], "SPEAKER_MAIN"], ["there", [0.5, 1], "SPEAKER_MAIN"]]})
    assert read_alignments(path, 2.0) == [Word(" Hello", 0.1, 0.42, "SPEAKER_MAIN"), Word("there", 0.5, 1.0, "SPEAKER_MAIN")]


@pytest.mark.parametrize(
    "data,message",
    [
        ("{not json", "not valid JSON"),
        ({"words": []}, "expected .*alignments"),
        ({"alignments": [["hi", [0.1], "SPEAKER_MAIN"]]}, r"alignments\[0\] .*expected \[word, \[start_s, end_s\], speaker\]"),
        ({"alignments": [["hi", [0.1, "x"], "SPEAKER_MAIN"]]}, r"alignments\[0\]"),
        ({"alignments": [["ok", [0.0, 0.2], "SPEAKER_MAIN"], ["hi", [0.5, 0.4], "SPEAKER_MAIN"]]}, r"alignments\[1\] \('hi'\) .*start <= end"),
        ({"alignments": [["hi", [1.5, 2.2], "SPEAKER_MAIN"]]}, r"'hi'.* past the end of the audio \(2.000 s\)"),
    ],
)
def test_a_broken_transcript_is_refused_with_the_file_and_entry_named(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
        read_alignments(path, 2.0)
    with pytest.raises(ValueError, match="no transcript"):
        read_alignments(tmp_path / "missing.json", 2.0)


def test_a_word_may_end_one_frame_after_the_audio(tmp_path):
    path = write(tmp_path, {"alignments": [["hi", [1.9, 2.07], "SPEAKER_MAIN"]]})  # alignment rounding at the last frame
    assert read_alignments(path, 2.0)[0].end == 2.07
