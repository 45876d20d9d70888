#!/usr/bin/env python3
"""Generate from a trained model, streaming to the terminal (Colossal-LLaMA's flags).

    python inference_example.py --model_path hf_model --input_txt "什么是人工智能？" --max_new_tokens 128

The prompt goes through the tokenizer's chat template when the model has one (an SFT model from
prepare_sft_dataset.py's data) unless --chat no; --chat llama2|llama3 forces a built-in template.
Without --input_txt, each line read from standard input is a prompt.
"""

import argparse
import sys

import torch


def str2bool(value) -> bool:
    """`--do_sample`, `--do_sample true` and `--do_sample False` all mean what they say."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_path", required=True, help="HF model folder with its tokenizer (e.g. an export)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--do_sample", type=str2bool, nargs="?", const=True, default=True)
    p.add_argument("--temperature", type=float, default=0.3)
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=None, help="Seed the sampler for reproducible output")
    p.add_argument("--chat", choices=("auto", "no", "llama2", "llama3"), default="auto",
                   help="auto: the tokenizer's chat template if it has one")
    p.add_argument("--input_txt", default=None, help="The prompt; default: read prompts from standard input")
    return p


def render(tokenizer, prompt: str, chat: str) -> str:
    from colossal_hammer.data.sft import BUILTIN_TEMPLATES

    template = {"llama2": BUILTIN_TEMPLATES[2], "llama3": BUILTIN_TEMPLATES[3]}.get(chat)
    if chat == "no" or (chat == "auto" and not tokenizer.chat_template):
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], chat_template=template,
                                         tokenize=False, add_generation_prompt=True)


def main(argv=None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    args = build_parser().parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, torch_dtype="auto").to(args.device).eval()
    if args.seed is not None:
        torch.manual_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    prompts = [args.input_txt] if args.input_txt is not None else (line.rstrip("\n") for line in sys.stdin)
    for prompt in prompts:
        text = render(tokenizer, prompt, args.chat)
        # a rendered chat template carries its own BOS
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=text == prompt).to(args.device)
        sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) if args.do_sample else {}
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, streamer=streamer,
                           pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **sampling)


if __name__ == "__main__":
    main()
