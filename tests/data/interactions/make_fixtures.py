"""Write the interaction fixtures (run from anywhere; deterministic, nothing downloaded).

    python tests/data/interactions/make_fixtures.py [OUT_DIR]     (default: this folder)

Three data sets:

* **toy**: 24 interaction rows of 6 users and 7 items, written in every format the readers
  take, laid out as the data sets are distributed (``ml-1m/``, ``ml-100k/``,
  ``ml-latest-small/``, ``amazon2014/``, ``amazon2018/``, ``amazon2023/``, ``csv/``,
  ``tsv/``, ``parquet/``, ``recbole/``). Its rows hold timestamp ties, an exact duplicate row, users and
  items that 3-core filtering removes (over two rounds) and titles, so the expected
  sequences can be checked by hand (``tests/test_data.py`` spells them out).
* **ml-demo**: a synthetic MovieLens-1M-style folder (``ratings.dat`` + ``movies.dat``), 300
  users x 150 items, with a planted, learnable structure for the training demo: six genres
  whose word is in every title of theirs, items of a genre form a chain (item j is usually
  followed by item j + 1 of the same genre), users have a favourite genre and move through
  genre runs in time order. A model that reads the sequence beats the most-popular ranking.
* **recbole-demo**: a small synthetic RecBole atomic data set (``recbole-demo.inter`` +
  ``recbole-demo.item``), 60 users x 48 items, built the way ml-demo is (genre chains,
  favourite genres), with integer-valued ``float`` timestamps, ties within users, users'
  rows interleaved in the file as in RecBole's ml-100k, and a few titles with commas and
  quotes (RecBole files are not quoted) or without a release year.

Only the standard library is needed, except for the Parquet file (pyarrow).
"""

from __future__ import annotations

import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- toy: one logical data set

# (user, item, timestamp) in file order. Hand-checkable (see tests/test_data.py):
# - user 50 has 2 rows and items 105 (2 users), 106 (1) and 107 (2) have < 3: round 1 of a
#   3-core removes them; user 60 is then left with 2 items and goes in round 2;
# - row 11 repeats row 4 exactly (a duplicate);
# - user 10 has 103 and 102 at the same time 200 (103 first in the file), user 20 has 104
#   and 103 at 70 (104 first); rows are not in time order within users.
TOY_ROWS = [
    (20, 102, 50), (10, 101, 100), (10, 107, 150), (30, 103, 10), (50, 101, 1), (10, 103, 200),
    (20, 101, 60), (10, 102, 200), (40, 104, 5), (60, 105, 1), (30, 103, 10), (20, 104, 70),
    (20, 103, 70), (60, 106, 2), (30, 101, 20), (40, 103, 7), (40, 101, 6), (10, 104, 300),
    (50, 105, 2), (60, 101, 3), (20, 107, 80), (30, 102, 30), (40, 102, 8), (60, 102, 4),
]
TOY_TITLES = {
    101: "Red Star (1995)", 102: "Blue Moon, The (1996)", 103: "Amélie of the Sea (2001)",
    104: "Night Train (1990)", 105: "Dark Forest (1989)", 106: "Silent River (1999)",
    107: "Golden Road (2000)",
}
RECBOLE_INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
RECBOLE_ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
TOY_GENRES = {101: "Action", 102: "Drama", 103: "Comedy|Romance", 104: "Thriller", 105: "Horror",
              106: "Drama", 107: "Western"}


def _write(path: str, text: str, encoding: str = "utf-8") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="\n") as f:
        f.write(text)


