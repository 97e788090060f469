"""Files and folders into collections: per-format text extraction, folder walking with .gitignore, allowed-root
checks, content-hash re-ingest with pruning, structure-aware splitters, and a debounced folder watcher."""
