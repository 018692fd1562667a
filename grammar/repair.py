"""Re-Pair grammar induction (Larsson & Moffat, 2000) over a corpus of programs.

Re-Pair repeatedly replaces the most frequent adjacent pair of symbols by a new nonterminal
until no pair occurs twice. The result is a straight-line grammar: rules `R -> a b` and, per
program, a sequence of terminals and nonterminals that expands back to it exactly.

Design decisions
- Program boundaries are separator symbols in one linked sequence: no pair spans two programs.
- Pairs inside runs are counted without overlap: a run of r equal symbols holds floor(r/2)
  pairs (`a a a a` has two `a a`, `a a a` has one). The count of an `(x, x)` pair is kept
  exact by adjusting it with the run-length change whenever a symbol joins or leaves a run;
  occurrences are replaced left to right, so the greedy left-aligned parse is the one counted.
  (A byte-pair-encoding trainer counts overlapping pairs: a different algorithm.)
- Linear-time bookkeeping, as in the paper: a doubly linked list over positions, occurrence
  lists per pair, and a priority queue bucketed by frequency. The highest non-empty bucket
  only moves down (a new pair cannot occur more often than the pair whose replacement made
  it), so the scan over buckets is linear. Each bucket is a heap so that ties are broken
  deterministically by the smallest pair (a, b): original codes before nonterminals, then
  by code. Entries are invalidated lazily (a popped pair whose count changed is skipped), so
  the heaps add a log factor on bucket operations only.
- Occurrence lists are lazy too: positions are appended when a pair is created and checked
  when used; a pair's list is sorted once, when that pair is replaced.
- Only pairs that can ever be chosen are tracked: a pair that occurs once can only gain
  occurrences if it contains the nonterminal being created, so pairs seen once at the start,
  and pairs of each new nonterminal left at one occurrence after its round, are dropped.
- Runs are walked to measure their length, so a run of r equal symbols costs O(r^2) when it is
  consumed; program lengths bound runs in practice.
- Symbols are ints: codes `0..K-1`, nonterminal `i` is `K + i`. Pairs are packed into one
  int `(a << 32) | b` (cheaper to hash than tuples and ordered like them).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from grammar.corpus import Corpus

_SEP, _DEAD, _HOLE = -1, -2, -3
_SHIFT = 32
_LOW = (1 << _SHIFT) - 1


@dataclass
class Grammar:
    """A Re-Pair grammar: `rules[i] = (a, b)` defines symbol `k + i`; `sequences` per program."""

    k: int
    rules: list[tuple[int, int]]
    rule_counts: list[int]  # occurrences replaced when the rule was created
    sequences: list[list[int]]
    n_tokens: int

    @property
    def n_rules(self) -> int:
        return len(self.rules)

    @property
    def final_length(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def size(self) -> int:
        """Grammar size: symbols in the final sequences plus two per rule."""
        return self.final_length + 2 * self.n_rules

    @property
    def compression_ratio(self) -> float:
        return self.n_tokens / self.size if self.size else float("nan")

    def name(self, symbol: int) -> str:
        return str(symbol) if symbol < self.k else f"R{symbol - self.k}"

    def expand(self, symbol: int) -> list[int]:
        out: list[int] = []
        stack = [symbol]
        while stack:
            sym = stack.pop()
            if sym < self.k:
                out.append(sym)
            else:
                a, b = self.rules[sym - self.k]
                stack.append(b)
                stack.append(a)
        return out

    def expand_sequence(self, sequence: list[int]) -> list[int]:
        return [code for sym in sequence for code in self.expand(sym)]

    def expansion_texts(self) -> list[str]:
        """Each rule's expansion as space-separated codes (built bottom-up, once per call)."""
        texts: list[str] = []
        for a, b in self.rules:
            left = str(a) if a < self.k else texts[a - self.k]
            right = str(b) if b < self.k else texts[b - self.k]
            texts.append(f"{left} {right}")
        return texts

    def expansion_lengths(self) -> np.ndarray:
        """Number of codes each rule expands to."""
        lengths = np.zeros(self.n_rules, dtype=np.int64)
        for i, (a, b) in enumerate(self.rules):
            la = 1 if a < self.k else lengths[a - self.k]
            lb = 1 if b < self.k else lengths[b - self.k]
            lengths[i] = la + lb
        return lengths

    def usage(self) -> np.ndarray:
        """Times each rule is used in the derivation of the whole corpus."""
        use = np.zeros(self.n_rules, dtype=np.int64)
        for seq in self.sequences:
            for sym in seq:
                if sym >= self.k:
                    use[sym - self.k] += 1
        # a rule only refers to older rules, so newest-first propagates every use downward
        for i in range(self.n_rules - 1, -1, -1):
            for sym in self.rules[i]:
                if sym >= self.k:
                    use[sym - self.k] += use[i]
        return use

    def rule_lines(self) -> list[str]:
        """`R12 -> 3 R7` one rule a line, with creation count and expansion length."""
        lengths = self.expansion_lengths()
        return [
            f"{self.name(self.k + i)} -> {self.name(a)} {self.name(b)}\t"
            f"# count={self.rule_counts[i]} expands_to={lengths[i]}"
            for i, (a, b) in enumerate(self.rules)
        ]


