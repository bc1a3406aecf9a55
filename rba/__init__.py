"""rba: find redundant blocks, replace spans of them with closed-form linear maps, search span sets."""

__version__ = "0.1.0"
