"""``examples/real_checkpoint.py`` end to end through the real loading path, offline.

A tiny random Llama and a word-level ``PreTrainedTokenizerFast`` are saved into one
directory, as a downloaded Hugging Face checkpoint would be; the example loads them with
``AutoModelForCausalLM``/``AutoTokenizer``, trains, saves, reloads and recommends, and
``python -m l2rec_serving --checkpoint ... --backbone ... --titles ...`` serves the saved
model over HTTP with the same answers.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
from tolerances import REL_TOL

tokenizers = pytest.importorskip("tokenizers")

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENRES = ["jazz", "rock", "folk", "blues", "soul"]
TITLES = [f"{GENRES[i % len(GENRES)]} album number {i}" for i in range(1, 41)]
# Twelve users, each listening to one genre (item i's genre is i % 5), oldest first.
HISTORIES = [[u % 5 + 5 * j for j in range(u % 3 + 1, u % 3 + 6)] for u in range(12)]
SCORE_TOL = 10 * REL_TOL[torch.float32]  # fused vs reference, and across processes
K = 5


def _example():
    spec = importlib.util.spec_from_file_location("real_checkpoint", ROOT / "examples" / "real_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_tiny_checkpoint(path: pathlib.Path, titles: list[str]) -> None:
    """A random 2-layer Llama (hidden 32) and a word-level tokenizer over the titles' and the
    prompt template's words, saved with ``save_pretrained`` like a hub download: Llama-style
    special tokens (BOS added to every text, no pad token)."""
    from l2rec_serving.prompts import DEFAULT_TEMPLATE
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()  # words and punctuation: "items," -> "items", ","
    words = {w for text in [*titles, DEFAULT_TEMPLATE, ";"] for w, _ in split.pre_tokenize_str(text)}
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The example run once: (its result, backbone dir, titles file, checkpoint dir)."""
    root = tmp_path_factory.mktemp("real_checkpoint")
    backbone = root / "tiny-llama"
    save_tiny_checkpoint(backbone, TITLES)
    titles = root / "titles.txt"
    titles.write_text("\n".join(TITLES) + "\n")
    histories = root / "histories.txt"
    histories.write_text("# user histories, oldest first\n" + "\n".join(" ".join(map(str, h))
                                                                         for h in HISTORIES) + "\n")
    ckpt = root / "ckpt"
    result = _example().main(["--backbone", str(backbone), "--items", str(titles), "--out", str(ckpt),
                              "--histories", str(histories), "--steps", "12", "--batch-size", "8",
                              "--max-history", "4", "--k", str(K), "--show", "3", "--device", "cpu",
                              "--quiet"])
    return result, backbone, titles, ckpt


def test_trains_saves_reloads_and_recommends(run):
    result, _, _, ckpt = run
    assert len(result["losses"]) == 12 and torch.isfinite(torch.tensor(result["losses"])).all()
    assert (ckpt / "l2rec_config.json").is_file() and (ckpt / "l2rec_weights.safetensors").is_file()
    assert result["max_score_diff"] <= SCORE_TOL  # the reloaded FusedL2Rec scores as trained
    assert len(result["items"]) == 3
    for history, items, scores in zip(result["histories"], result["items"], result["scores"]):
        assert len(items) == len(set(items)) == K
        assert all(1 <= i <= len(TITLES) for i in items)
        assert not set(items) & set(history)
        assert scores == sorted(scores, reverse=True)
    # The tokenizer came through AutoTokenizer, without a pad token: the example padded with EOS.
    assert result["tokenizer"].pad_token == "</s>"


def test_a_fresh_load_gives_the_same_answers(run):
    """What another process gets from the two directories alone."""
    from l2rec_serving.prompts import TitlePromptBuilder
    from l2rec_serving.service import max_prompt_tokens

    import l2rec_kernels as lk

    result, backbone_dir, _, ckpt = run
    example = _example()
    backbone, tokenizer = example.load_backbone(backbone_dir)
    model = lk.FusedL2Rec.from_pretrained(ckpt, backbone=backbone).eval()
    prompt = TitlePromptBuilder(TITLES, tokenizer, max_prompt_tokens(model))
    histories = result["histories"]
    inputs = example.model_inputs(histories, prompt, model.config.max_history)
    with torch.no_grad():
        exclude = example.whole_history_exclusions(histories)
        scores, items = model.recommend(**inputs, k=K, exclude_ids=exclude)
    assert items.tolist() == result["items"]
    torch.testing.assert_close(scores, torch.tensor(result["scores"]), rtol=SCORE_TOL, atol=SCORE_TOL)


def test_histories_file_and_synthetic_users(tmp_path):
    example = _example()
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\n3 41\n")
    with pytest.raises(ValueError, match=r"41 is out of range 1\.\.40"):
        example.read_histories(bad, 40)
    ok = tmp_path / "ok.txt"
    ok.write_text("\n# comment\n5\n1 2 3\n")
    assert example.read_histories(ok, 40) == [[1, 2, 3]]  # a one-item user gives no example
    users = example.synthetic_histories(40, num_users=50, length=6)
    assert len(users) == 50 and all(len(u) == 6 and all(1 <= i <= 40 for i in u) for u in users)
    with pytest.raises(SystemExit):
        example.parse_args(["--backbone", "d", "--items", "t", "--out", "o", "--steps", "0"])


def test_served_over_http(run, free_loopback_port):
    """``python -m l2rec_serving --checkpoint CKPT --backbone DIR --titles titles.txt`` on a
    free loopback port: one /recommend in the documented format, the same answer."""
    pytest.importorskip("ray.serve", reason="the serve extra (ray[serve]) is not installed")
    httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")
    from l2rec_serving.launch import ServerProcess

    result, backbone, titles, ckpt = run
    history = result["histories"][0]
    args = ["--checkpoint", str(ckpt), "--backbone", str(backbone), "--titles", str(titles),
            "--device", "cpu"]
    with ServerProcess(args, port=free_loopback_port(), start_timeout_s=150, stop_timeout_s=30) as server:
        info = httpx.get(server.url + "/healthz", timeout=30).json()
        assert info["num_items"] == len(TITLES) and info["builds_prompts"]
        r = httpx.post(server.url + "/recommend", json={"history": history, "k": K, "exclude_history": True},
                       timeout=60)
        assert r.status_code == 200, r.text
        answer = r.json()
        code = server.stop()
        assert code == 0, f"server exit code {code}; its log ends:\n{server.log_tail(3000)}"
    assert answer["items"] == result["items"][0]
    torch.testing.assert_close(torch.tensor(answer["scores"]), torch.tensor(result["scores"][0]),
                               rtol=SCORE_TOL, atol=SCORE_TOL)
