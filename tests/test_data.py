"""Interaction files -> sequences (l2rec_kernels.data): every fixture format end to end with
hand-checked expectations, folder and file specs, k-core counts, tie order, the split,
max_history, and each bad-file error (which must name the file, the line and the field).

The toy data set (tests/data/interactions/make_fixtures.py, TOY_ROWS) in every format gives,
with a 3-core: users 50 and 60 and items 105, 106, 107 removed (two rounds, 8 rows), one exact
duplicate dropped, and in order of first appearance users 20, 10, 30, 40 and items
102 -> 1, 101 -> 2, 103 -> 3, 104 -> 4:

    user 20: 102@50, 101@60, 104@70, 103@70 (tie: file order) -> [1, 2, 4, 3]
    user 10: 101@100, 103@200, 102@200 (tie), 104@300        -> [2, 3, 1, 4]
    user 30: 103@10, 101@20, 102@30                           -> [3, 2, 1]
    user 40: 104@5, 101@6, 103@7, 102@8                       -> [4, 2, 3, 1]
"""

import gzip
import importlib.util
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from l2rec_kernels.data import (
    FORMATS,
    DataFileError,
    Example,
    from_interactions,
    load_sequences,
)

HERE = os.path.join(os.path.dirname(__file__), "data", "interactions")
SEQUENCES = [[1, 2, 4, 3], [2, 3, 1, 4], [3, 2, 1], [4, 2, 3, 1]]
ITEM_IDS, USER_IDS = ["102", "101", "103", "104"], ["20", "10", "30", "40"]
TITLES = ["Blue Moon, The (1996)", "Red Star (1995)", "Amélie of the Sea (2001)", "Night Train (1990)"]
STATS = {"rows_read": 24, "duplicates_removed": 1, "kcore_users_removed": 2, "kcore_items_removed": 3,
         "kcore_rows_removed": 8, "kcore_rounds": 2, "users": 4, "items": 4, "interactions": 15,
         "repeat_interactions": 0}
TSV = dict(user_col="uid", item_col="iid", time_col="when", title_col="name")

# spec, options, raw-id prefix, titles (None: the standard ones), extra stats
CASES = {
    "ml-1m": ("movielens:ml-1m", {}, "", None, {"title_rows": 7, "items_without_title": 0}),
    "ml-100k": ("movielens:ml-100k", {}, "", None, {"title_rows": 7}),
    "ml-latest-small": ("movielens:ml-latest-small", {}, "", None, {"title_rows": 7}),
    # 2014 metadata has no title for 104, and an unrated item 999.
    "amazon2014": ("amazon2014:amazon2014", {}, "", [*TITLES[:3], "item 104"],
                   {"title_rows": 8, "items_without_title": 1}),
    # 2018 metadata: 103's title is empty, 101 is listed three times with the same title.
    "amazon2018": ("amazon2018:amazon2018", {}, "", [TITLES[0], TITLES[1], "item 103", TITLES[3]],
                   {"title_rows": 9, "title_rows_repeated": 2, "items_without_title": 1}),
    "amazon2023": ("amazon2023:amazon2023", {}, "", None, {"title_rows": 7}),
    "csv": ("csv:csv", {}, "", None, {"items_without_title": 0}),
    "tsv": ("csv:tsv/events.tsv", TSV, "", None, {}),
    "parquet": ("parquet:parquet/interactions.parquet", {}, "", None, {}),
    # RecBole atomic files: float timestamps ("50.0"), the year appended from release_year.
    "recbole": ("recbole:recbole", {}, "", None, {"title_rows": 7, "items_without_title": 0}),
}


def _spec(spec: str) -> str:
    fmt, path = spec.split(":", 1)
    return f"{fmt}:{os.path.join(HERE, path)}"


@pytest.mark.parametrize("case", list(CASES))
def test_every_format_end_to_end(case):
    spec, options, _, titles, extra = CASES[case]
    data = load_sequences(_spec(spec), min_interactions=3, max_history=2, **options)
    assert data.sequences == SEQUENCES
    if case == "tsv":  # ids in that file are prefixed: u20, i102
        assert data.item_ids == ["i" + i for i in ITEM_IDS] and data.user_ids == ["u" + u for u in USER_IDS]
    else:
        assert data.item_ids == ITEM_IDS and data.user_ids == USER_IDS
    assert data.titles == (titles or TITLES)
    assert data.num_items == 4 and data.num_users == 4
    assert {k: data.stats[k] for k in STATS} == STATS
    assert {k: data.stats[k] for k in extra} == extra


