"""The storage layer: transcripts, the registry, the journal that makes acknowledgements durable."""
