"""T-SPMO's replay buffer: a few successful completions per prompt, to restart groups from deep prefixes.

After G completions diverge, deep tokens sit on single-completion branches (A = 0). Restarting a group
from a stored success cut at a uniformly random position c makes the new completions branch at depth c,
so credit reaches tokens deep into long answers (multi-digit multiplication).

Per prompt the buffer keeps at most `capacity` distinct successes, oldest evicted first (recent ones come
from a policy closer to the current one). Its state is plain JSON (str keys, int lists) for checkpoints.
"""

from __future__ import annotations

from collections import deque

import torch


class ReplayBuffer:
    """Successful completions per prompt key; `sample_prefix` returns a random cut of one of them.

    capacity: successes kept per prompt; success_threshold: reward >= this counts as a success.
    len(buffer) is the number of stored completions over all prompts.
    """

    def __init__(self, capacity: int = 4, success_threshold: float = 1.0) -> None:
        if capacity < 0:
            raise ValueError(f"ReplayBuffer: capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.success_threshold = success_threshold
        self._store: dict[str, deque[list[int]]] = {}

    def add(self, prompt_key: str, completion_ids: list[int], reward: float | None) -> bool:
        """Store `completion_ids` if it is a non-empty success not already stored; True when stored."""
        if self.capacity == 0 or reward is None or reward < self.success_threshold or not completion_ids:
            return False
        ids = [int(t) for t in completion_ids]
        slot = self._store.setdefault(prompt_key, deque(maxlen=self.capacity))
        if ids in slot:
            return False  # a duplicate would only skew sampling towards it and waste a slot
        slot.append(ids)  # deque(maxlen) drops the oldest when full
        return True

    def sample_prefix(self, prompt_key: str, generator: torch.Generator | None = None) -> list[int]:
        """o[:c] for a uniformly chosen stored success o and a uniform cut c in [0, len(o)); [] when none."""
        slot = self._store.get(prompt_key)
        if not slot:
            return []
        pick = int(torch.randint(len(slot), (1,), generator=generator))
        ids = slot[pick]
        cut = int(torch.randint(len(ids), (1,), generator=generator))
        return list(ids[:cut])

    def completions(self, prompt_key: str) -> list[list[int]]:
        """The stored successes of one prompt, oldest first (copies)."""
        return [list(ids) for ids in self._store.get(prompt_key, ())]

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._store.values())

    def state_dict(self) -> dict:
        """JSON-serialisable state: {"entries": {prompt_key: [token ids, ...] oldest first}}."""
        return {"entries": {key: [list(ids) for ids in slot] for key, slot in self._store.items() if slot}}

    def load_state_dict(self, state: dict) -> None:
        """Replace the contents with `state`; each prompt keeps its newest `capacity` successes."""
        self._store = {}
        for key, entries in state.get("entries", {}).items():
            slot: deque[list[int]] = deque(maxlen=self.capacity)
            for ids in entries:
                slot.append([int(t) for t in ids])
            if slot:
                self._store[str(key)] = slot
