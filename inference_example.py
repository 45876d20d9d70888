#!/usr/bin/env python3
"""Generate from a trained model, streaming to the terminal (Colossal-LLaMA's flags).

    python inference_example.py --model_path hf_model --input_txt "什么是人工智能？" --max_new_tokens 128

    python inference_example.py --model_path hf_model --chat          # multi-turn chat in the terminal

The prompt goes through the tokenizer's chat template when the model has one (an SFT checkpoint
carries the template its data was prepared with as `chat_template` in tokenizer_config.json) unless
--chat_template no; --chat_template llama2|llama3 forces a built-in template (`--chat TEMPLATE`, the
older spelling, still works). One line on standard error says which. --temperature 0 means greedy
decoding (as in OpenAI's API). Without --input_txt, each line read from standard input is a prompt.

--chat alone starts a multi-turn conversation (colossal_hammer.serve.terminal, the server's engine and
template: the tokenizer's, else the built-in Llama-2 one): /reset, /exit, Ctrl-C stops a reply.
"""

import argparse
import sys

from colossal_hammer.errors import InputError, check_device, check_positive, require_model, run_cli


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


TEMPLATES = ("auto", "no", "llama2", "llama3")


class ChatFlag(argparse.Action):
    """`--chat` alone: the multi-turn terminal chat; `--chat TEMPLATE` (older spelling): --chat_template."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value is None:
            namespace.chat = True
        elif value in TEMPLATES:
            namespace.chat_template = value
        else:
            parser.error(f"argument --chat: invalid template {value!r} (choose from {', '.join(TEMPLATES)}, "
                         f"or give --chat alone for a multi-turn chat)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_path", required=True, help="HF model folder with its tokenizer (e.g. an export)")
    p.add_argument("--device", default=None, help="Default: cuda if available, else cpu")
    p.add_argument("--max_new_tokens", type=int, default=512, help="At least 1")
    p.add_argument("--do_sample", type=str2bool, nargs="?", const=True, default=True,
                   help="Sample (true) or decode greedily (false)")
    p.add_argument("--temperature", type=float, default=0.3, help="0 means greedy decoding; must not be negative")
    p.add_argument("--top_k", type=int, default=50, help="0 keeps every token")
    p.add_argument("--top_p", type=float, default=0.95, help="In (0, 1]")
    p.add_argument("--seed", type=int, default=None, help="Seed the sampler for reproducible output")
    p.add_argument("--chat", nargs="?", action=ChatFlag, default=False, metavar="TEMPLATE",
                   help="Alone: a multi-turn chat in the terminal (/reset, /exit; Ctrl-C stops a reply). "
                        "With a template name: the same as --chat_template")
    p.add_argument("--chat_template", choices=TEMPLATES, default="auto",
                   help="auto: the tokenizer's chat template if it has one (in --chat: else the built-in llama2)")
    p.add_argument("--input_txt", default=None, help="The prompt; default: read prompts from standard input")
    return p


def check_args(args) -> None:
    require_model(args.model_path, "--model_path")
    check_positive(args.max_new_tokens, "--max_new_tokens")
    check_positive(args.temperature, "--temperature", allow_zero=True)
    check_positive(args.top_k, "--top_k", allow_zero=True)
    if not 0 < args.top_p <= 1:
        raise InputError(f"--top_p {args.top_p}: must be in (0, 1]")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(args.device)


def chat_mode(tokenizer, chat: str) -> str:
    """The one line that says how prompts are wrapped."""
    if chat in ("llama2", "llama3"):
        return f"chat: the built-in {chat} template (--chat_template {chat})"
    if chat == "no":
        return "chat: none, prompts go in as written (--chat_template no)"
    if tokenizer.chat_template:
        return "chat: the tokenizer's chat_template (tokenizer_config.json; --chat_template no sends raw prompts)"
    return "chat: none, the tokenizer has no chat_template (--chat_template llama2|llama3 applies a built-in one)"


def render(tokenizer, prompt: str, chat: str) -> str:
    from colossal_hammer.data.sft import BUILTIN_TEMPLATES

    template = {"llama2": BUILTIN_TEMPLATES[2], "llama3": BUILTIN_TEMPLATES[3]}.get(chat)
    if chat == "no" or (chat == "auto" and not tokenizer.chat_template):
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], chat_template=template,
                                         tokenize=False, add_generation_prompt=True)


def pad_id(tokenizer) -> int:
    # pad id 0 is a real id (`pad or eos` would take it for missing)
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def terminal_chat(args) -> None:
    from colossal_hammer.serve.terminal import ChatConfig, chat

    if args.input_txt is not None:
        raise InputError("--input_txt: not with --chat, which reads its messages from the terminal")
    greedy = not args.do_sample or args.temperature == 0
    chat(ChatConfig(model_path=args.model_path, device=args.device,
                    template=None if args.chat_template == "auto" else args.chat_template,
                    max_new_tokens=args.max_new_tokens, temperature=0.0 if greedy else args.temperature,
                    top_p=args.top_p, top_k=args.top_k, seed=args.seed))


def generate(args) -> None:
    check_args(args)
    if args.chat:
        return terminal_chat(args)
    import torch  # after the checks: a mistyped path is reported before torch loads (seconds)
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_path)
        model = AutoModelForCausalLM.from_pretrained(args.model_path, torch_dtype="auto").to(args.device).eval()
    except (OSError, ValueError) as e:
        raise InputError(f"--model_path {args.model_path}: does not load: {str(e).strip().splitlines()[0][:200]}") \
            from None
    print(chat_mode(tokenizer, args.chat_template), file=sys.stderr, flush=True)
    sample = args.do_sample and args.temperature > 0  # temperature 0 is greedy, as users expect
    if args.seed is not None:
        torch.manual_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    prompts = [args.input_txt] if args.input_txt is not None else (line.rstrip("\n") for line in sys.stdin)
    for prompt in prompts:
        text = render(tokenizer, prompt, args.chat_template)
        # a rendered chat template carries its own BOS
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=text == prompt).to(args.device)
        sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) if sample else {}
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=sample, streamer=streamer,
                           pad_token_id=pad_id(tokenizer), **sampling)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(lambda: generate(args))


if __name__ == "__main__":
    main()