class _RePair:
    """The mutable state of one Re-Pair run (see the module docstring for the structures)."""

    def __init__(self, corpus: Corpus) -> None:
        self.k = corpus.k
        seq = np.full(corpus.n_tokens + corpus.n_programs + 1, _SEP, dtype=np.int64)
        # program i's codes sit after i+1 separators
        seq[np.arange(corpus.n_tokens) + corpus.program_ids + 1] = corpus.codes
        self.sep_positions = np.flatnonzero(seq == _SEP)
        self.n = seq.size
        self.cnt: dict[int, int] = {}
        self.occ: dict[int, list[int]] = {}
        self.buckets: dict[int, list[int]] = {}
        self._initial_counts(seq)
        self.s: list[int] = seq.tolist()
        self.nxt: list[int] = list(range(1, self.n + 1))
        self.prv: list[int] = list(range(-1, self.n - 1))
        self.new_pairs: list[int] = []
        self.current = -1  # the nonterminal being created

    # ---------------------------------------------------------------- initial counts (NumPy)

    def _initial_counts(self, seq: np.ndarray) -> None:
        a, b = seq[:-1], seq[1:]
        valid = (a >= 0) & (b >= 0)
        pos = np.flatnonzero(valid)
        keys = (a[pos] << _SHIFT) | b[pos]
        counts: dict[int, int] = {}
        distinct = a[pos] != b[pos]
        uk, uc = np.unique(keys[distinct], return_counts=True)
        counts.update(zip(uk.tolist(), uc.tolist(), strict=True))
        # equal pairs: a maximal run of m adjacent equal slots (r = m + 1 symbols) holds (m+1)//2
        eq = pos[~distinct]
        if eq.size:
            starts = np.ones(eq.size, dtype=bool)
            starts[1:] = eq[1:] != eq[:-1] + 1
            run_start = np.flatnonzero(starts)
            m = np.diff(np.append(run_start, eq.size))
            run_keys = (seq[eq[run_start]] << _SHIFT) | seq[eq[run_start]]
            ek, inv = np.unique(run_keys, return_inverse=True)
            ec = np.bincount(inv, weights=(m + 1) // 2).astype(np.int64)
            counts.update(zip(ek.tolist(), ec.tolist(), strict=True))
        tracked = np.array(sorted(k for k, c in counts.items() if c >= 2), dtype=np.int64)
        self.cnt = {k: counts[k] for k in tracked.tolist()}
        if tracked.size == 0:
            return
        where = np.searchsorted(tracked, keys)
        where = np.minimum(where, tracked.size - 1)
        hit = tracked[where] == keys
        order = np.argsort(keys[hit], kind="stable")
        hk, hp = keys[hit][order], pos[hit][order]
        cut = np.flatnonzero(np.diff(hk)) + 1
        for key, plist in zip(hk[np.append(0, cut)].tolist(), np.split(hp, cut), strict=True):
            self.occ[key] = plist.tolist()
        for key, c in self.cnt.items():
            self._push(key, c)

    # ---------------------------------------------------------------- pair bookkeeping

    def _push(self, key: int, c: int) -> None:
        if c >= 2:
            bucket = self.buckets.get(c)
            if bucket is None:
                self.buckets[c] = [key]
            else:
                heapq.heappush(bucket, key)

    def _add(self, key: int, delta: int) -> None:
        c = self.cnt.get(key)
        if c is None:
            return
        c += delta
        if c < 2 and (key >> _SHIFT) != self.current and (key & _LOW) != self.current:
            # cannot gain occurrences any more (module docstring): stop tracking
            del self.cnt[key]
            self.occ.pop(key, None)
            return
        self.cnt[key] = c
        self._push(key, c)

    def _new(self, key: int, delta: int, position: int) -> None:
        """An occurrence of a pair with the current nonterminal appears at `position`."""
        if key not in self.cnt:
            self.cnt[key] = 0
            self.occ[key] = []
            self.new_pairs.append(key)
        self.occ[key].append(position)
        if delta:
            self.cnt[key] += delta
            self._push(key, self.cnt[key])

    def _run(self, i: int, x: int) -> tuple[int, int]:
        """Lengths of the runs of `x` immediately left and right of position `i`."""
        s, prv, nxt = self.s, self.prv, self.nxt
        left, j = 0, prv[i]
        while j >= 0 and s[j] == x:
            left, j = left + 1, prv[j]
        right, j = 0, nxt[i]
        while j < self.n and s[j] == x:
            right, j = right + 1, nxt[j]
        return left, right

    def _detach(self, i: int) -> None:
        """The symbol at `i` is about to disappear: remove the pairs it takes part in."""
        s = self.s
        x = s[i]
        y, z = s[self.prv[i]], s[self.nxt[i]]
        if y >= 0 and y != x:
            self._add((y << _SHIFT) | x, -1)
        if z >= 0 and z != x:
            self._add((x << _SHIFT) | z, -1)
        if y == x or z == x:
            key = (x << _SHIFT) | x
            if key in self.cnt:
                left, right = self._run(i, x)
                self._add(key, left // 2 + right // 2 - (left + 1 + right) // 2)
        s[i] = _HOLE

    def _attach(self, i: int, r: int) -> None:
        """Symbol `r` (the current nonterminal) is placed at the hole `i`."""
        s = self.s
        s[i] = r
        left_pos = self.prv[i]
        y, z = s[left_pos], s[self.nxt[i]]
        if y >= 0 and y != r:
            self._new((y << _SHIFT) | r, 1, left_pos)
        if z >= 0 and z != r:
            self._new((r << _SHIFT) | z, 1, i)
        if y == r or z == r:
            left, right = self._run(i, r)
            delta = (left + 1 + right) // 2 - left // 2 - right // 2
            key = (r << _SHIFT) | r
            if y == r:
                self._new(key, delta, left_pos)
                delta = 0
            if z == r:
                self._new(key, delta, i)

    # ---------------------------------------------------------------- main loop

    def _pop_max(self, top: int) -> tuple[int, int]:
        """The most frequent pair (smallest key among ties) and its count; (-1, 0) if none."""
        while top >= 2:
            bucket = self.buckets.get(top)
            while bucket:
                key = heapq.heappop(bucket)
                if self.cnt.get(key) == top:
                    return key, top
            self.buckets.pop(top, None)
            top -= 1
        return -1, 0

    def _replace(self, key: int, r: int) -> int:
        a, b = key >> _SHIFT, key & _LOW
        s, nxt, prv = self.s, self.nxt, self.prv
        positions = sorted(set(self.occ.pop(key, [])))
        used = 0
        for i in positions:
            if s[i] != a:
                continue
            j = nxt[i]
            if s[j] != b:
                continue
            self._detach(i)
            self._detach(j)
            after = nxt[j]
            nxt[i] = after
            if after < self.n:
                prv[after] = i
            s[j] = _DEAD
            self._attach(i, r)
            used += 1
        self.cnt.pop(key, None)
        return used

    def run(
        self, max_rules: int | None, progress: Callable[[int], None] | None
    ) -> tuple[list, list]:
        rules: list[tuple[int, int]] = []
        counts: list[int] = []
        top = max(self.cnt.values(), default=0)
        while max_rules is None or len(rules) < max_rules:
            key, top = self._pop_max(top)
            if key < 0:
                break
            r = self.k + len(rules)
            self.current = r
            self.new_pairs = []
            used = self._replace(key, r)
            rules.append((key >> _SHIFT, key & _LOW))
            counts.append(used)
            self.current = -1
            for pair in self.new_pairs:  # pairs of r seen once can never be chosen
                c = self.cnt.get(pair)
                if c is not None and c < 2:
                    del self.cnt[pair]
                    self.occ.pop(pair, None)
            if progress is not None:
                progress(used)
        return rules, counts

    def sequences(self) -> list[list[int]]:
        out = []
        s, nxt = self.s, self.nxt
        for start in self.sep_positions[:-1].tolist():
            seq, j = [], nxt[start]
            while s[j] != _SEP:
                seq.append(s[j])
                j = nxt[j]
            out.append(seq)
        return out


def repair(
    corpus: Corpus,
    max_rules: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Grammar:
    """Induce a Re-Pair grammar; `progress(n)` is told how many symbols each rule removed."""
    state = _RePair(corpus)
    rules, counts = state.run(max_rules, progress)
    return Grammar(corpus.k, rules, counts, state.sequences(), corpus.n_tokens)