def _jsonl(objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def _csv_quote(text: str) -> str:
    return f'"{text}"' if "," in text or '"' in text else text


def write_toy(out: str) -> None:
    rating = lambda u, i: 1 + (u + i) % 5
    # MovieLens 1M: ratings.dat / movies.dat with "::"; movies.dat in Latin-1 as distributed.
    _write(f"{out}/ml-1m/ratings.dat", "".join(f"{u}::{i}::{rating(u, i)}::{t}\n" for u, i, t in TOY_ROWS))
    _write(f"{out}/ml-1m/movies.dat",
           "".join(f"{i}::{TOY_TITLES[i]}::{TOY_GENRES[i]}\n" for i in sorted(TOY_TITLES)), "latin-1")
    # MovieLens 100k: u.data tab-separated, u.item "|"-separated with 19 genre flags, Latin-1.
    _write(f"{out}/ml-100k/u.data", "".join(f"{u}\t{i}\t{rating(u, i)}\t{t}\n" for u, i, t in TOY_ROWS))
    flags = lambda i: "|".join("1" if k == i % 19 else "0" for k in range(19))
    _write(f"{out}/ml-100k/u.item",
           "".join(f"{i}|{TOY_TITLES[i]}|01-Jan-1995||http://example.invalid/{i}|{flags(i)}\n"
                   for i in sorted(TOY_TITLES)), "latin-1")
    # MovieLens latest: CSV with headers, a quoted title.
    _write(f"{out}/ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{rating(u, i)}.0,{t}\n" for u, i, t in TOY_ROWS))
    _write(f"{out}/ml-latest-small/movies.csv", "movieId,title,genres\n" + "".join(
        f"{i},{_csv_quote(TOY_TITLES[i])},{TOY_GENRES[i]}\n" for i in sorted(TOY_TITLES)))
    # Amazon 2014 (5-core file name): item 104 has no title in the metadata; 999 never rated.
    _write(f"{out}/amazon2014/reviews_Toys_5.json", _jsonl(
        {"reviewerID": str(u), "asin": str(i), "reviewerName": f"user {u}", "helpful": [0, 0],
         "reviewText": "fine", "overall": float(rating(u, i)), "summary": "ok", "unixReviewTime": t,
         "reviewTime": "01 1, 1970"} for u, i, t in TOY_ROWS))
    _write(f"{out}/amazon2014/meta_Toys.json", _jsonl(
        [{"asin": str(i), **({"title": TOY_TITLES[i]} if i != 104 else {}), "price": 9.99,
          "categories": [["Toys"]]} for i in sorted(TOY_TITLES)] + [{"asin": "999", "title": "Unrated"}]))
    # Amazon 2018: item 103's title is empty; 101 is listed twice, the same both times.
    _write(f"{out}/amazon2018/Toys_5.json", _jsonl(
        {"overall": float(rating(u, i)), "verified": True, "reviewTime": "01 1, 1970", "reviewerID": str(u),
         "asin": str(i), "style": {"Color:": "Red"} if u % 2 else {"Size:": "S"}, "unixReviewTime": t}
        for u, i, t in TOY_ROWS))
    meta = [{"asin": str(i), "title": "" if i == 103 else TOY_TITLES[i], "category": ["Toys"],
             "rank": "1 in Toys"} for i in sorted(TOY_TITLES)]
    _write(f"{out}/amazon2018/meta_Toys.json", _jsonl([meta[0], *meta, meta[0]]))
    # Amazon 2023: items are parent_asin (asin is a variant), timestamps in milliseconds.
    _write(f"{out}/amazon2023/Toys.jsonl", _jsonl(
        {"rating": float(rating(u, i)), "title": "ok", "text": "fine", "images": [], "asin": f"V{i}",
         "parent_asin": str(i), "user_id": str(u), "timestamp": t * 1000, "helpful_vote": 0,
         "verified_purchase": True} for u, i, t in TOY_ROWS))
    _write(f"{out}/amazon2023/meta_Toys.jsonl", _jsonl(
        {"main_category": "Toys", "title": TOY_TITLES[i], "average_rating": 4.5, "features": [],
         "details": {"Brand": "X"}, "parent_asin": str(i)} for i in sorted(TOY_TITLES)))
    # Generic CSV (default column names, a title on each row).
    _write(f"{out}/csv/interactions.csv", "user,item,timestamp,title\n" + "".join(
        f"{u},{i},{t},{_csv_quote(TOY_TITLES[i])}\n" for u, i, t in TOY_ROWS))
    # Generic TSV with other column names and ISO 8601 date-times (read with overrides).
    _write(f"{out}/tsv/events.tsv", "uid\tiid\twhen\tname\n" + "".join(
        f"u{u}\ti{i}\t{_iso(t)}\t{TOY_TITLES[i]}\n" for u, i, t in TOY_ROWS))
    _write_parquet(f"{out}/parquet/interactions.parquet")
    # RecBole atomic files: typed tab-separated header, float timestamps written "50.0", the
    # year in its own field (the reader appends it to the title again).
    _write(f"{out}/recbole/toy.inter", RECBOLE_INTER_HEADER + "".join(
        f"{u}\t{i}\t{rating(u, i)}.0\t{t}.0\n" for u, i, t in TOY_ROWS))
    _write(f"{out}/recbole/toy.item", RECBOLE_ITEM_HEADER
           + "".join(f"{i}\t{TOY_TITLES[i][:-7]}\t{TOY_TITLES[i][-5:-1]}\t{TOY_GENRES[i].replace('|', ' ')}\n"
                     for i in sorted(TOY_TITLES)))


