"""Named-entity data: reading CoNLL / JSONL, tag schemes, word-piece windows, entities, metrics.

Small files are written under tmp_path; the tokenizer is the packaged MiniLM's (uncased WordPiece).
"""
import random
from pathlib import Path

import numpy as np
import pytest
from seqeval.scheme import IOB2, Entities

from tfllm.data.token_tags import (
    check_scheme, convert_sentences, encode_tagged, entities, entity_metrics, merge_predictions,
    read_tagged, spans, tag_names, tags_to_ids, to_iob2, words_with_offsets)
from tfllm.errors import TfllmError

from conftest import SHARED_DATA


@pytest.fixture(scope="module")
def tokenizer():
    from tfllm.data.tokenization import load_tokenizer
    from tfllm.models.checkpoints import resolve_checkpoint

    return load_tokenizer(resolve_checkpoint("packaged:minilm-l6"))


def write(path: Path, text, encoding="utf-8") -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER"""  # no blank line (nor newline) at the end


# --- reading --------------------------------------------------------------------------------

def test_read_conll_skips_docstart_and_keeps_a_last_sentence_without_blank_line(tmp_path):
    path = write(tmp_path / "a.txt", CONLL)
    sents = read_tagged(str(path))
    assert sents.tokens == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert sents.tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert sents.lines == [3, 7] and len(sents) == 2
    assert sents.where(1, 1) == f"{path} line 8"
    assert sents.subset([1]).tokens == [["Peter", "Blackburn"]] and sents.subset([1]).lines == [7]


def test_read_conll_chosen_columns_tabs_and_crlf(tmp_path):
    path = write(tmp_path / "b.conll", "B-PER\tPeter\tx\r\nO\tmet\ty\r\n\r\n\r\nB-LOC\tParis\tz\r\n")
    sents = read_tagged(str(path), token_column=1, tag_column=0)
    assert sents.tokens == [["Peter", "met"], ["Paris"]] and sents.tags == [["B-PER", "O"], ["B-LOC"]]
    assert sents.lines == [1, 5]


def test_read_jsonl_with_chosen_keys(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"words": ["Peter", "met"], "ner": ["B-PER", "O"]}\n\n'
                                       '{"words": ["Paris"], "ner": ["B-LOC"]}\n')
    sents = read_tagged(str(path), tokens_key="words", tags_key="ner")
    assert sents.tokens == [["Peter", "met"], ["Paris"]] and sents.lines == [1, 3]
    assert sents.where(1, 0) == f"{path} line 3"  # JSONL: every word is on the sentence's line


def test_read_several_files_remembers_each_sentences_file(tmp_path):
    conll = write(tmp_path / "a.txt", CONLL)
    jsonl = write(tmp_path / "b.jsonl", '{"tokens": ["Paris"], "tags": ["I-LOC"]}\n')
    sents = read_tagged(f"{conll},{jsonl}")
    assert len(sents) == 3 and sents.source == f"{conll},{jsonl}"
    with pytest.raises(TfllmError, match=f"^{jsonl} line 1: tag 1 'I-LOC' starts the sentence"):
        convert_sentences(sents, "iob2")


BAD_INPUTS = [  # (file name, content, read_tagged options, expected message after the file name)
    ("a.txt", "EU NNP B-NP B-ORG\nrejects VBZ O\n", {},
     " line 2: expected 4 columns (token in column 1, tag in column 4), found 3"),
    ("a.txt", "EU B-ORG\n\nrejects\n", {}, " line 3: expected 2 columns"),
    ("a.txt", "EU NNP B-NP B-ORG\n", {"tag_column": 4}, " line 1: found 4 column(s), too few for the tag"),
    ("a.txt", "\n\nEU\n", {}, " line 3: found 1 column(s); the token and the tag would be the same"),
    ("a.txt", "-DOCSTART- -X- -X- O\n\n\n", {}, ": no sentences"),
    ("a.txt", b"EU B-ORG\n\nK\xf6ln B-LOC\n", {}, " line 3: not valid UTF-8"),
    ("a.jsonl", '{"tokens": ["EU"], "tags": ["O"]}\n{"tokens": ["EU"], \n', {}, " line 2: malformed JSON"),
    ("a.jsonl", '\n["EU", "O"]\n', {}, " line 2: expected a JSON object per line"),
    ("a.jsonl", '{"tokens": ["EU"], "tag": ["O"]}\n', {}, " line 1: no key 'tags' (keys: tokens, tag)"),
    ("a.jsonl", '{"tokens": ["EU"], "tags": "O"}\n', {}, " line 1: 'tags' must be a list of strings"),
    ("a.jsonl", '{"tokens": ["EU"], "tags": [3]}\n', {}, " line 1: 'tags' must be a list of strings"),
    ("a.jsonl", '{"tokens": ["EU", "x"], "tags": ["O"]}\n', {}, " line 1: 2 tokens but 1 tags"),
    ("a.jsonl", '{"tokens": ["EU"], "tags": ["O"]}\n{"tokens": [], "tags": []}\n', {},
     " line 2: sentence with no tokens"),
    ("a.jsonl", "\n  \n", {}, ": no sentences"),
    ("a.csv", "EU,B-ORG\n", {}, ": cannot tell the format from the extension"),
]


@pytest.mark.parametrize("name, content, options, message", BAD_INPUTS)
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, name, content, options, message):
    path = write(tmp_path / name, content)
    with pytest.raises(TfllmError) as caught:
        read_tagged(str(path), **options)
    text = str(caught.value)
    assert text.startswith(f"{path}{message}") and "\n" not in text, text


# --- tag schemes ----------------------------------------------------------------------------

def where(i):
    return f"f line {i + 1}"


def test_iob2_is_kept_and_iob1_converted():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert to_iob2(tags, "iob2", where) == tags
    assert to_iob2(["I-PER", "I-PER", "B-PER"], "iob1", where) == ["B-PER", "I-PER", "B-PER"]
    assert to_iob2(["O", "I-LOC", "I-ORG", "I-ORG", "O", "I-ORG"], "iob1", where) == [
        "O", "B-LOC", "B-ORG", "I-ORG", "O", "B-ORG"]


def to_bioes(iob2_tags):
    """Test helper: IOB2 -> BIOES from the entity spans."""
    tags = ["O"] * len(iob2_tags)
    for kind, start, end in spans(iob2_tags):
        if end - start == 1:
            tags[start] = f"S-{kind}"
        else:
            tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 2) + [f"E-{kind}"]
    return tags


@pytest.mark.parametrize("iob2", [
    ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"],
    ["O", "O"], ["B-MISC"], ["B-PER", "I-PER", "B-PER", "I-PER"]])
def test_bioes_round_trip(iob2):
    bioes = to_bioes(iob2)
    assert to_iob2(bioes, "bioes", where) == iob2
    if iob2 == ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"]:
        assert bioes == ["B-PER", "I-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC", "S-ORG"]


INVALID = [  # (scheme, tags, index of the offending tag, message after "tag N ")
    ("iob2", ["O", "O", "I-PER"], 2, "'I-PER' follows 'O'; not valid IOB2"),
    ("iob2", ["I-PER"], 0, "'I-PER' starts the sentence; not valid IOB2 (if the file is IOB1"),
    ("iob2", ["B-ORG", "I-PER"], 1, "'I-PER' follows 'B-ORG'; not valid IOB2"),
    ("iob2", ["O", "E-PER"], 1, "'E-PER' is not 'O' or P-TYPE with P one of B, I"),
    ("iob2", ["PER"], 0, "'PER' is not 'O' or P-TYPE"),
    ("iob2", ["B-"], 0, "'B-' is not 'O' or P-TYPE"),
    ("iob1", ["O", "B-PER"], 1, "'B-PER' follows 'O'; not valid IOB1"),
    ("iob1", ["I-LOC", "B-PER"], 1, "'B-PER' follows 'I-LOC'; not valid IOB1"),
    ("bioes", ["B-PER", "O"], 1, "'O' follows 'B-PER'; not valid BIOES"),
    ("bioes", ["O", "I-PER"], 1, "'I-PER' follows 'O'; not valid BIOES"),
    ("bioes", ["B-PER", "E-LOC"], 1, "'E-LOC' follows 'B-PER'; not valid BIOES"),
    ("bioes", ["S-PER", "E-PER"], 1, "'E-PER' follows 'S-PER'; not valid BIOES"),
    ("bioes", ["O", "B-PER", "I-PER"], 2, "'I-PER' ends the sentence; a BIOES PER entity must end"),
]


@pytest.mark.parametrize("scheme, tags, bad, message", INVALID)
def test_invalid_tags_name_the_file_and_line_of_the_word(tmp_path, scheme, tags, bad, message):
    # Two sentences; the bad one starts on line 4, so its word i is on line 4 + i.
    path = write(tmp_path / "t.txt", "x O\ny O\n\n" + "".join(f"w{i} {t}\n" for i, t in enumerate(tags)))
    with pytest.raises(TfllmError) as caught:
        convert_sentences(read_tagged(str(path)), scheme)
    assert str(caught.value).startswith(f"{path} line {4 + bad}: tag {bad + 1} {message}"), str(caught.value)


def test_unknown_scheme_hints_a_close_match():
    with pytest.raises(TfllmError, match=r"data.tag_scheme: 'bioe' is not one of iob1, iob2, bioes "
                                         r"\(did you mean 'bioes'\?\)"):
        check_scheme("bioe")


def test_tag_names_and_ids(tmp_path):
    path = write(tmp_path / "t.txt", "a B-PER\nb I-PER\nc O\n\nd B-LOC\n\ne B-ORG\n")
    sents = read_tagged(str(path))
    names = tag_names(sents.tags)
    assert names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert [list(ids) for ids in tags_to_ids(sents, names)] == [[5, 6, 0], [1], [3]]
    with pytest.raises(TfllmError, match=f"^{path} line 7: tag 'B-ORG' was never seen in training"):
        tags_to_ids(sents, [n for n in names if not n.endswith("ORG")])


# --- word-piece windows ---------------------------------------------------------------------

def test_labels_only_on_first_pieces(tokenizer):
    words = ["Farahmand", "met", "Zywiec", "in", "Tychy", "\x07", "."]  # "\x07" has no pieces
    assert tokenizer.tokenize("Farahmand") == ["far", "##ah", "##man", "##d"]
    windows = encode_tagged(tokenizer, [words], [[1, 0, 3, 0, 5, 0, 0]], 64, 8)
    assert len(windows) == 1 and windows.encoded.labels[0].dtype == np.int32
    pieces = tokenizer.convert_ids_to_tokens(windows.encoded.input_ids[0])
    labelled = [(p, int(label)) for p, label in zip(pieces, windows.encoded.labels[0]) if label != -100]
    assert labelled == [("far", 1), ("met", 0), ("z", 3), ("in", 0), ("ty", 5), (".", 0)]
    assert list(windows.word_ids[0][:3]) == [-1, 0, 0] and windows.word_ids[0][-1] == -1
    assert not windows.encoded.token_type_ids[0].any()
    merged = merge_predictions(windows, [windows.encoded.labels[0]], [len(words)], outside_id=0)
    assert merged == [[1, 0, 3, 0, 5, 0, 0]]  # the word without pieces is reported as O (0)


def long_sentence():
    """60 words, many of several pieces, with tags that change every word or two."""
    vocabulary = ["Farahmand", "met", "Zywiec", "in", "Tychy", "Bundesbank", "all-rounder", ",",
                  "Hoechst", "Juppe", "the", "Nyrup"]
    words = [vocabulary[(7 * i) % len(vocabulary)] for i in range(60)]
    return words, [(3 * i // 2) % 5 for i in range(60)]


def test_long_sentence_windows_cover_every_word_once(tokenizer):
    words, tags = long_sentence()
    windows = encode_tagged(tokenizer, [["short", "one"], words], [[1, 2], tags], 16, 4)
    assert list(windows.sentence[:2]) == [0, 1] and len(windows) > 5
    assert max(len(ids) for ids in windows.encoded.input_ids) == 16
    starts = [tokenizer.convert_ids_to_tokens(int(ids[1])) for ids in windows.encoded.input_ids[2:]]
    assert any(s.startswith("##") for s in starts)  # some windows start in the middle of a word
    owners = [[k for k in range(len(windows)) if windows.sentence[k] == 1
               and (windows.word_ids[k][windows.context[k]] == w).any()] for w in range(len(words))]
    assert all(len(o) == 1 for o in owners)  # every word is owned by exactly one window
    for k in range(1, len(windows)):
        pieces = tokenizer.convert_ids_to_tokens(windows.encoded.input_ids[k])
        for p in np.flatnonzero(windows.encoded.labels[k] != -100):  # labels sit on first pieces
            word = words[windows.word_ids[k][p]]
            assert pieces[p] == tokenizer.tokenize(word)[0] and windows.encoded.labels[k][p] == tags[
                windows.word_ids[k][p]]


def test_each_window_owns_the_words_in_its_middle(tokenizer):
    # 30 one-piece words, 8 pieces a window, 4 shared: windows start at pieces 0, 4, 8, ... and a
    # word in an overlap goes to the window where it is farther from the edge.
    windows = encode_tagged(tokenizer, [["word"] * 30], None, 10, 4)
    owned = [list(ids[context]) for ids, context in zip(windows.word_ids, windows.context)]
    assert owned[0] == [0, 1, 2, 3, 4, 5]  # the sentence's start is no edge
    assert owned[1:-1] == [list(range(4 * k + 2, 4 * k + 6)) for k in range(1, len(owned) - 1)]
    assert owned[-1] == list(range(4 * len(owned) - 2, 30))
    # "Farahmand" (far ##ah ##man ##d) only starts at the first window's end; the last window has
    # it whole, and the sentence's end is no edge either.
    windows = encode_tagged(tokenizer, [["Juppe", "the", "in", "met", "Juppe", "Farahmand"]], None, 10, 4)
    assert [list(ids[context]) for ids, context in zip(windows.word_ids, windows.context)] == [
        [0, 0, 1, 2, 3, 4, 4], [5, 5, 5, 5]]


def test_merge_predictions_gives_back_the_gold_tags(tokenizer):
    words, tags = long_sentence()
    windows = encode_tagged(tokenizer, [words, ["Tychy", "met"]], [tags, [3, 0]], 16, 4)
    width = max(len(ids) for ids in windows.encoded.input_ids)
    predicted = np.full((len(windows), width + 3), 99, dtype=np.int32)  # padded like a model's output
    for k, labels in enumerate(windows.encoded.labels):
        # Only the owning window predicts right: reading any other window gives 99 or -100.
        predicted[k, :len(labels)] = np.where(windows.context[k], labels, 99)
    assert merge_predictions(windows, predicted, [60, 2]) == [tags, [3, 0]]


def test_prediction_windows_have_no_labels_and_stride_is_checked(tokenizer):
    assert encode_tagged(tokenizer, [["Peter", "met"]], None, 16, 4).encoded.labels is None
    assert len(encode_tagged(tokenizer, [], [], 16, 4)) == 0
    with pytest.raises(TfllmError, match=r"data.stride: 14 must be at least 0 and less than "
                                         r"data.max_length - 2 = 14"):
        encode_tagged(tokenizer, [["Peter", "met"]], None, 16, 14)


# --- entities -------------------------------------------------------------------------------

def test_spans_are_strict_iob2_like_seqeval():
    assert spans(["B-PER", "I-PER", "O", "I-LOC", "B-ORG", "I-PER", "B-LOC"]) == [
        ("PER", 0, 2), ("ORG", 4, 5), ("LOC", 6, 7)]
    rng = random.Random(0)
    sequences = [[rng.choice(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) for _ in range(rng.randint(1, 9))]
                 for _ in range(300)]
    expected = [[entity.to_tuple()[1:] for entity in found] for found in Entities(sequences, IOB2).entities]
    assert [spans(s) for s in sequences] == expected


def test_entities_slice_the_original_text(tokenizer):
    text = "Peter Blackburn met EU officials in Brussels."
    words = words_with_offsets(tokenizer, text)
    assert [w for w, _ in words] == ["Peter", "Blackburn", "met", "EU", "officials", "in", "Brussels", "."]
    tags = ["B-PER", "I-PER", "O", "B-ORG", "O", "O", "B-LOC", "O"]
    assert entities(text, words, tags) == [
        {"entity": "PER", "text": "Peter Blackburn", "start": 0, "end": 15},
        {"entity": "ORG", "text": "EU", "start": 20, "end": 22},
        {"entity": "LOC", "text": "Brussels", "start": 36, "end": 44}]


def test_raw_text_words_match_the_tokenizer(tokenizer):
    text = "  Zoë\u00a0Müller\x07 (München),  在北京 don't\n"
    words = words_with_offsets(tokenizer, text)
    assert all(text[start:end] == word for word, (start, end) in words)
    assert [w for w, _ in words] == ["Zoë", "Müller", "(", "München", ")", ",", "在", "北", "京",
                                     "don", "'", "t"]
    pieces = tokenizer([[w for w, _ in words]], is_split_into_words=True, add_special_tokens=False)
    assert pieces["input_ids"][0] == tokenizer(text, add_special_tokens=False)["input_ids"]
    found = entities(text, words, ["B-PER", "I-PER", "O", "B-LOC"] + ["O"] * 8)
    assert found[0] == {"entity": "PER", "text": "Zoë\u00a0Müller", "start": 2, "end": 12}


# --- metrics --------------------------------------------------------------------------------

def test_entity_metrics_hand_worked():
    true = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]]  # PER right, LOC too long, ORG missed
    m = entity_metrics(true, pred)
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 / 5) and m["token_accuracy"] == pytest.approx(4 / 6)
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_type"]["LOC"]["f1"] == 0.0 and m["per_type"]["ORG"]["support"] == 1
    assert "micro avg     0.5000    0.3333    0.4000         3" in m["report"]


def test_entity_metrics_are_strict():
    # A predicted entity that starts with I- is no entity in strict IOB2 (conlleval would count it).
    m = entity_metrics([["B-MISC", "I-MISC", "O"]], [["I-MISC", "I-MISC", "O"]])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["token_accuracy"] == pytest.approx(2 / 3)
    assert entity_metrics([["O", "O"]], [["O", "O"]])["f1"] == 0.0


# --- the real CoNLL-2003 dev set ------------------------------------------------------------

def test_real_conll2003_dev(tokenizer):
    path = SHARED_DATA / "conll2003" / "dev.txt"
    if not path.is_file():
        pytest.skip("shared data conll2003/dev.txt is not available")
    sents = convert_sentences(read_tagged(str(path)), "iob2")  # raises if any tag is not IOB2
    assert len(sents) == 3250 and sum(len(t) for t in sents.tokens) == 51362
    assert tag_names(sents.tags) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG",
                                     "B-PER", "I-PER"]
    # With the packaged tokenizer 3 dev sentences have more than 128 word-pieces (the longest 144),
    # so max_length 128 with stride 32 gives 3,253 windows.
    gold = tags_to_ids(sents, tag_names(sents.tags))
    windows = encode_tagged(tokenizer, sents.tokens, gold, 128, 32)
    assert len(windows) == 3253
    merged = merge_predictions(windows, windows.encoded.labels, [len(t) for t in sents.tokens])
    assert merged == [list(g) for g in gold]
