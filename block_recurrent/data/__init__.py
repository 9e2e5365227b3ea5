"""Data: raw corpora (corpus.py), vocabularies (vocab.py), seqio tasks (tasks.py, the only seqio import)
and document-sticky batching (segments.py, pure numpy)."""
