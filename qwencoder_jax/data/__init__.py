"""Data into the model: vocabularies, FIM and repo-level formats (docs/FORMATS.md)."""
