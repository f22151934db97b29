"""Reading, validation, TRL formats, truncation policy, collation."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MINILM
from rayrm.data import (
    BadRowError,
    GroupTokenizer,
    PairTokenizer,
    group_sequences,
    pad_batch,
    read_preferences,
    render_row,
    special_layout,
    split_rows,
    truncate_pair,
)
from rayrm.model import load_tokenizer


def _write_jsonl(tmp_path, lines):
    p = tmp_path / "prefs.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


GOOD = json.dumps({"prompt": "Q?", "chosen": " yes", "rejected": " no"})


@pytest.mark.parametrize(
    "bad, needle",
    [
        ('{"prompt": "Q?", "chosen": " yes", "rejected": ', "line 2: invalid JSON"),
        ('{"prompt": "Q?", "chosen": " yes"}', "line 2: missing field 'rejected'"),
        ('{"prompt": "Q?", "chosen": 3, "rejected": " no"}', "line 2: field 'chosen' must be a string"),
        ('{"prompt": "Q?", "chosen": [], "rejected": []}', "line 2: field 'chosen' is an empty message list"),
        ('{"prompt": "Q?", "chosen": [{"role": "assistant"}], "rejected": " no"}', "line 2: field 'chosen[0]'"),
        ('{"prompt": "Q?", "chosen": "a", "rejected": "b", "margin": "big"}', "line 2: field 'margin'"),
        ('[1, 2]', "line 2: row must be a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, bad, needle):
    path = _write_jsonl(tmp_path, [GOOD, bad, GOOD])
    with pytest.raises(BadRowError) as e:
        read_preferences(path)
    assert path in str(e.value) and needle in str(e.value)


def test_skip_mode_counts_and_keeps_the_rest(tmp_path):
    path = _write_jsonl(tmp_path, [GOOD, "{oops", GOOD, '{"chosen": "x"}', GOOD])
    rows, report = read_preferences(path, on_bad_row="skip")
    assert len(rows) == 3 and report.skipped == 2 and report.rows == 3
    assert "line 2" in report.errors[0] and "line 4" in report.errors[1]


def test_margin_required_for_margin_loss(tmp_path):
    path = _write_jsonl(tmp_path, [json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": 2}), GOOD])
    with pytest.raises(BadRowError, match="line 2: missing field 'margin'"):
        read_preferences(path, require_margin=True)
    rows, _ = read_preferences(path)
    assert rows[0]["margin"] == 2.0 and "margin" not in rows[1]


def test_parquet_rows_are_named_by_row(tmp_path):
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": ["x", None], "rejected": ["y", "z"]}), p)
    with pytest.raises(BadRowError, match=r"p\.parquet:row 1: missing field 'chosen'"):
        read_preferences(str(p))


def test_datasets_dir(tmp_path):
    import datasets

    d = tmp_path / "ds"
    datasets.Dataset.from_list([{"prompt": "a", "chosen": "x", "rejected": "y"}] * 3).save_to_disk(str(d))
    rows, _ = read_preferences(str(d))
    assert len(rows) == 3 and rows[0]["chosen"] == "x"


def test_formats_render_through_trl():
    tok = load_tokenizer(MINILM)
    implicit = render_row({"chosen": "Human: hi Assistant: yes", "rejected": "Human: hi Assistant: no"}, tok)
    assert implicit["prompt"] + implicit["chosen"] == "Human: hi Assistant: yes"
    assert implicit["prompt"].startswith("Human: hi Assistant:") and implicit["chosen"].strip() == "yes"
    conv = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    out = render_row(conv, tok)  # no chat template -> plain "Role: content" rendering
    assert out["prompt"].endswith("User: hi\n\nAssistant:") and out["chosen"] == " hello"


def test_chat_template_is_used_when_present():
    tok = load_tokenizer(MINILM)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    out = render_row(
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "A"}],
         "rejected": [{"role": "assistant", "content": "B"}]},
        tok,
    )
    assert out["prompt"].startswith("<user>hi") and "A" in out["chosen"]


def test_truncation_keeps_the_response_end():
    p, r, cut = truncate_pair([1, 2, 3, 4], [5, 6], 4)
    assert (p, r, cut) == ([3, 4], [5, 6], True)  # prompt cut from the left
    p, r, cut = truncate_pair([1, 2], [3, 4, 5, 6, 7], 3)
    assert (p, r, cut) == ([], [5, 6, 7], True)  # response keeps its end
    assert truncate_pair([1], [2], 5) == ([1], [2], False)


def test_tokenizer_layouts_and_counts():
    bert = load_tokenizer(MINILM)
    lay = special_layout(bert)
    assert lay.prefix == [bert.cls_token_id] and lay.suffix == [bert.sep_token_id]  # [SEP] acts as EOS
    pt = PairTokenizer(MINILM, max_length=16)
    out = pt({"prompt": ["word " * 40, "hi"], "chosen": [" a b c", " yes"], "rejected": [" d", " no"]})
    assert list(out["truncated"]) == [1, 0]
    first = group_sequences(out["ids"][0], out["lens"][0])[0]
    assert len(first) == 16 and first[0] == bert.cls_token_id and first[-1] == bert.sep_token_id
    assert list(first[-4:-1]) == bert(" a b c", add_special_tokens=False)["input_ids"]


def test_pad_batch_sides():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, padding_side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, padding_side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]


def test_split_is_seeded_and_complete():
    rows = [{"i": i} for i in range(50)]
    tr, ev = split_rows(rows, 0.1, seed=3)
    assert len(ev) == 5 and len(tr) == 45
    assert sorted(r["i"] for r in tr + ev) == list(range(50))
    assert split_rows(rows, 0.1, seed=3) == (tr, ev)


def test_length_grouping_keeps_every_pair_once_and_cuts_padding():
    import numpy as np

    from rayrm.batching import length_grouped

    rng = np.random.default_rng(0)
    n = 64
    lens = rng.integers(5, 200, size=n)
    big = {
        "ids": np.array([np.arange(k + 3) for k in lens], dtype=object),
        "lens": np.array([np.array([k, 3]) for k in lens], dtype=object),
        "weight": np.ones(n, np.float32),
        "row": np.arange(n),
    }
    grouped = list(length_grouped(iter([big]), 8, seed=1))
    plain = list(length_grouped(iter([big]), 8, seed=1, group=False))
    assert sorted(np.concatenate([b["row"] for b in grouped]).tolist()) == list(range(n))
    for b in grouped:  # a pair's chosen and rejected stay in the same row of the same micro-batch
        assert all(len(c) == lens[r] + 3 and n[0] == lens[r] for c, n, r in zip(b["ids"], b["lens"], b["row"]))

    def padded_tokens(batches):
        return sum(len(b["row"]) * max(max(n) for n in b["lens"]) for b in batches)

    assert padded_tokens(grouped) < 0.7 * padded_tokens(plain)


def test_columns_keep_one_cell_per_row_and_batches_cover_every_row():
    import numpy as np

    from rayrm.batching import column_batches, to_columns

    parts = [{"ids": [np.arange(3), np.arange(3)], "lens": [np.array([1, 2])] * 2, "weight": np.ones(2)},
             {"ids": [np.arange(5)], "lens": [np.array([4, 1])], "weight": np.zeros(1)}]
    cols = to_columns(parts)
    # equal-shaped cells stay one cell per row (no 2-D array), ragged ones too
    assert cols["lens"].shape == cols["ids"].shape == (3,) and cols["lens"].dtype == object
    assert [len(x) for x in cols["ids"]] == [3, 3, 5] and cols["weight"].tolist() == [1, 1, 0]
    batches = list(column_batches(cols, 2))
    assert [len(b["weight"]) for b in batches] == [2, 1]
    assert [x.tolist() for b in batches for x in b["lens"]] == [[1, 2], [1, 2], [4, 1]]


def test_pair_prompt_is_cut_once_for_both_responses():
    from rayrm.data import tokenize_pairs

    tok = load_tokenizer(MINILM)
    lay = special_layout(tok)
    prompt = " ".join(f"w{i}" for i in range(30))
    c, r, cut = tokenize_pairs([prompt], [" short"], [" a much longer answer with many more words in it"], tok, 24, lay)
    assert cut == [True] and len(r[0]) == 24 and len(c[0]) < 24
    c_resp = tok(" short", add_special_tokens=False)["input_ids"]
    r_resp = tok(" a much longer answer with many more words in it", add_special_tokens=False)["input_ids"]
    # both sequences carry exactly the same (left-cut) prompt tokens
    assert c[0][: len(c[0]) - len(c_resp) - 1] == r[0][: len(r[0]) - len(r_resp) - 1]


def test_no_double_bos_when_the_template_rendered_one():
    from rayrm.data import SpecialLayout, tokenize_texts

    tok = load_tokenizer(MINILM)
    lay = SpecialLayout([tok.cls_token_id], [tok.sep_token_id])
    ids, _ = tokenize_texts(["[CLS] hi"], [" there"], tok, 32, lay)
    assert ids[0].count(tok.cls_token_id) == 1


# ---------------------------------------------------------------- ranked rows (K completions) and rating margins
def test_ranked_rows_are_ordered_best_first_and_validated(tmp_path):
    from rayrm.data import read_preferences

    rows = [
        {"prompt": "p", "completions": ["b", "a", "c"], "ranking": [2, 1, 3]},
        {"prompt": "p", "completions": ["x", "y"], "scores": [0.5, 3.0]},
    ]
    path = tmp_path / "ranked.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got, _ = read_preferences(str(path))
    assert got[0]["completions"] == ["a", "b", "c"] and got[1]["completions"] == ["y", "x"]
    with pytest.raises(BadRowError, match=r"ranked\.jsonl:line 1: 3 completions, but train.loss takes pairs"):
        read_preferences(str(path), max_k=2)
    bad = [{"prompt": "p", "completions": ["a", "b"], "ranking": [1, 1]},
           {"prompt": "p", "completions": ["a"], "ranking": [1]},
           {"prompt": "p", "completions": ["a", 3], "scores": [1, 2]},
           {"prompt": "p", "completions": ["a", "b"]}]
    msgs = ["'ranking' must rank each completion once", "'completions' must be a list of at least 2",
            "'completions[1]' must be a string", "missing field 'ranking' or 'scores'"]
    for i, (row, msg) in enumerate(zip(bad, msgs)):
        p = tmp_path / f"bad{i}.jsonl"
        p.write_text(json.dumps(row) + "\n")
        with pytest.raises(BadRowError, match=rf"bad{i}\.jsonl:line 1: .*{re.escape(msg)}"):
            read_preferences(str(p))


def test_margin_from_rating_columns(tmp_path):
    from rayrm.data import read_preferences

    path = tmp_path / "rated.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 8, "score_rejected": 5.5}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 8}) + "\n")
    with pytest.raises(BadRowError, match=r"line 2: missing field 'score_rejected'"):
        read_preferences(str(path), rating_fields=("score_chosen", "score_rejected"))
    rows, _ = read_preferences(str(path), rating_fields=("score_chosen", "score_rejected"), on_bad_row="skip")
    assert rows[0]["margin"] == 2.5 and len(rows) == 1


def test_groups_stay_whole_through_tokenising_batching_and_collation():
    import numpy as np

    from rayrm.batching import length_grouped
    from rayrm.data import collate_groups

    tok = GroupTokenizer(MINILM, max_length=32)
    ks = [2, 4, 3, 2, 4, 3, 2, 3]
    batch = {"prompt": np.array([f"prompt {i}" for i in range(8)], dtype=object),
             "completions": np.array([[f" c{i} r{j}" + " x" * (i + j) for j in range(k)] for i, k in enumerate(ks)], dtype=object)}
    out = {"row": np.arange(8)}
    for k, v in tok(batch).items():  # as Ray hands a numpy batch over: ragged columns become object arrays
        out[k] = np.empty(len(v), dtype=object) if isinstance(v, list) else v
        if isinstance(v, list):
            for i, x in enumerate(v):
                out[k][i] = x
    for micro in length_grouped(iter([out]), 3, seed=0):
        c = collate_groups(micro, tok.tokenizer.pad_token_id)
        for g, row in enumerate(micro["row"]):
            assert int(c["group_mask"][g].sum()) == ks[row]  # every completion of the group is in this micro-batch
            for r in range(ks[row]):  # best-first order kept: rank r of group g is completion r of that prompt
                seq = c["input_ids"][c["index"][g, r]][c["attention_mask"][c["index"][g, r]] > 0].tolist()
                assert tok.tokenizer.decode(seq, skip_special_tokens=True).startswith(f"prompt {row} c{row} r{r}")


def test_padding_chunks_cover_every_row_once_and_cut_padding():
    import itertools

    import numpy as np

    from rayrm.batching import padding_chunks

    rng = np.random.default_rng(0)
    for trial in range(20):
        lens = rng.integers(1, 500, size=int(rng.integers(1, 40)))
        one = len(lens) * lens.max()
        for k in (1, 2, 4):
            parts = padding_chunks(lens, k)
            assert len(parts) <= k
            assert sorted(np.concatenate(parts).tolist()) == list(range(len(lens)))  # each row exactly once
            padded = sum(len(p) * lens[p].max() for p in parts)
            assert padded <= one
            if k == 1:
                assert padded == one
    # two clear clusters: two forwards, split between them; the DP optimum equals brute force over cut points
    lens = np.array([10, 500, 12, 490, 11, 505])
    parts = padding_chunks(lens, 4)
    assert [sorted(p.tolist()) for p in parts] == [[0, 2, 4], [1, 3, 5]]
    srt = np.sort(lens)
    brute = min(
        sum((b - a) * srt[b - 1] for a, b in zip((0, *cuts), (*cuts, len(srt))))
        for cuts in itertools.combinations(range(1, len(srt)), 1)
    )
    assert sum(len(p) * lens[p].max() for p in parts) == brute


def test_hh_text_becomes_chat_messages():
    from rayrm.data import hh_to_messages

    row = {"prompt": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: why?\n\nAssistant:", "chosen": " Because.",
           "rejected": " No.", "margin": 1.0}
    out = hh_to_messages(row, "f.jsonl: row 3")
    assert out["prompt"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                             {"role": "user", "content": "why?"}]
    assert out["chosen"] == [{"role": "assistant", "content": "Because."}] and out["margin"] == 1.0
    assert out["rejected"] == [{"role": "assistant", "content": "No."}]
    ranked = hh_to_messages({"prompt": "\n\nHuman: q\n\nAssistant:", "completions": [" a", " b"]}, "x")
    assert ranked["completions"] == [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]
    msgs = {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}
    assert hh_to_messages(msgs, "x") is msgs  # already messages: unchanged
    for bad in ("plain text", "\n\nHuman: q", "\n\nHuman: q\n\nAssistant: half an answer"):
        with pytest.raises(BadRowError, match=r"f.jsonl: row 3: field 'prompt' is not HH dialogue"):
            hh_to_messages({"prompt": bad, "chosen": "a", "rejected": "b"}, "f.jsonl: row 3")
