#!/usr/bin/env python3
"""jsonl → tokenized, packed, category-binned Arrow for continual pretraining. See --help."""

from colossal_hammer.data.pretrain import main

if __name__ == "__main__":
    main()
