"""Data: study records, data set sources, splits (and, later, torch datasets and the uint8 cache)."""
