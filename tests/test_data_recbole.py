"""RecBole atomic files (``recbole:PATH`` / ``recbole:NAME``) in l2rec_kernels.data.

Expectations on the synthetic fixture tests/data/interactions/recbole-demo (written by
make_fixtures.py) are computed here from the raw files with plain Python, independently of
the reader and the pipeline.
"""

import os
import sys
from collections import Counter

import pytest

from l2rec_kernels.data import FORMATS, DataFileError, load_sequences
from l2rec_kernels.data.readers import READERS_OPTIONS, read_interactions

HERE = os.path.join(os.path.dirname(__file__), "data", "interactions")
DEMO = os.path.join(HERE, "recbole-demo")
INTER = os.path.join(DEMO, "recbole-demo.inter")
ITEM = os.path.join(DEMO, "recbole-demo.item")


def _rows(path):
    """(header names, rows as lists of cells, 1-based line of each row)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    names = [cell.split(":")[0] for cell in lines[0].split("\t")]
    rows = [(line.split("\t"), n) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    return names, [r for r, _ in rows], [n for _, n in rows]


def _kcore(triples, k):
    """Plain k-core: drop exact duplicates, then users/items with < k rows until none."""
    seen, kept = set(), []
    for t in triples:
        if t not in seen:
            seen.add(t)
            kept.append(t)
    while k > 1:
        users, items = Counter(u for u, _, _ in kept), Counter(i for _, i, _ in kept)
        left = [t for t in kept if users[t[0]] >= k and items[t[1]] >= k]
        if len(left) == len(kept):
            break
        kept = left
    return kept


def _demo_triples():
    names, rows, _ = _rows(INTER)
    u, i, t = names.index("user_id"), names.index("item_id"), names.index("timestamp")
    return [(r[u], r[i], int(r[t])) for r in rows]


def test_format_and_options_are_registered():
    assert "recbole" in FORMATS
    assert READERS_OPTIONS["recbole"] == {"user_field", "item_field", "time_field", "title_field",
                                          "titles_path"}


@pytest.mark.parametrize("k", [5, 11])
def test_demo_counts_match_a_plain_kcore(k):
    triples = _demo_triples()
    assert len(triples) == 873 and len({u for u, _, _ in triples}) == 60
    assert 40 <= len({i for _, i, _ in triples}) <= 60
    assert all(8 <= n <= 20 for n in Counter(u for u, _, _ in triples).values())
    kept = _kcore(triples, k)
    data = load_sequences(f"recbole:{DEMO}", min_interactions=k)
    assert data.num_users == len({u for u, _, _ in kept})
    assert data.num_items == len({i for _, i, _ in kept})
    assert data.stats["interactions"] == len(kept) == sum(len(s) for s in data.sequences)
    assert data.stats["rows_read"] == 873
    if k == 11:
        assert data.stats["kcore_rows_removed"] > 0


def test_demo_time_order_keeps_ties_in_file_order():
    triples = _demo_triples()
    by_user = {}
    for n, (u, i, t) in enumerate(triples):
        by_user.setdefault(u, []).append((t, n, i))
    ties = sum(c - 1 for c in Counter((u, t) for u, _, t in triples).values())
    assert ties >= 10  # the fixture has ties within users
    data = load_sequences(f"recbole:{DEMO}", min_interactions=0)
    for user, seq in zip(data.user_ids, data.sequences):
        expected = [i for _, _, i in sorted(by_user[user])]  # by time, then file position
        assert [data.item_ids[j - 1] for j in seq] == expected, user
    # Timestamps are exact integers (9 digits: float32 would round them).
    rows = read_interactions("recbole", DEMO)
    assert rows.timestamps.to_pylist() == [t for _, _, t in triples]


def test_demo_titles_have_the_year_appended():
    names, rows, _ = _rows(ITEM)
    assert names == ["item_id", "movie_title", "release_year", "class"]
    expected = {r[0]: f"{r[1]} ({r[2]})" if r[2] else r[1] for r in rows}
    data = load_sequences(f"recbole:{DEMO}")
    assert data.titles == [expected[i] for i in data.item_ids]
    assert data.stats["items_without_title"] == 0 and data.stats["title_rows"] == len(rows)
    titles = set(data.titles)
    assert 'The "Secret" Love Garden (1993)' in titles and "Last Space Road, The (1994)" in titles
    assert any("(" not in t for t in titles)  # the item without a release year


def test_file_and_folder_forms_agree():
    a = load_sequences(f"recbole:{DEMO}")
    b = load_sequences(f"recbole:{INTER}")
    assert (a.sequences, a.item_ids, a.user_ids, a.titles) == (b.sequences, b.item_ids, b.user_ids, b.titles)


# ------------------------------------------------------------------------------ small files

def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


HEAD = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def _error(spec, **options) -> DataFileError:
    with pytest.raises(DataFileError) as e:
        load_sequences(spec, min_interactions=0, **options)
    return e.value


@pytest.mark.parametrize("text, line, field, message", [
    ("user_id:token\titem_id\ttimestamp:float\nu\ti\t1\n", 1, "item_id", "'item_id' is not name:type"),
    ("user_id:token\titem_id:token\ttimestamp:date\nu\ti\t1\n", 1, "timestamp", "unknown type 'date'"),
    ("uid:token\titem_id:token\ttimestamp:float\nu\ti\t1\n", 1, "user_id", "no such field in the header"),
    (HEAD + "u\ti\t5\t100\nu\tj\t5\n", 3, None, "expected 4 fields"),
    (HEAD + "u\ti\t5\t100\n\nu\t \t5\t101\n", 4, "item_id", "missing or empty id"),
    (HEAD + "u\ti\t5\t100\nu\tj\t5\tsoon\n", 3, "timestamp", "expected a number, got 'soon'"),
    (HEAD + "u\ti\t5\t100\nu\tj\t5\t\n", 3, "timestamp", "expected a number"),
    (HEAD + "u\ti\t5\t100\nu\tj\t5\tnan\n", 3, "timestamp", "finite"),
])
def test_bad_inter_files(tmp_path, text, line, field, message):
    path = _write(tmp_path / "x.inter", text)
    e = _error(f"recbole:{tmp_path}")
    assert (e.path, e.line, e.field) == (str(path), line, field), str(e)
    assert message in str(e) and f"line {line}" in str(e) and str(path) in str(e)


def test_bad_item_file_and_title_field(tmp_path):
    _write(tmp_path / "x.inter", HEAD + "u\ti\t5\t100\n")
    item = _write(tmp_path / "x.item", "item_id:token\tmovie_title:token_seq\ni\tA\tB\n")
    e = _error(f"recbole:{tmp_path}")
    assert (e.path, e.line) == (str(item), 2) and "expected 2 fields" in str(e)
    _write(tmp_path / "x.item", "item_id:token\tmovie_title:token_seq\ni\tA\n")
    e = _error(f"recbole:{tmp_path}", title_field="name")
    assert (e.path, e.line, e.field) == (str(item), 1, "name")
    # No title field at all: no titles.
    _write(tmp_path / "x.item", "item_id:token\tclass:token_seq\ni\tDrama\n")
    assert load_sequences(f"recbole:{tmp_path}", min_interactions=0).titles is None


def test_several_inter_files_are_named(tmp_path):
    _write(tmp_path / "a.inter", HEAD)
    _write(tmp_path / "b.inter", HEAD)
    e = _error(f"recbole:{tmp_path}")
    assert "a.inter" in str(e) and "b.inter" in str(e)
    (tmp_path / "a.inter").unlink()
    (tmp_path / "b.inter").unlink()
    assert "no RecBole .inter file" in str(_error(f"recbole:{tmp_path}"))


def test_without_timestamp_file_order_is_time_order(tmp_path):
    _write(tmp_path / "x.inter", "user_id:token\titem_id:token\nu\tc\nv\ta\nu\tb\nu\ta\nv\tc\n")
    data = load_sequences(f"recbole:{tmp_path}", min_interactions=0)
    assert data.user_ids == ["u", "v"] and data.item_ids == ["c", "a", "b"]
    assert data.sequences == [[1, 3, 2], [2, 1]]
    # A time field named explicitly must exist.
    e = _error(f"recbole:{tmp_path}", time_field="timestamp")
    assert (e.line, e.field) == (1, "timestamp")


def test_float_timestamps_are_exact(tmp_path):
    # 881250949.0 and 881250949.5 differ by less than float32's step there (64).
    _write(tmp_path / "x.inter", HEAD + "u\tb\t1\t881250949.5\nu\ta\t1\t881250949.0\nu\tc\t1\t881250950\n")
    rows = read_interactions("recbole", str(tmp_path))
    assert str(rows.timestamps.type) == "double"
    assert rows.timestamps.to_pylist() == [881250949.5, 881250949.0, 881250950.0]
    assert load_sequences(f"recbole:{tmp_path}", min_interactions=0).sequences == [[2, 1, 3]]


def test_field_overrides_and_titles_path(tmp_path):
    _write(tmp_path / "x.inter", "uid:token\tiid:token\twhen:float\nu\ti\t2\nu\tj\t1\n")
    titles = _write(tmp_path / "other" / "meta.item", "iid:token\tname:token_seq\tyear:token\ni\tEye\t\n"
                                                      "j\tJay\t2001\n")
    data = load_sequences(f"recbole:{tmp_path / 'x.inter'}", min_interactions=0, user_field="uid",
                          item_field="iid", time_field="when", titles_path=titles)
    assert data.sequences == [[2, 1]] and data.item_ids == ["i", "j"] and data.titles == ["Eye", "Jay (2001)"]
    data = load_sequences(f"recbole:{tmp_path / 'x.inter'}", min_interactions=0, user_field="uid",
                          item_field="iid", time_field="when", titles_path=titles, title_field="iid")
    assert data.titles == ["i", "j (2001)"]
    with pytest.raises(TypeError, match="takes no option"):
        load_sequences(f"recbole:{tmp_path}", user_col="uid")


# ------------------------------------------------------------------------------ recbole:NAME

def test_named_data_set_found_in_peer_environment(tmp_path, monkeypatch):
    folder = tmp_path / ".venv-peers" / "lib" / "python3.11" / "site-packages" / "recbole" / "dataset_example"
    _write(folder / "toy" / "toy.inter", HEAD + "u\ti\t5\t100\nu\tj\t5\t99\n")
    _write(folder / "toy" / "toy.item", "item_id:token\tmovie_title:token_seq\ni\tEye\nj\tJay\n")
    monkeypatch.chdir(tmp_path)
    data = load_sequences("recbole:toy", min_interactions=0)
    assert data.item_ids == ["i", "j"] and data.sequences == [[2, 1]] and data.titles == ["Eye", "Jay"]
    assert "recbole" not in sys.modules  # found without importing it


def test_named_data_set_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataFileError) as e:
        load_sequences("recbole:no-such-set_1.0")
    message = str(e.value)
    assert "no installed recbole with data set 'no-such-set_1.0'" in message
    assert "make peers" in message and ".venv-peers" in message and str(tmp_path) in message
    # Not a bare name: an ordinary missing path.
    with pytest.raises(DataFileError, match="no such file or folder"):
        load_sequences(f"recbole:{tmp_path / 'nope'}")
