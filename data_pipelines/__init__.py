"""Raw sources -> cleaned, deduplicated, decontaminated shards (see README.md and FORMAT.md)."""
