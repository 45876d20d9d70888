#!/usr/bin/env python3
"""Preference-pair jsonl → tokenized, category-binned Arrow for DPO (one row per pair). See --help."""

from colossal_hammer.data.preference import main

if __name__ == "__main__":
    main()
