"""Serve a trained model: an OpenAI-compatible HTTP API, a chat page and a terminal chat.

    python -m colossal_hammer.serve --model hf_model          # http://127.0.0.1:8000/

loading   model folder (HF, export, checkpoint step-N) + optional LoRA adapter → model, tokenizer
prompts   chat template (the tokenizer's, else the Llama-2 one SFT data uses), incremental detokenizing
          with stop strings
engine    one model thread; concurrent requests prefilled and decoded together, each with its own KV-cache rows
sampling  one row's next token: penalties, logit_bias, min_tokens, temperature / top_k / top_p, logprobs
fields    every OpenAI request field, honoured or refused (the table the README lists)
protocol  request validation → OpenAI's error JSON naming the field
replies   logprobs in OpenAI's chat and completions shapes
app       FastAPI endpoints (/health, /v1/models, /v1/chat/completions, /v1/completions, / the page)
terminal  the multi-turn terminal chat behind `inference_example.py --chat`
"""
