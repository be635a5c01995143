"""Text-video retrieval: metrics now; FAISS indexing, search and finetuning build on them."""
