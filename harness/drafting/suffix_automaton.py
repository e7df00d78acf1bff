"""A suffix automaton over token ids, extended online (Blumer et al.), and a matcher that follows a stream.

The automaton of a text accepts exactly its substrings. Each state keeps ``length`` (its longest string),
``link`` (suffix link) and ``first_end`` (the end position of its strings' first occurrence), so a state
reached by a match names where the matched text first occurred, and what followed it there is a draft
(SAM-Decoding). Adding a token costs amortised constant time, and so does moving the matcher by one token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class SuffixAutomaton:
    def __init__(self, tokens: Iterable[int] = (), boundary: int | None = None) -> None:
        self.boundary = boundary  # a separator between documents: continuations stop before it
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.first_end: list[int] = [-1]
        self.text: list[int] = []
        self.last = 0
        for t in tokens:
            self.extend(t)

    def __len__(self) -> int:
        return len(self.next)

    def _new_state(self, length: int, link: int, first_end: int, nxt: dict[int, int]) -> int:
        self.next.append(nxt)
        self.link.append(link)
        self.length.append(length)
        self.first_end.append(first_end)
        return len(self.next) - 1

    def extend(self, token: int) -> None:
        """Append one token to the text."""
        self.text.append(token)
        pos = len(self.text) - 1
        cur = self._new_state(self.length[self.last] + 1, 0, pos, {})
        p = self.last
        while p != -1 and token not in self.next[p]:
            self.next[p][token] = cur
            p = self.link[p]
        if p != -1:
            q = self.next[p][token]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:
                clone = self._new_state(self.length[p] + 1, self.link[q], self.first_end[q], dict(self.next[q]))
                while p != -1 and self.next[p].get(token) == q:
                    self.next[p][token] = clone
                    p = self.link[p]
                self.link[q] = clone
                self.link[cur] = clone
        self.last = cur

    def continuation(self, state: int, n: int) -> list[int]:
        """At most ``n`` tokens that followed the first occurrence of ``state``'s strings."""
        start = self.first_end[state] + 1
        out = self.text[start : start + n]
        if self.boundary is not None and self.boundary in out:
            out = out[: out.index(self.boundary)]
        return out


class Matcher:
    """The longest suffix of a token stream that occurs in an automaton's text, kept as (state, length).

    For an automaton built over the stream itself (prompt + generation), :meth:`feed` each token *before*
    extending the automaton with it, and draft after: the match is then against strictly earlier text, so
    its first occurrence is always followed by at least one token.
    """

    def __init__(self, sam: SuffixAutomaton) -> None:
        self.sam = sam
        self.state = 0
        self.length = 0

    def reset(self) -> None:
        self.state, self.length = 0, 0

    def feed(self, token: int) -> None:
        sam = self.sam
        s, n = self.state, self.length
        while s != 0 and sam.length[sam.link[s]] >= n:  # the automaton grew since: a clone now holds the match
            s = sam.link[s]
        while s != 0 and token not in sam.next[s]:
            s = sam.link[s]
            n = sam.length[s]
        if token in sam.next[s]:
            s, n = sam.next[s][token], n + 1
        else:
            s, n = 0, 0
        self.state, self.length = s, n

    def feed_all(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.feed(t)

    def draft(self, n: int) -> list[int]:
        """Up to ``n`` tokens after the match's first occurrence, walking to shorter matches (suffix links)
        while the first occurrence is followed by fewer than ``n`` tokens."""
        if self.length == 0:
            return []
        s = self.state
        best = self.sam.continuation(s, n)
        while len(best) < n and self.sam.link[s] > 0:
            s = self.sam.link[s]
            cont = self.sam.continuation(s, n)
            if len(cont) > len(best):
                best = cont
        return best