def _iso(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    return f"2020-01-01T{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _write_parquet(path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.table({
        "user": pa.array([u for u, _, _ in TOY_ROWS], pa.int64()),
        "item": pa.array([i for _, i, _ in TOY_ROWS], pa.int64()),
        "timestamp": pa.array([t for _, _, t in TOY_ROWS], pa.timestamp("s")),
        "title": pa.array([TOY_TITLES[i] for _, i, _ in TOY_ROWS], pa.string()),
    })
    pq.write_table(table, path, compression="none")


# ---------------------------------------------------------------- ml-demo: learnable synthetic set

DEMO_GENRES = [("space", "Sci-Fi"), ("love", "Romance"), ("war", "War"), ("magic", "Fantasy"),
               ("crime", "Crime"), ("fun", "Comedy")]
DEMO_GENRE_WEIGHTS = [0.28, 0.22, 0.16, 0.14, 0.12, 0.08]  # favourite genres, skewed a little
DEMO_ADJ = ["silent", "golden", "dark", "last", "little", "wild", "secret", "broken"]
DEMO_NOUN = ["road", "river", "city", "king", "heart", "night", "garden", "storm"]
DEMO_USERS, DEMO_PER_GENRE = 300, 25
DEMO_STAY = 0.8  # chance that the next item continues the current genre's chain


def demo_items() -> list[tuple[int, str, str, int, int]]:
    """(movie id, title, genres, genre index, chain position) of the 150 demo items."""
    rng = random.Random(7)
    items = []
    for g, (word, label) in enumerate(DEMO_GENRES):
        pairs = rng.sample([(a, n) for a in DEMO_ADJ for n in DEMO_NOUN], DEMO_PER_GENRE)
        for j, (adj, noun) in enumerate(pairs):
            title = f"{adj.capitalize()} {word.capitalize()} {noun.capitalize()}"
            items.append(((g + 1) * 100 + j + 1, title, label, g, j))
    return items


def demo_ratings() -> list[tuple[int, int, int, int]]:
    """(user, movie id, rating, timestamp), users in id order, each user's rows shuffled."""
    rng = random.Random(11)
    ids = {(g, j): mid for mid, _, _, g, j in demo_items()}
    rows = []
    for user in range(1, DEMO_USERS + 1):
        favourite = rng.choices(range(len(DEMO_GENRES)), DEMO_GENRE_WEIGHTS)[0]
        second = rng.choice([g for g in range(len(DEMO_GENRES)) if g != favourite])
        length = rng.randint(8, 20)
        genre, pos = favourite, rng.randrange(DEMO_PER_GENRE)
        seen, seq = set(), []
        while len(seq) < length:
            while (genre, pos) in seen:  # the chain skips what the user already has
                pos = (pos + 1) % DEMO_PER_GENRE
            seen.add((genre, pos))
            seq.append(ids[genre, pos])
            if rng.random() < DEMO_STAY:
                pos = (pos + 1) % DEMO_PER_GENRE
            else:
                genre = favourite if genre != favourite else second
                pos = rng.randrange(DEMO_PER_GENRE)
        t = 956_700_000 + rng.randrange(10_000_000)
        timed = []
        for mid in seq:
            timed.append((user, mid, rng.randint(3, 5), t))
            t += 0 if rng.random() < 0.03 else rng.randint(30, 7200)  # a few ties
        # Tied rows keep their generated order below (the sort is stable); the file lists a
        # user's rows in a shuffled order otherwise, as ml-1m does.
        order = sorted(range(len(timed)), key=lambda k: (rng.random(), k))
        rows.extend(timed[k] for k in _tie_stable(order, timed))
    return rows


def _tie_stable(order: list[int], timed: list) -> list[int]:
    # Within each group of equal timestamps, put the rows back in generated order, so the
    # file order of a tie matches the sequence the structure was planted in.
    by_time: dict[int, list[int]] = {}
    for k in order:
        by_time.setdefault(timed[k][3], []).append(k)
    groups = {t: iter(sorted(ks)) for t, ks in by_time.items()}
    return [next(groups[timed[k][3]]) for k in order]


