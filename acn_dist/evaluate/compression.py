"""Compression: test-set code length and the ordered dataset bound, in nats per image.

Code length of x with prior p: KL(q(z|x) || p) + E_q[-log r(x|z)] (an S-sample KL estimate, one
sample for the reconstruction). For ACN the test prior is p(z|ĉ) with ĉ drawn uniformly among the
K nearest *training* codes; for the ordered bound the train split is sent in an order in which
each datum is coded with the prior conditioned on the datum sent just before it (each datum
serves as the neighbour of exactly one other: the unique-neighbour constraint), the first with
the unconditional prior p(z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from acn_dist.model.acn import ACN


@dataclass
class CodeLengths:
    kl: np.ndarray  # [N] nats
    reconstruction: np.ndarray  # [N] nats

    @property
    def total(self) -> np.ndarray:
        return self.kl + self.reconstruction


@torch.no_grad()
def code_lengths(acn: ACN, x: torch.Tensor, neighbour_codes: torch.Tensor | None, samples: int,
                 generator: torch.Generator, batch_size: int = 500, unconditional: np.ndarray | None = None
                 ) -> CodeLengths:
    """Per-datum KL and reconstruction. `neighbour_codes[i]` conditions datum i's prior; rows where
    `unconditional[i]` is True use the prior from scratch p(z) instead. (The VAE's prior ignores
    both: its neighbour codes may be None.)"""
    kl, reconstruction = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        posterior = acn.posterior(xb)
        neighbours = neighbour_codes[start:start + batch_size] if neighbour_codes is not None else None
        kl_b = acn.kl_estimate(posterior, neighbours, samples, generator)
        if unconditional is not None and unconditional[start:start + batch_size].any():
            rows = torch.from_numpy(unconditional[start:start + batch_size])
            kl_b[rows] = acn.kl_from_scratch(posterior[rows], samples, generator)
        z = posterior.sample(generator)
        kl.append(kl_b.numpy())
        reconstruction.append(acn.likelihood.nats(acn.decoder(z, xb), xb).numpy())
    return CodeLengths(np.concatenate(kl), np.concatenate(reconstruction))


def pick_training_neighbours(train_codes: np.ndarray, queries: np.ndarray, k: int, seed: int) -> np.ndarray:
    """For each query, one of its K nearest training codes, uniformly: indices into train_codes."""
    _, ids = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(train_codes, np.float32), k)
    pick = np.random.default_rng(seed).integers(0, k, len(queries))
    return ids[np.arange(len(queries)), pick]


def greedy_ordering(codes: np.ndarray, graph_k: int = 50, seed: int = 0) -> tuple[np.ndarray, int]:
    """An order of all rows: start anywhere, then repeatedly go to the nearest unsent row among the
    current row's `graph_k` nearest neighbours (or, when all of those are sent, the nearest unsent
    row overall: a "jump"). Returns (order, jumps); every row appears exactly once."""
    size = len(codes)
    codes = np.ascontiguousarray(codes, np.float32)
    k = min(graph_k + 1, size)
    _, graph = faiss.knn(codes, codes, k)
    sent = np.zeros(size, dtype=bool)
    current = int(np.random.default_rng(seed).integers(size))
    order = np.empty(size, dtype=np.int64)
    unsent_pool = np.arange(size)
    jumps = 0
    for position in range(size):
        order[position] = current
        sent[current] = True
        if position == size - 1:
            break
        candidates = graph[current]
        free = candidates[(candidates >= 0) & ~sent[np.maximum(candidates, 0)]]
        if len(free):
            current = int(free[0])
            continue
        jumps += 1
        unsent_pool = unsent_pool[~sent[unsent_pool]]
        distances = ((codes[unsent_pool] - codes[current]) ** 2).sum(1)
        current = int(unsent_pool[np.argmin(distances)])
    return order, jumps


def test_set_compression(acn: ACN, train_codes: np.ndarray, test_x: torch.Tensor, test_codes: np.ndarray, k: int,
                     samples: int, seed: int, batch_size: int = 500) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    neighbours = None
    if acn.conditional:
        picked = pick_training_neighbours(train_codes, test_codes, k, seed)
        neighbours = torch.from_numpy(train_codes[picked])
    lengths = code_lengths(acn, test_x, neighbours, samples, generator, batch_size)
    return summarise("test", lengths, pixels=test_x[0].numel())


def ordered_bound(acn: ACN, train_x: torch.Tensor, train_codes: np.ndarray, graph_k: int, samples: int,
                  seed: int, batch_size: int = 500) -> tuple[dict[str, float], np.ndarray]:
    """The dataset bound over an ordering of `train_x`; returns (figures, order)."""
    order, jumps = greedy_ordering(train_codes, graph_k, seed)
    generator = torch.Generator().manual_seed(seed)
    x = train_x[torch.from_numpy(order)]
    previous = np.concatenate([[order[0]], order[:-1]])  # each datum's conditioning neighbour
    neighbours = torch.from_numpy(train_codes[previous])
    first = np.zeros(len(order), dtype=bool)
    first[0] = True
    lengths = code_lengths(acn, x, neighbours, samples, generator, batch_size, unconditional=first)
    figures = summarise("ordered", lengths, pixels=train_x[0].numel())
    figures["ordered_jumps"] = float(jumps)
    figures["ordered_count"] = float(len(order))
    return figures, order


def summarise(prefix: str, lengths: CodeLengths, pixels: int) -> dict[str, float]:
    total = float(lengths.total.mean())
    return {f"{prefix}_nats_per_image": total, f"{prefix}_kl": float(lengths.kl.mean()),
            f"{prefix}_reconstruction": float(lengths.reconstruction.mean()),
            f"{prefix}_bits_per_dim": total / (pixels * math.log(2))}
