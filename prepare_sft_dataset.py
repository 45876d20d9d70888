#!/usr/bin/env python3
"""Chat jsonl → tokenized, category-binned Arrow for SFT (loss on assistant turns only). See --help."""

from colossal_hammer.data.sft import main

if __name__ == "__main__":
    main()