def test_fixture_folders_cover_every_format():
    covered = {CASES[c][0].split(":")[0] for c in CASES}
    assert covered == set(FORMATS)


def test_file_specs_find_their_title_files():
    for spec in ("movielens:ml-1m/ratings.dat", "movielens:ml-100k/u.data",
                 "movielens:ml-latest-small/ratings.csv", "amazon2023:amazon2023/Toys.jsonl",
                 "csv:csv/interactions.csv"):
        data = load_sequences(_spec(spec), min_interactions=3)
        assert data.sequences == SEQUENCES and data.titles == TITLES, spec
    data = load_sequences(_spec("amazon2014:amazon2014/reviews_Toys_5.json"), min_interactions=3)
    assert data.titles[3] == "item 104"


def test_file_spec_without_title_file_has_no_titles(tmp_path):
    shutil.copy(os.path.join(HERE, "ml-1m", "ratings.dat"), tmp_path / "ratings.dat")
    data = load_sequences(f"movielens:{tmp_path}", min_interactions=3)
    assert data.titles is None and "items_without_title" not in data.stats
    # ... unless a title file is named.
    data = load_sequences(f"movielens:{tmp_path}", min_interactions=3,
                          titles_path=os.path.join(HERE, "ml-latest-small", "movies.csv"))
    assert data.titles == TITLES


def test_u1_base_style_files_are_tab_separated(tmp_path):
    shutil.copy(os.path.join(HERE, "ml-100k", "u.data"), tmp_path / "u1.base")
    shutil.copy(os.path.join(HERE, "ml-100k", "u.item"), tmp_path / "u.item")
    data = load_sequences(f"movielens:{tmp_path / 'u1.base'}", min_interactions=3)
    assert data.sequences == SEQUENCES and data.titles == TITLES


def test_compressed_amazon_files(tmp_path):
    for name in ("Toys.jsonl", "meta_Toys.jsonl"):
        with open(os.path.join(HERE, "amazon2023", name), "rb") as f:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(f.read()))
    data = load_sequences(f"amazon2023:{tmp_path}", min_interactions=3)
    assert data.sequences == SEQUENCES and data.titles == TITLES


def test_kcore_thresholds_and_no_filtering():
    spec = _spec("movielens:ml-1m")
    everything = load_sequences(spec, min_interactions=0)
    assert everything.stats["interactions"] == 23 and everything.num_users == 6 and everything.num_items == 7
    assert everything.stats["kcore_rounds"] == 0
    assert load_sequences(spec, min_interactions=1).sequences == everything.sequences
    # No filtering: file order gives 20, 10, 30, 50, 40, 60 and 102, 101, 107, 103, 104, 105, 106.
    assert everything.user_ids == ["20", "10", "30", "50", "40", "60"]
    assert everything.item_ids == ["102", "101", "107", "103", "104", "105", "106"]
    assert everything.sequences[1] == [2, 3, 4, 1, 5]  # user 10: 101, 107, 103, 102 (tie), 104
    with pytest.raises(ValueError, match="no interactions left after k-core filtering with min_inter"):
        load_sequences(spec)  # the default 5-core empties the toy set
    with pytest.raises(ValueError, match="min_interactions"):
        load_sequences(spec, min_interactions=-1)


def test_duplicates_kept_when_asked():
    data = load_sequences(_spec("movielens:ml-1m"), min_interactions=3, dedupe=False)
    assert data.stats["duplicates_removed"] == 0 and data.stats["interactions"] == 16
    assert data.sequences[2] == [3, 3, 2, 1] and data.stats["repeat_interactions"] == 1


def test_ties_keep_file_order_and_ids_follow_first_appearance():
    data = from_interactions(["b", "a", "b", "a", "b"], [3, 9, 1, 3, 2], [5, 5, 5, 4, 5], min_interactions=0)
    assert data.user_ids == ["b", "a"] and data.item_ids == ["3", "9", "1", "2"]
    assert data.sequences == [[1, 3, 4], [1, 2]]  # b: 3, 1, 2 all at 5; a: 3 at 4, then 9
    # First appearance among the rows kept: "q" appears first in the file, on a row of user
    # "z", whom the 2-core removes; among the kept rows "p" comes first.
    data = from_interactions(["z", "u", "u", "v", "v"], ["q", "p", "q", "p", "q"], range(5),
                             min_interactions=2)
    assert data.item_ids == ["p", "q"] and data.user_ids == ["u", "v"]
    assert data.stats["kcore_users_removed"] == 1 and data.stats["kcore_items_removed"] == 0


