"""Text data: corpora shipped by packages, local files, tokenization and packing."""
