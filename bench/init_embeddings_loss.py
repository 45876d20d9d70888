"""Initial loss on Chinese after vocabulary extension, for each `init_embeddings --init` choice.

A tiny Llama is trained briefly on English with an English-centric tokenizer, the tokenizer is merged
with a donor trained on Chinese (HammerLLM's method), the model is extended under each init, and the
loss on held-out Chinese and English text is measured before any further training. Same tokenizer for
all three, so the losses compare. Prints figures, asserts nothing.

    python bench/init_embeddings_loss.py [--steps 300]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from colossal_hammer.data import corpora  # noqa: E402
from colossal_hammer.demo import base_tokenizer  # noqa: E402
from colossal_hammer.model.init_embeddings import INITS, init_embeddings  # noqa: E402
from colossal_hammer.tokenizer.merge import merge_tokenizer  # noqa: E402


def token_stream(tok, docs, seq):
    ids = [i for d in docs for i in tok(d).input_ids + [tok.eos_token_id]]
    usable = len(ids) // seq * seq
    return torch.tensor(ids[:usable]).view(-1, seq)


@torch.no_grad()
def mean_loss(model, rows, batch=16):
    losses = [model(input_ids=rows[i : i + batch], labels=rows[i : i + batch]).loss.item()
              for i in range(0, len(rows), batch)]
    return sum(losses) / len(losses)


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    torch.manual_seed(0)
    news = corpora.chinese_news()
    english = corpora.english_paragraphs()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sprinkle = [s for ss in news.values() for s in ss[:15]]
        base_tokenizer.build_base_tokenizer(english + sprinkle, str(tmp / "base_tok"), vocab_size=2000)
        tok = AutoTokenizer.from_pretrained(tmp / "base_tok")
        config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
        model = AutoModelForCausalLM.from_config(config)
        rows = token_stream(tok, english[:-300] + sprinkle, 128)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        for step in range(a.steps):
            batch = rows[torch.randint(0, len(rows), (8,))]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        print(f"base model: {a.steps} steps on English, last loss {loss.item():.3f}")
        model.save_pretrained(tmp / "base")
        tok.save_pretrained(tmp / "base")
        train_zh = [s for ss in news.values() for s in ss[:-50]] + corpora.chinese_reviews()[:3000]
        merge_tokenizer(str(tmp / "base"), str(tmp / "merged_tok"), train_zh, donor_vocab_size=10000)
        new_tok = AutoTokenizer.from_pretrained(tmp / "merged_tok")
        held_zh = token_stream(new_tok, [s for ss in news.values() for s in ss[-50:]], 128)
        held_en = token_stream(new_tok, english[-300:], 128)
        print(f"{'--init':16s} {'loss zh':>8s} {'loss en':>8s}")
        for init in INITS:
            torch.manual_seed(0)
            init_embeddings(str(tmp / "base"), str(tmp / "merged_tok"), str(tmp / init), init)
            extended = AutoModelForCausalLM.from_pretrained(tmp / init)
            print(f"{init:16s} {mean_loss(extended, held_zh):8.3f} {mean_loss(extended, held_en):8.3f}", flush=True)


if __name__ == "__main__":
    main()