def test_split_contents():
    data = load_sequences(_spec("movielens:ml-1m"), min_interactions=3, max_history=2)
    test, valid, train = data.split("test"), data.split("valid"), data.split("train")
    assert list(test) == [Example(0, [2, 4], 3, [1, 2, 4]), Example(1, [3, 1], 4, [2, 3, 1]),
                          Example(2, [3, 2], 1, [3, 2]), Example(3, [2, 3], 1, [4, 2, 3])]
    assert list(valid) == [Example(0, [1, 2], 4, [1, 2]), Example(1, [2, 3], 1, [2, 3]),
                           Example(2, [3], 2, [3]), Example(3, [4, 2], 3, [4, 2])]
    assert list(train) == [Example(0, [1], 2, [1]), Example(1, [2], 3, [2]), Example(3, [4], 2, [4])]
    assert data.split("test", max_history=None)[0].history == [1, 2, 4]
    assert data.split("test", max_history=1)[-1] == Example(3, [3], 1, [4, 2, 3])
    with pytest.raises(ValueError, match="split name"):
        data.split("validation")


def test_split_is_a_read_only_list_of_examples():
    data = load_sequences(_spec("movielens:ml-1m"), min_interactions=3, max_history=2)
    test = data.split("test")
    assert len(test) == 4 and test[-1] == test[3] and test[1:3] == list(test)[1:3]
    assert test == list(test) and test.users.tolist() == [0, 1, 2, 3]
    assert test.targets.tolist() == [3, 4, 1, 1]
    with pytest.raises(IndexError):
        test[4]
    ex = test[0]
    assert isinstance(ex, Example) and ex.user == 0 and ex.target == 3
    ex.seen.append(99)  # examples are copies: the data is not changed through them
    assert test[0].seen == [1, 2, 4]


def test_split_sizes_and_max_history_on_the_demo_set():
    data = load_sequences(_spec("movielens:ml-demo"), max_history=5)
    lengths = np.array([len(s) for s in data.sequences])
    assert len(data.split("test")) == len(data.split("valid")) == data.num_users == 300
    train = data.split("train")
    assert len(train) == int((lengths - 3).sum())
    assert all(len(ex.history) == min(5, len(ex.seen)) and ex.history == ex.seen[-5:] for ex in train[::7])
    assert all(ex.seen == data.sequences[ex.user][:len(ex.seen)] for ex in train[::11])
    assert [len(s) for s in train.user_items()] == list(lengths - 2)
    with pytest.raises(ValueError, match="max_history"):
        load_sequences(_spec("movielens:ml-demo"), max_history=0)


def test_demo_set_has_a_learnable_structure():
    # A first-order transition model counted on the training split beats the most-popular
    # ranking on the test split: the structure the training demo must find is there.
    from l2rec_kernels.metrics import popularity_scores, ranking_metrics, ranks_from_scores

    data = load_sequences(_spec("movielens:ml-demo"))
    assert data.num_users == 300 and data.num_items == 150 and 3000 < data.stats["interactions"] < 6000
    assert os.path.getsize(os.path.join(HERE, "ml-demo", "ratings.dat")) < 300_000
    words = {w for t in data.titles for w in t.split()}
    assert len(words) <= 30  # a small vocabulary for the tiny backbone's word tokenizer
    n, train, test = data.num_items, data.split("train"), list(data.split("test"))
    transitions = np.zeros((n + 1, n + 1))
    for items in train.user_items():
        np.add.at(transitions, (items[:-1], items[1:]), 1)
    import torch

    pop = popularity_scores(train, n)
    markov = torch.tensor(np.stack([transitions[ex.history[-1]] for ex in test]), dtype=torch.float32)
    markov += 1e-3 * pop.clamp(min=0)
    markov[:, 0] = -torch.inf
    targets, seen = [ex.target for ex in test], [ex.seen for ex in test]
    m = ranking_metrics(ranks_from_scores(markov, targets, seen), ks=(10,))
    p = ranking_metrics(ranks_from_scores(pop.expand(len(test), -1), targets, seen), ks=(10,))
    assert m["NDCG@10"] > 2 * p["NDCG@10"] and m["HR@10"] > 2 * p["HR@10"]


