"""Serve a trained model: an OpenAI-compatible HTTP API, a chat page and a terminal chat.

    python -m colossal_hammer.serve --model hf_model          # http://127.0.0.1:8000/

loading   model folder (HF, export, checkpoint step-N) + optional LoRA adapter → model, tokenizer
prompts   chat template (the tokenizer's, else the Llama-2 one SFT data uses), incremental detokenizing
          with stop strings
engine    one model thread; concurrent requests decoded together, each with its own KV-cache rows
protocol  request validation → OpenAI's error JSON naming the field
app       FastAPI endpoints (/health, /v1/models, /v1/chat/completions, /v1/completions, / the page)
terminal  the multi-turn terminal chat behind `inference_example.py --chat`
"""