def write_demo(out: str) -> None:
    _write(f"{out}/ml-demo/ratings.dat", "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in demo_ratings()))
    _write(f"{out}/ml-demo/movies.dat",
           "".join(f"{m}::{title}::{genres}\n" for m, title, genres, _, _ in demo_items()), "latin-1")


# ---------------------------------------------------------------- recbole-demo: RecBole atomic files

RB_GENRES = [("space", "Sci-Fi"), ("love", "Romance"), ("war", "War"), ("magic", "Fantasy")]
RB_GENRE_WEIGHTS = [0.35, 0.3, 0.2, 0.15]
RB_USERS, RB_PER_GENRE = 60, 12
RB_STAY = 0.8  # chance that the next item continues the current genre's chain
# Titles RecBole files hold as they are (no quoting): a comma, quotes; one item has no year.
RB_SPECIAL = {5: "Last Space Road, The", 17: 'The "Secret" Love Garden', 30: "Wild War Night, Part II"}
RB_NO_YEAR = 42


def recbole_demo_items() -> list[tuple[int, str, str, str, int, int]]:
    """(item id, movie_title, release_year, class, genre index, chain position), ids 1..48."""
    rng = random.Random(5)
    items = []
    for g, (word, label) in enumerate(RB_GENRES):
        pairs = rng.sample([(a, n) for a in DEMO_ADJ for n in DEMO_NOUN], RB_PER_GENRE)
        for j, (adj, noun) in enumerate(pairs):
            iid = g * RB_PER_GENRE + j + 1
            title = RB_SPECIAL.get(iid, f"{adj.capitalize()} {word.capitalize()} {noun.capitalize()}")
            year = "" if iid == RB_NO_YEAR else str(rng.randint(1970, 2005))
            extra = rng.choice(["", " Drama", " Adventure"])
            items.append((iid, title, year, label + extra, g, j))
    return items


def recbole_demo_rows() -> list[tuple[int, int, str, int]]:
    """(user, item, rating, timestamp) in file order: users interleaved, ties within a user
    listed in the order they were generated."""
    rng = random.Random(13)
    ids = {(g, j): iid for iid, _, _, _, g, j in recbole_demo_items()}
    rows = []
    for user in range(1, RB_USERS + 1):
        favourite = rng.choices(range(len(RB_GENRES)), RB_GENRE_WEIGHTS)[0]
        second = rng.choice([g for g in range(len(RB_GENRES)) if g != favourite])
        length = rng.randint(8, 20)
        genre, pos = favourite, rng.randrange(RB_PER_GENRE)
        seen, seq = set(), []
        while len(seq) < length:
            if all((genre, p) in seen for p in range(RB_PER_GENRE)):  # genre used up: the other
                genre = favourite if genre != favourite else second
            while (genre, pos) in seen:  # the chain skips what the user already has
                pos = (pos + 1) % RB_PER_GENRE
            seen.add((genre, pos))
            seq.append(ids[genre, pos])
            if rng.random() < RB_STAY:
                pos = (pos + 1) % RB_PER_GENRE
            else:
                genre = favourite if genre != favourite else second
                pos = rng.randrange(RB_PER_GENRE)
        t = 874_700_000 + rng.randrange(20_000_000)
        for iid in seq:
            rows.append((user, iid, rng.choice(["3", "4", "5", "3.5", "4.5"]), t))
            t += 0 if rng.random() < 0.08 else rng.randint(60, 86_400)  # some ties
    # Shuffle the whole file, then put each (user, time) tie back in generated order.
    order = sorted(range(len(rows)), key=lambda k: (rng.random(), k))
    groups: dict[tuple[int, int], list[int]] = {}
    for k in order:
        groups.setdefault((rows[k][0], rows[k][3]), []).append(k)
    queues = {key: iter(sorted(ks)) for key, ks in groups.items()}
    return [rows[next(queues[rows[k][0], rows[k][3]])] for k in order]


def write_recbole_demo(out: str) -> None:
    _write(f"{out}/recbole-demo/recbole-demo.inter",
           RECBOLE_INTER_HEADER + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in recbole_demo_rows()))
    _write(f"{out}/recbole-demo/recbole-demo.item",
           RECBOLE_ITEM_HEADER + "".join(f"{i}\t{title}\t{year}\t{cls}\n"
                                         for i, title, year, cls, _, _ in recbole_demo_items()))


def main(out: str = HERE) -> None:
    write_toy(out)
    write_demo(out)
    write_recbole_demo(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