def test_verbose_prints_the_counts(capsys):
    load_sequences(_spec("amazon2014:amazon2014"), min_interactions=3, verbose=True)
    err = capsys.readouterr().err
    assert "read 24 interaction rows" in err and "removed 1 exact duplicate rows" in err
    assert "removed 2 users, 3 items, 8 rows" in err and "kept 4 users, 4 items, 15 interactions" in err
    assert "1 items without a title" in err


def test_missing_title_error_policy():
    with pytest.raises(DataFileError, match="no title for item '104'") as e:
        load_sequences(_spec("amazon2014:amazon2014"), min_interactions=3, missing_title="error")
    assert e.value.path.endswith("meta_Toys.json") and (e.value.line, e.value.field) == (4, "title")
    with pytest.raises(DataFileError, match="no title for item '103'") as e:
        load_sequences(_spec("amazon2018:amazon2018"), min_interactions=3, missing_title="error")
    assert e.value.line == 4  # lines 1-2: 101, line 3: 102, line 4: 103 with an empty title
    with pytest.raises(ValueError, match="missing_title"):
        load_sequences(_spec("amazon2018:amazon2018"), min_interactions=3, missing_title="skip")


def test_fixtures_are_what_the_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(HERE, "make_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path))
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path)
                     for d, _, files in os.walk(tmp_path) for f in files)
    assert len(written) == 21
    for rel in written:
        ours = os.path.join(HERE, rel)
        if rel.endswith(".parquet"):  # bytes hold the writer's version: compare the table
            assert pq.read_table(tmp_path / rel).equals(pq.read_table(ours)), rel
        else:
            with open(tmp_path / rel, "rb") as a, open(ours, "rb") as b:
                assert a.read() == b.read(), rel


# ------------------------------------------------------------------------------ bad files

def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def _error(spec, **options) -> DataFileError:
    with pytest.raises(DataFileError) as e:
        load_sequences(spec, min_interactions=0, **options)
    return e.value


GOOD_DAT = "1::10::5::100\n1::11::4::101\n"


@pytest.mark.parametrize("bad, line, field, message", [
    ("1::12::3\n", 3, None, "malformed line: expected 4 fields separated by '::', got 3"),
    ("1::12::3::soon\n", 3, "timestamp", "expected an integer, got 'soon'"),
    ("\n \n::12::3::4\n", 5, "user", "missing or empty id"),
    ("2::13::4::5::6\n", 3, None, "got 5"),
    ("1::12::3::4\x1e\n", 3, None, "control character 0x1e"),
])
def test_bad_ratings_dat(tmp_path, bad, line, field, message):
    path = _write(tmp_path / "ratings.dat", GOOD_DAT + bad)
    e = _error(f"movielens:{tmp_path}")
    assert (e.path, e.line, e.field) == (str(path), line, field)
    assert message in str(e) and str(path) in str(e) and f"line {line}" in str(e)


def test_blank_lines_are_skipped_in_line_files(tmp_path):
    _write(tmp_path / "ratings.dat", "\n" + GOOD_DAT + "  \n\n2::10::1::7\n")
    data = load_sequences(f"movielens:{tmp_path}", min_interactions=0)
    assert data.sequences == [[1, 2], [1]] and data.stats["rows_read"] == 3


def test_bad_title_files(tmp_path):
    _write(tmp_path / "ratings.dat", GOOD_DAT)
    movies = _write(tmp_path / "movies.dat", "10::Up (2009)::Drama\n11::Cars::Comedy\n10::Down::Drama\n")
    e = _error(f"movielens:{tmp_path}")
    assert (e.path, e.line, e.field) == (str(movies), 3, "title")
    assert "item '10' has the title 'Down' here but 'Up (2009)' on line 1" in str(e)
    _write(tmp_path / "movies.dat", "10::Up::Drama\n11::Cars\n")
    e = _error(f"movielens:{tmp_path}")
    assert e.line == 2 and "expected 3 fields" in str(e)
    # The same title twice is fine; a title-less item gets the placeholder.
    _write(tmp_path / "movies.dat", "10::Up::Drama\n10::Up::Drama\n12::Other::Drama\n")
    data = load_sequences(f"movielens:{tmp_path}", min_interactions=0)
    assert data.titles == ["Up", "item 11"] and data.stats["items_without_title"] == 1
    e = _error(f"movielens:{tmp_path}", missing_title="error")
    assert "no title for item '11'" in str(e) and e.path == str(tmp_path / "movies.dat")


