"""Glimpse index service: durable Faiss search over vectors, with an id to path store."""

import os

# Before Faiss loads OpenMP: idle OpenMP threads sleep instead of spinning. A search server
# calls Faiss from many threads between idle gaps, and spinning workers (the default) stole
# the CPU from the next call: measured 1.49 ms -> 0.20 ms per single search in-process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
