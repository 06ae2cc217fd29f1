"""The text tower replayed as CUDA graphs, for the single queries a search sends.

A text query is a short forward pass of many small kernels: eagerly, ViT-B-32's text tower on
an H200 took 6.8-10.7 ms for one query (docs/encoder.md), most of it the host launching about
two hundred kernels one by one. A CUDA graph records those launches once per padded batch size
and replays them with one call.

Shapes are static in a graph, so each captured size ("bucket": 1, 2, 4, ... up to
``max_batch``) has its own input buffer of token ids and its own output; a batch is copied into
the smallest bucket that holds it, the unused rows keep whatever they held (every row is
computed on its own, so they cannot change the rows that are read back), and only its own rows
are read. Larger batches run eagerly.

Capture happens once, in ``load_encoder``, and only on CUDA. A model
whose text tower cannot be captured, or whose replayed output differs from the eager one on a
probe, runs eagerly, with a warning in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger("glimpse.encoder.text_graphs")

# Replayed and eager output of the same probe must agree this closely (cosine) for the graphs to
# be used. fp16 kernels chosen for a captured shape can differ from eager ones in the last bits.
MIN_PROBE_COSINE = 0.999


def buckets_up_to(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the first power of two >= ``max_batch`` (at most 64)."""
    top = min(max(1, max_batch), 64)
    sizes = [1]
    while sizes[-1] < top:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


@dataclass
class _Slot:
    """One captured batch size: the buffers the graph reads and writes, and how to run it."""

    tokens: torch.Tensor  # (bucket, context) int64 on the device
    features: torch.Tensor  # (bucket, dim) on the device, written by replay
    replay: Callable[[], None]


class TextGraphs:
    """Padded-batch replays of ``encode_text``; ``run`` gives None for batches it cannot hold."""

    def __init__(self, slots: dict[int, _Slot]) -> None:
        self._slots = dict(sorted(slots.items()))

    @property
    def buckets(self) -> tuple[int, ...]:
        return tuple(self._slots)

    def bucket_for(self, n: int) -> int | None:
        for size in self._slots:
            if size >= n:
                return size
        return None

    def run(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Text features (n, dim) of ``tokens`` (n, context), or None when n is too large or
        the context length differs from the captured one. Call from one thread at a time."""
        n = int(tokens.shape[0])
        bucket = self.bucket_for(n)
        if bucket is None or n == 0:
            return None
        slot = self._slots[bucket]
        if tuple(tokens.shape[1:]) != tuple(slot.tokens.shape[1:]):
            return None
        slot.tokens[:n].copy_(tokens, non_blocking=True)
        slot.replay()
        return slot.features[:n]

    @classmethod
    def capture(
        cls,
        encode_text: Callable[[torch.Tensor], torch.Tensor],
        context_length: int,
        device: str,
        buckets: tuple[int, ...],
        warmup: int = 3,
    ) -> TextGraphs:
        """Record one CUDA graph of ``encode_text`` per bucket (raises if CUDA cannot)."""
        slots: dict[int, _Slot] = {}
        with torch.inference_mode():
            for size in buckets:
                tokens = torch.zeros((size, context_length), dtype=torch.long, device=device)
                side = torch.cuda.Stream(device=device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS handles etc.)
                    for _ in range(warmup):
                        encode_text(tokens)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    features = encode_text(tokens)
                slots[size] = _Slot(tokens=tokens, features=features, replay=graph.replay)
        torch.cuda.synchronize(device)
        return cls(slots)

    @classmethod
    def eager_for_tests(
        cls,
        encode_text: Callable[[torch.Tensor], torch.Tensor],
        context_length: int,
        device: str,
        buckets: tuple[int, ...],
    ) -> TextGraphs:
        """The same padded buffers, with "replay" re-running ``encode_text`` on them eagerly.

        Test-only stand-in: CUDA graphs need a GPU, and this project's CI has none. It runs the
        padding, copying and slicing logic of ``run`` with the real model on any device.
        """
        slots: dict[int, _Slot] = {}
        for size in buckets:
            tokens = torch.zeros((size, context_length), dtype=torch.long, device=device)
            with torch.inference_mode():
                features = encode_text(tokens)

            def replay(tokens: torch.Tensor = tokens, features: torch.Tensor = features) -> None:
                with torch.inference_mode():
                    features.copy_(encode_text(tokens))

            slots[size] = _Slot(tokens=tokens, features=features, replay=replay)
        return cls(slots)


def probe_agrees(
    graphs: TextGraphs,
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    probe_tokens: torch.Tensor,
) -> float:
    """The smallest cosine between replayed and eager features of ``probe_tokens``, each row
    also run at every bucket size that holds it (1 row alone, then all rows together)."""
    worst = 1.0
    with torch.inference_mode():
        eager = encode_text(probe_tokens).float()
        for rows in (probe_tokens[:1], probe_tokens):
            replayed = graphs.run(rows)
            if replayed is None:
                continue
            cos = F.cosine_similarity(replayed.float(), eager[: len(rows)], dim=-1)
            worst = min(worst, float(cos.min()))
    return worst


def try_capture(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    probe_tokens: torch.Tensor,
    device: str,
    max_batch: int,
) -> TextGraphs | None:
    """Captured graphs that agree with the eager model on ``probe_tokens``, or None (logged)."""
    context_length = int(probe_tokens.shape[1])
    try:
        graphs = TextGraphs.capture(
            encode_text, context_length, device, buckets_up_to(max_batch)
        )
        worst = probe_agrees(graphs, encode_text, probe_tokens.to(device))
    except Exception:  # noqa: BLE001 - any failure means "run the text tower eagerly"
        logger.warning("CUDA graph capture of the text tower failed; text runs eagerly",
                       exc_info=True)
        return None
    if worst < MIN_PROBE_COSINE:
        logger.warning(
            "CUDA graphs of the text tower disagree with the eager model (cosine %.5f < %.3f); "
            "text runs eagerly", worst, MIN_PROBE_COSINE,
        )
        return None
    logger.info("text tower captured as CUDA graphs for batch sizes %s (probe cosine %.5f)",
                graphs.buckets, worst)
    return graphs