def test_latin1_titles_are_decoded(tmp_path):
    _write(tmp_path / "ratings.dat", GOOD_DAT)
    _write(tmp_path / "movies.dat", "10::Misérables::Drama\n11::Señor::Comedy\n", encoding="latin-1")
    assert load_sequences(f"movielens:{tmp_path}", min_interactions=0).titles == ["Misérables", "Señor"]


@pytest.mark.parametrize("ratings, line, field, message", [
    ("userId,movieId,rating\n1,10,5\n", 1, "timestamp", "no such column in the header"),
    ("userId,movieId,rating,timestamp\n1,10,5,100\n\n1,11,4\n", 4, None, "wrong number of fields"),
    ("userId,movieId,rating,timestamp\n1,10,5,100\n\n\n1,11,4,x1\n", 5, "timestamp", "expected an integer"),
])
def test_bad_ratings_csv(tmp_path, ratings, line, field, message):
    path = _write(tmp_path / "ratings.csv", ratings)
    e = _error(f"movielens:{tmp_path}")
    assert (e.path, e.line, e.field) == (str(path), line, field) and message in str(e)


REVIEW = {"reviewerID": "A", "asin": "B1", "unixReviewTime": 100, "overall": 5.0}


@pytest.mark.parametrize("bad, line, field, message", [
    ('{"reviewerID": "A", "asin": "B2", "unixReviewTime": 101\n', 4, None, "not valid JSON"),
    (json.dumps({"reviewerID": "A", "unixReviewTime": 101}) + "\n", 4, "asin", "missing field"),
    (json.dumps({"reviewerID": "A", "asin": None, "unixReviewTime": 101}) + "\n", 4, "asin", "null value"),
    (json.dumps({**REVIEW, "unixReviewTime": "101"}) + "\n", 4, "unixReviewTime", "expected an integer"),
    (json.dumps({**REVIEW, "unixReviewTime": 1.5}) + "\n", 4, "unixReviewTime", "expected an integer"),
    ('["A", "B2", 101]\n', 4, None, "expected a JSON object"),
    (json.dumps({**REVIEW, "reviewerID": " "}) + "\n", 4, "reviewerID", "missing or empty id"),
])
def test_bad_amazon_reviews(tmp_path, bad, line, field, message):
    # A blank line before the bad one: line numbers count physical lines.
    good = json.dumps(REVIEW) + "\n"
    path = _write(tmp_path / "reviews_Toys_5.json", good + "\n" + good + bad)
    e = _error(f"amazon2014:{tmp_path}")
    assert (e.path, e.line, e.field) == (str(path), line, field) and message in str(e)


def test_amazon_2014_python_literal_metadata_is_explained(tmp_path):
    _write(tmp_path / "reviews_Toys_5.json", json.dumps(REVIEW) + "\n")
    meta = _write(tmp_path / "meta_Toys.json", "{'asin': 'B1', 'title': 'Ball'}\n")
    e = _error(f"amazon2014:{tmp_path}")
    assert (e.path, e.line) == (str(meta), 1) and "Python literal" in str(e) and "ast.literal_eval" in str(e)
    _write(tmp_path / "meta_Toys.json", json.dumps({"title": "Ball"}) + "\n")
    e = _error(f"amazon2014:{tmp_path}")
    assert (e.line, e.field) == (1, "asin")


def test_amazon_2023_needs_parent_asin(tmp_path):
    row = {"user_id": "U", "asin": "V1", "timestamp": 5}
    path = _write(tmp_path / "Toys.jsonl", f"{json.dumps({**row, 'parent_asin': 'P'})}\n{json.dumps(row)}\n")
    e = _error(f"amazon2023:{tmp_path}")
    assert (e.path, e.line, e.field) == (str(path), 2, "parent_asin")


