"""Glimpse index service: durable Faiss search over vectors, with an id to path store."""
