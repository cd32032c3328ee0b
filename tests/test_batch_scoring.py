"""Offline batch scoring (``l2rec_serving.batch``): row checks, the commit, and jobs on Ray.

Without Ray: every bad-row kind gets its kind and a message naming the problem; the
first pass's user keys agree with the row check; the commit refuses duplicated, missing
and truncated output and publishes atomically (created, refused, replaced); the CLI checks
its arguments.

On one local Ray instance shared by the module: a checkpoint job (titles, preference)
gives every user ``model.recommend``'s answer for that user alone; a JSON-lines job
rejects every kind of bad line with its reason, a rerun into the same output is refused
and ``overwrite`` replaces the output with no file of the old run left; and a job whose
model actor is SIGKILLed mid-way still writes every user exactly once.

Needs the ``batch`` extra (ray[data], pyarrow); skips without it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import pytest
import torch

pytest.importorskip("ray.data", reason="the batch extra (ray[data]) is not installed")
import pyarrow as pa
import pyarrow.parquet as pq
from l2rec_serving.batch import commit
from l2rec_serving.batch.options import BatchOptions
from l2rec_serving.batch.rows import KINDS, RawRow, check_row, user_keys
from l2rec_serving.loading import ServiceSpec, build_tiny_model
from tolerances import REL_TOL, rel_err

NUM_ITEMS = 60
MARKER = f"l2rec-batch-test-{uuid.uuid4().hex[:8]}"  # in the environment of this module's Ray workers


def _check(values, *, duplicates=None, can_build=True, text=None):
    return check_row(RawRow(values, text), num_items=NUM_ITEMS, max_history_items=20,
                     duplicates=duplicates or {}, can_build_prompts=can_build)


# ----------------------------------------------------------------------------- rows (no Ray)
BAD = [  # (row values, kind, words the reason must contain)
    (None, "unparsable_line", "not a JSON object"),
    ({"history": [1]}, "missing_user_id", "user_id is missing"),
    ({"user_id": None, "history": [1]}, "missing_user_id", "missing"),
    ({"user_id": 1.5, "history": [1]}, "malformed_user_id", "got 1.5 (float)"),
    ({"user_id": True, "history": [1]}, "malformed_user_id", "got True (bool)"),
    ({"user_id": "  ", "history": [1]}, "malformed_user_id", "non-empty string"),
    ({"user_id": 7, "history": [1]}, "duplicate_user_id", "appears 2 times"),
    ({"user_id": 1, "history": []}, "empty_history", "history is empty"),
    ({"user_id": 1}, "empty_history", "history is missing"),
    ({"user_id": 1, "history": ""}, "empty_history", "history is empty"),
    ({"user_id": 1, "history": 5}, "malformed_history", "got int"),
    ({"user_id": 1, "history": [1, "2"]}, "malformed_history", "history[1] must be an int item id, got '2'"),
    ({"user_id": 1, "history": [1, 2.0]}, "malformed_history", "history[1]"),
    ({"user_id": 1, "history": [1, None]}, "malformed_history", "history[1]"),
    ({"user_id": 1, "history": "[1, 2"}, "malformed_history", "neither a JSON list"),
    ({"user_id": 1, "history": "3 x"}, "malformed_history", "history[1] must be an int item id, got 'x'"),
    ({"user_id": 1, "history": [3, 0, 61]}, "unknown_item", "history[1] = 0 is not a catalogue item id "
                                                            "(1..60) (and 1 more)"),
    ({"user_id": 1, "history": list(range(1, 22))}, "history_too_long", "21 items; at most 20"),
    ({"user_id": 1, "history": [1], "prompt": 3}, "malformed_prompt", "must be text, got int"),
    ({"user_id": 1, "history": [1], "prompt": " "}, "malformed_prompt", "prompt is empty"),
]


@pytest.mark.parametrize(("values", "kind", "words"), BAD)
def test_check_row_names_the_problem(values, kind, words):
    row = _check(values, duplicates={"7": 2}, text=None if values else "{oops")
    assert row.problems, values
    assert row.problems[0].kind == kind and kind in KINDS
    assert words in row.problems[0].message


def test_check_row_reports_every_problem_and_keeps_the_row():
    row = _check({"user_id": None, "history": [], "extra": [1, 2]}, can_build=False)
    assert [p.kind for p in row.problems] == ["missing_user_id", "empty_history", "no_prompt"]
    assert "--titles" in row.problems[2].message
    assert json.loads(row.raw.as_json()) == {"user_id": None, "history": [], "extra": [1, 2]}


@pytest.mark.parametrize("history", [[3, 17, 42], (3, 17, 42), "3 17 42", "3,17, 42", "[3, 17, 42]",
                                     pa.array([3, 17, 42]).to_numpy()])
def test_check_row_accepts_lists_arrays_and_csv_text(history):
    row = _check({"user_id": "u1", "history": history, "prompt": None})
    assert not row.problems
    assert (row.user_id, row.history, row.prompt) == ("u1", [3, 17, 42], None)


def test_first_pass_keys_agree_with_the_row_check():
    ids = [5, "5", "", "  ", None, "x", 0]
    lines = [json.dumps({"user_id": u, "history": [1]}) for u in ids] + ["not json", "[1]"]
    keys = user_keys(pa.table({"text": lines}), "json").to_pylist()
    assert [k["key"] for k in keys] == ["5", "5", None, None, None, "x", "0", None, None]
    assert [k["is_int"] for k in keys] == [True, False, False, False, False, False, True, False, False]
    typed = user_keys(pa.table({"user_id": pa.array(["a", "", None, " b"])}), "parquet").to_pylist()
    assert [k["key"] for k in typed] == ["a", None, None, " b"]
    ints = user_keys(pa.table({"user_id": pa.array([3, None], pa.int32())}), "csv").to_pylist()
    assert ints == [{"key": "3", "is_int": True}, {"key": None, "is_int": False}]


def test_options_check_their_values():
    with pytest.raises(ValueError, match="actors must be a positive int"):
        BatchOptions(actors=0)
    with pytest.raises(ValueError, match="retries"):
        BatchOptions(retries=-1)
    with pytest.raises(TypeError, match="preference must be a bool"):
        BatchOptions(preference=1)


# ----------------------------------------------------------------------------- commit (no Ray)
def _stage(root, parts: dict[str, list[list]], name="out"):
    """A staging dir with scores part files holding these user ids, per task."""
    staging = commit.staging_dir(str(root / name), "test")
    returns = []
    for task, ids in enumerate(parts["scores"]):
        os.makedirs(os.path.join(staging, "scores"), exist_ok=True)
        os.makedirs(os.path.join(staging, "rejected"), exist_ok=True)
        table = pa.table({"user_id": pa.array(ids, pa.int64()), "items": [[1]] * len(ids),
                          "scores": pa.array([[0.5]] * len(ids), pa.list_(pa.float32()))})
        pq.write_table(table, os.path.join(staging, "scores", f"part-{task:06d}.parquet"))
        returns.append({"task": task, "scores": len(ids), "rejected": 0})
    return staging, returns


SCHEMA = pa.schema([("user_id", pa.int64()), ("items", pa.list_(pa.int64())),
                    ("scores", pa.list_(pa.float32()))])


def test_verify_refuses_repeated_missing_and_truncated_output(tmp_path):
    staging, returns = _stage(tmp_path, {"scores": [[1, 2], [3]]})
    counts = commit.verify(staging, 3, returns, SCHEMA)
    assert counts == {"input": 3, "scored": 3, "rejected": 0, "rejected_by_kind": {}}
    assert pq.read_table(os.path.join(staging, "rejected")).num_rows == 0  # an empty part has its schema
    with pytest.raises(commit.CommitError, match="!= the input's 4 rows"):
        commit.verify(staging, 4, returns, SCHEMA)
    staging, returns = _stage(tmp_path, {"scores": [[1, 2], [2]]}, name="dup")
    with pytest.raises(commit.CommitError, match="1 scored rows repeat a user_id"):
        commit.verify(staging, 3, returns, SCHEMA)
    staging, returns = _stage(tmp_path, {"scores": [[1, 2], [3]]}, name="cut")
    path = os.path.join(staging, "scores", "part-000001.parquet")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(commit.CommitError, match=r"part-000001\.parquet is not a complete part file"):
        commit.verify(staging, 3, returns, SCHEMA)
    staging, returns = _stage(tmp_path, {"scores": [[1, 2], [3]]}, name="orphan")
    with pytest.raises(commit.CommitError, match="its write task reported none"):
        commit.verify(staging, 3, returns[:1], SCHEMA)


def test_publish_creates_refuses_and_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is as good as none
    first = tmp_path / "first"
    first.mkdir()
    (first / "a").write_text("1")
    assert commit.publish(str(first), str(out), overwrite=False) == "created"
    assert sorted(os.listdir(out)) == ["a"] and not first.exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        commit.check_out_dir(str(out), overwrite=False)
    commit.check_out_dir(str(out), overwrite=True)
    second = tmp_path / "second"
    second.mkdir()
    (second / "b").write_text("2")
    with pytest.raises(FileExistsError, match="kept in"):
        commit.publish(str(second), str(out), overwrite=False)
    assert commit.publish(str(second), str(out), overwrite=True) == "replaced"
    assert sorted(os.listdir(out)) == ["b"]  # nothing of the first run left
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nor any staging or replaced directory


def test_cli_checks_its_arguments(tmp_path):
    from l2rec_serving.batch.__main__ import main, parse_args

    args = parse_args(["--out", str(tmp_path / "o")])
    assert (args.options.k, args.options.actors, args.options.threads, args.options.retries) == (100, 1, 1, 3)
    for bad in (["--out", "o", "--checkpoint", "c"], ["--out", "o", "--actors", "0"],
                ["--out", "o", "--titles", "t"], ["--users", "u", "--out", "o", "--format", "xml"],
                ["--out", "o", "--model-shape", "qwen9"],
                ["--out", "o", "--model-shape", "cpu-small", "--checkpoint", "c", "--backbone", "b"]):
        with pytest.raises(SystemExit) as info:
            parse_args(bad)
        assert info.value.code == 2
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    users = tmp_path / "users.jsonl"
    users.write_text('{"user_id": 1, "history": [1]}\n')
    assert main(["--users", str(users), "--out", str(taken)]) == 1  # refused before Ray starts


def test_fixed_length_prompts_and_hashed_words():
    from l2rec_serving.prompts import FixedLengthPromptBuilder

    from l2rec_kernels.prompts import hashed_word_tokens

    build = FixedLengthPromptBuilder(vocab=50, length=9)
    a, b = build([3, 7]), build([3, 8])
    assert len(a) == 9 and a == build([3, 7]) and a != b  # fixed length, a function of the history
    assert all(1 <= t < 50 for t in a + b)  # never token 0 (padding on many backbones)
    with pytest.raises(ValueError, match="history must not be empty"):
        build([])
    with pytest.raises(ValueError, match="vocab must be >= 2"):
        FixedLengthPromptBuilder(1, 4)
    words = hashed_word_tokens("red shoe red", 50)
    assert len(words) == 3 and words[0] == words[2] != words[1] and all(1 <= t < 50 for t in words)


def test_a_named_shape_model_scores_every_user_like_recommend():
    """``model_shape``: a random-weight model of a named shape, prompts of the shape's length
    (a given prompt text: hashed words); each user gets ``recommend`` for that user alone."""
    from l2rec_serving.batch.scorer import UserScorer

    from l2rec_kernels.prompts import FixedLengthPromptBuilder, hashed_word_tokens

    with pytest.raises(ValueError, match="model_shape must be one of"):
        ServiceSpec(model_shape="qwen9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            ServiceSpec(device="cuda").resolved_device()
    spec = ServiceSpec(model_shape="cpu-small-qwen3-paper", tiny_num_items=NUM_ITEMS, device="cpu",
                       dtype="float32")
    scorer = UserScorer(spec, BatchOptions(k=5, batch_size=2), "parquet", {}, pa.int64())
    model = scorer.model
    assert type(model).__name__ == "FusedL2Rec" and model.config.num_items == NUM_ITEMS
    histories = [[1, 2, 3], [4] * 12, [NUM_ITEMS, 7], [9]]
    prompts = [None, None, "a given prompt text", None]
    table = pa.table({"user_id": pa.array([0, 1, 2, 3], pa.int64()), "history": histories,
                      "prompt": pa.array(prompts, pa.string())})
    got = scorer(table).to_pylist()
    vocab = model.backbone.config.vocab_size
    for row, history, prompt in zip(got, histories, prompts):
        ids = hashed_word_tokens(prompt, vocab) if prompt else FixedLengthPromptBuilder(vocab, 96)(history)
        recent = history[-model.config.max_history:]
        hist = torch.zeros(1, model.config.max_history, dtype=torch.long)
        hist[0, : len(recent)] = torch.tensor(recent)
        ids = torch.tensor([ids])
        with torch.no_grad():
            want_s, want_i = model.recommend(ids, torch.ones_like(ids), hist, k=5, exclude_history=False,
                                             exclude_ids=torch.tensor([sorted(set(history))]))
        assert row["items"] == want_i[0].tolist()
        assert rel_err(torch.tensor(row["scores"]), want_s[0]) <= 10 * REL_TOL[torch.float32]


# ----------------------------------------------------------------------------- jobs on Ray
@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        yield ray
        return
    os.environ["L2REC_BATCH_TEST"] = MARKER  # (inherited by the workers: how the kill test finds them)
    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
        os.environ.pop("L2REC_BATCH_TEST", None)


def _run(users, out, spec=None, **options):
    from l2rec_serving.batch import run_job

    return run_job(str(users), str(out), spec, BatchOptions(**options), quiet=True)


def _scores(out) -> dict:
    return {r["user_id"]: r for r in pq.read_table(os.path.join(out, "scores")).to_pylist()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny model with a word-level tokenizer in its backbone directory and titles:
    (checkpoint dir, backbone dir, titles file)."""
    from l2rec_kernels.word_tokenizer import fixed_word_tokenizer

    root = tmp_path_factory.mktemp("batch_ckpt")
    model, cat = build_tiny_model(NUM_ITEMS, seed=3)
    model.backbone.save_pretrained(root / "backbone")
    model.save_pretrained(root / "ckpt")
    # The catalogue's words at the catalogue's ids (after three specials), ";" the separator.
    fixed_word_tokenizer(cat.words, ("[PAD]", "[UNK]", ";"), unk="[UNK]").save_pretrained(root / "backbone")
    (root / "titles.json").write_text(json.dumps(cat.titles))
    return root / "ckpt", root / "backbone", root / "titles.json"


