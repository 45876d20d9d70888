"""`python -m colossal_hammer.demo` = the quick start pipeline (see pipeline.py)."""

from .pipeline import main

if __name__ == "__main__":
    main()
