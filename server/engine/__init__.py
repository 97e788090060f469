"""The retrieval engine: embedder, chunking, vector store, keyword index, fusion and their coordination."""