def test_bad_generic_tables(tmp_path):
    path = _write(tmp_path / "a.csv", "user,item,timestamp\nu,i,2020-01-01\nu,j,yesterday\n")
    e = _error(f"csv:{path}")
    assert (e.line, e.field) == (3, "timestamp") and "'yesterday'" in str(e)
    path = _write(tmp_path / "b.csv", "user,item,timestamp\nu,i,1\nu,j,2020-01-01\n")
    e = _error(f"csv:{path}")
    assert (e.line, e.field) == (3, "timestamp") and "one kind" in str(e)
    path = _write(tmp_path / "c.csv", "user,product,timestamp\nu,i,1\n")
    e = _error(f"csv:{path}")
    assert (e.line, e.field) == (1, "item") and "product" in str(e)
    assert load_sequences(f"csv:{path}", item_col="product", min_interactions=0).item_ids == ["i"]
    e = _error(f"csv:{path}", item_col="product", title_col="name")
    assert (e.line, e.field) == (1, "name")
    table = pa.table({"user": ["u", "u"], "item": ["i", "j"], "timestamp": pa.array([1, None], pa.int64())})
    pq.write_table(table, tmp_path / "t.parquet")
    e = _error(f"parquet:{tmp_path / 't.parquet'}")
    assert (e.line, e.field) == (2, "timestamp") and "row 2" in str(e)
    e = _error(f"parquet:{tmp_path / 't.parquet'}", time_col="time")
    assert e.field == "time" and "no such column" in str(e)


def test_generic_csv_options(tmp_path):
    path = _write(tmp_path / "x.csv", "user;item;timestamp\nu;i;1.5\nu;j;0.5\n")
    data = load_sequences(f"csv:{path}", delimiter=";", min_interactions=0)
    assert data.sequences == [[2, 1]] and data.titles is None
    with pytest.raises(ValueError, match="delimiter"):
        load_sequences(f"csv:{path}", delimiter=";;")


def test_parquet_date_column_and_integer_ids(tmp_path):
    import datetime as dt

    day = dt.date(2024, 5, 1)
    table = pa.table({"u": pa.array([7, 7, 8], pa.int32()), "i": pa.array([1, 2, 1], pa.int64()),
                      "d": pa.array([day + dt.timedelta(2), day, day], pa.date32())})
    pq.write_table(table, tmp_path / "x.parquet")
    data = load_sequences(f"parquet:{tmp_path / 'x.parquet'}", min_interactions=0, user_col="u", item_col="i",
                          time_col="d")
    assert data.user_ids == ["7", "8"] and data.item_ids == ["1", "2"] and data.sequences == [[2, 1], [1]]


def test_archives_are_refused(tmp_path):
    (tmp_path / "ml-1m.zip").write_bytes(b"PK")
    with pytest.raises(DataFileError, match="archives are not read"):
        load_sequences(f"movielens:{tmp_path / 'ml-1m.zip'}")


@pytest.mark.parametrize("spec, error, message", [
    ("movielens", ValueError, "FORMAT:PATH"),
    ("netflix:/tmp", ValueError, "unknown data format 'netflix'"),
    ("movielens:/no/such/folder", DataFileError, "no such file or folder"),
])
def test_bad_specs(spec, error, message):
    with pytest.raises(error, match=message):
        load_sequences(spec)


def test_folder_lookup_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="no MovieLens ratings file"):
        load_sequences(f"movielens:{tmp_path / 'empty'}")
    with pytest.raises(DataFileError, match="no amazon2023 reviews file"):
        load_sequences(f"amazon2023:{tmp_path / 'empty'}")
    for name in ("Toys_5.json", "Books_5.json"):
        _write(tmp_path / "two" / name, json.dumps(REVIEW) + "\n")
    with pytest.raises(DataFileError, match="several amazon2018 review files"):
        load_sequences(f"amazon2018:{tmp_path / 'two'}")
    for name in ("a.csv", "b.csv"):
        _write(tmp_path / "csvs" / name, "user,item,timestamp\n")
    with pytest.raises(DataFileError, match=r"expected one \.csv or \.tsv file"):
        load_sequences(f"csv:{tmp_path / 'csvs'}")
    with pytest.raises(TypeError, match="takes no option"):
        load_sequences(_spec("movielens:ml-1m"), user_col="u")
    with pytest.raises(DataFileError, match="no such title file"):
        load_sequences(_spec("movielens:ml-1m"), titles_path=str(tmp_path / "nope.dat"))


def test_from_interactions_with_titles():
    data = from_interactions([1, 1, 2, 2], [5, 6, 5, 6], [1, 2, 3, 4], titles={5: "five", 6: "six", 7: "x"},
                             min_interactions=2)
    assert data.titles == ["five", "six"] and data.sequences == [[1, 2], [1, 2]]
    with pytest.raises(ValueError, match="one entry per row"):
        from_interactions([1], [2, 3], [4])