@pytest.mark.xdist_group("ray")
def test_every_user_gets_recommend_for_that_user_alone(ray_local, checkpoint, tmp_path):
    """Checkpoint + titles + preference: items, scores and preference of every
    user equal the model's own answer for that user in a batch of one (fp32 CPU)."""
    from l2rec_serving.loading import load_checkpoint_model

    ckpt, backbone, titles = checkpoint
    gen = torch.Generator().manual_seed(1)
    histories = [torch.randint(1, NUM_ITEMS + 1, (int(n),), generator=gen).tolist()
                 for n in torch.randint(1, 15, (37,), generator=gen)]  # some longer than max_history (8)
    prompts = [None] * 37
    prompts[3] = prompts[20] = "genre1 item2 ; genre4 item5 ;"  # given text instead of built prompts
    users = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": pa.array(range(100, 137), pa.int64()), "history": histories,
                             "prompt": pa.array(prompts, pa.string())}), users)
    spec = ServiceSpec(checkpoint=str(ckpt), backbone=str(backbone), titles=str(titles),
                       prompt_template="{titles} ;", device="cpu", dtype="float32")
    k = 7
    result = _run(users, tmp_path / "out", spec, k=k, batch_size=4, preference=True)
    assert result.summary["counts"] == {"input": 37, "scored": 37, "rejected": 0, "rejected_by_kind": {}}
    got = _scores(tmp_path / "out")
    assert sorted(got) == list(range(100, 137))

    model, tokenizer = load_checkpoint_model(str(ckpt), str(backbone), torch.device("cpu"), torch.float32)
    title_list = json.loads(titles.read_text())
    tol = 10 * REL_TOL[torch.float32]  # another batch (and padding) than the reference's batch of one
    for uid, history, prompt in zip(range(100, 137), histories, prompts):
        recent = history[-8:]
        text = prompt if prompt is not None else "; ".join(title_list[i - 1] for i in recent) + " ;"
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        hist = torch.zeros(1, 8, dtype=torch.long)
        hist[0, : len(recent)] = torch.tensor(recent)
        with torch.no_grad():
            want_s, want_i = model.recommend(ids, torch.ones_like(ids), hist, k=k, exclude_history=False,
                                             exclude_ids=torch.tensor([sorted(set(history))]))
            want_z = model(ids, torch.ones_like(ids), hist).preference
        row = got[uid]
        assert row["items"] == want_i[0].tolist(), uid
        assert not set(row["items"]) & set(history)  # the whole history excluded, not only the last 8
        assert rel_err(torch.tensor(row["scores"]), want_s[0]) <= tol, uid
        assert rel_err(torch.tensor(row["preference"]), want_z[0]) <= tol, uid
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["options"]["preference"] and manifest["columns"]["scores"][-1] == "preference"
    assert (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.xdist_group("ray")
def test_bad_lines_are_rejected_and_reruns_never_mix(ray_local, tmp_path):
    """JSON lines with every kind of bad line: all go to rejected/ with their reason and the
    line itself; the rest are scored. A rerun into the same output is refused; with
    overwrite (a CSV users file) it replaces the output and leaves nothing of the first run."""
    good = [{"user_id": i, "history": [i, i + 1, i + 2]} for i in range(1, 21)]
    good[4]["prompt"] = "genre3 item4 genre5 item6"
    bad = {
        "not json at all": "unparsable_line",
        "[1, 2]": "unparsable_line",
        '{"user_id": 1.5, "history": [1]}': "malformed_user_id",
        '{"history": [1]}': "missing_user_id",
        '{"user_id": 30, "history": []}': "empty_history",
        '{"user_id": 31, "history": [1, "x"]}': "malformed_history",
        '{"user_id": 32, "history": [1, 999]}': "unknown_item",
        '{"user_id": 33, "history": [1], "prompt": 5}': "malformed_prompt",
        '{"user_id": 34, "history": [1], "prompt": "no such words"}': "malformed_prompt",
        '{"user_id": 35, "history": [2]}': "duplicate_user_id",
        '{"user_id": "35", "history": [3]}': "duplicate_user_id",  # the same id as text: the same user
    }
    lines = [json.dumps(g) for g in good] + list(bad)
    users = tmp_path / "users.jsonl"
    users.write_text("\n".join(lines[:10] + list(bad)[:6] + lines[10:20] + list(bad)[6:]) + "\n")
    out = tmp_path / "out"
    spec = ServiceSpec(tiny_num_items=NUM_ITEMS)
    first = _run(users, out, spec, k=5, batch_size=3)
    counts = first.summary["counts"]
    assert (counts["input"], counts["scored"], counts["rejected"]) == (31, 20, 11)
    assert counts["rejected_by_kind"]["duplicate_user_id"] == 2
    scores = _scores(out)
    assert set(scores) == {str(i) for i in range(1, 21)}  # ints and a text id: all written as text
    assert all(len(r["items"]) == 5 and r["scores"] == sorted(r["scores"], reverse=True)
               for r in scores.values())
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert sorted(r["row"] for r in rejected) == sorted(bad)  # each line as it was
    for r in rejected:
        assert r["kind"] == bad[r["row"]] and r["reason"], r
    assert next(r for r in rejected if r["row"].startswith('{"user_id": 34'))["reason"].startswith(
        "the prompt cannot be tokenised: unknown word 'no'")

    with pytest.raises(FileExistsError, match="already holds a previous run's output"):
        _run(users, out, spec, k=5)
    users2 = tmp_path / "users2.csv"  # (CSV: histories as text, an empty prompt cell is no prompt)
    users2.write_text('user_id,history,prompt\n50,1,\n51,2 3,\n52,"[3, 4]",\n53,4 5 6,genre1 item2\n')
    from l2rec_serving.batch import score_users  # (the Python API: the published scores as a Dataset)

    ds = score_users(users2, out, spec, k=5, overwrite=True, quiet=True)
    assert sorted(r["user_id"] for r in ds.take_all()) == [50, 51, 52, 53]  # int ids this time
    assert sorted(_scores(out)) == [50, 51, 52, 53]  # only the second run's users
    assert pq.read_table(out / "rejected").num_rows == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["run_id"] != first.summary["run_id"] and manifest["counts"]["input"] == 4
    assert sorted(os.listdir(tmp_path)) == ["out", "users.jsonl", "users2.csv"]  # no staging left


def _scorer_pids() -> set[int]:
    """This module's Ray workers running the scoring actor (their environment has MARKER)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"UserScorer" not in f.read():
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if MARKER.encode() in f.read():
                    pids.add(int(entry))
        except OSError:
            continue
    return pids


@pytest.mark.xdist_group("ray")
def test_a_sigkilled_actor_still_writes_every_user_exactly_once(ray_local, tmp_path):
    """One actor, SIGKILLed once part of the output is written: Ray restarts it and retries
    its call (max_restarts=-1, max_task_retries=3); the output has every user once."""
    from l2rec_serving.batch.demo import write_users

    users = tmp_path / "users.parquet"
    n = write_users(str(users), 1200, num_items=NUM_ITEMS)
    out = tmp_path / "out"
    done: dict = {}

    def job():
        try:  # small blocks (128 rows) and files (128 rows): parts appear while the job runs
            done["result"] = _run(users, out, ServiceSpec(tiny_num_items=NUM_ITEMS), k=5, batch_size=4,
                                  rows_per_file=128)
        except BaseException as exc:
            done["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    victim, deadline = None, time.monotonic() + 240
    while victim is None and thread.is_alive() and time.monotonic() < deadline:
        staged = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) if ".staging-" in r
                  for f in fs if f.startswith("part-")]
        pids = _scorer_pids()
        if staged and pids:
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.05)
    killed_mid_way = victim is not None and thread.is_alive()
    after = set()
    while thread.is_alive() and time.monotonic() < deadline + 120:
        after |= _scorer_pids()
        time.sleep(0.2)
    thread.join(timeout=1)
    assert "error" not in done, done.get("error")
    assert killed_mid_way, "the job ended before its actor could be killed"
    assert after - {victim}, "no replacement actor was seen"
    counts = done["result"].summary["counts"]
    assert (counts["input"], counts["scored"], counts["rejected"]) == (n, n, 0)
    ids = pq.read_table(out / "scores", columns=["user_id"]).column("user_id").to_pylist()
    assert len(ids) == len(set(ids)) == n  # nothing missing, nothing twice
    assert set(ids) == {f"u{i}" for i in range(n)}
