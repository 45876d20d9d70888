"""Quick start: `make demo` (`python -m colossal_hammer.demo`)."""
