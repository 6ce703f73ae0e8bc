"""Data into the model: vocabularies, FIM and repo-level formats (DESIGN.md, "Formats that must be exact")."""
