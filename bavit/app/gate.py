"""The order one browser session's events run in: :class:`SessionGate`, a FIFO, re-entrant lock with numbered
tickets; a control event superseded by a newer one skips its work, so the last event wins (no Gradio here)."""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class SessionGate:
    """The order in which one session's events run: a FIFO, re-entrant lock with numbered tickets.

    :meth:`hold` takes the next ticket and waits until every earlier ticket's holder is done, so events run one at a
    time in the order they arrived (a plain ``threading.Lock`` wakes waiters in any order). A ticket can supersede
    *topics*, the outputs its event will set (``"view"``: the page's panels, ``"mode"``: the sliders' visibility);
    :meth:`superseded` tells a holder that a newer event will set a topic too, so its own value would be stale and
    need not be sent. Re-entrant: a nested ``hold`` in the holding thread runs at once under the outer ticket.

    Deep copies and pickles get a fresh gate (a lock cannot be copied, and a copy shares no state to guard), so an
    :class:`ImageSession` can live in ``gr.State``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._issued = 0  # tickets handed out
        self._serving = 0  # the ticket whose turn it is
        self._newest: dict[str, int] = {}  # topic -> newest ticket that supersedes it
        self._abandoned: set[int] = set()  # tickets whose wait was interrupted (skipped when their turn comes)
        self._owner: int | None = None  # thread id of the holder
        self._owner_ticket = -1

    def __deepcopy__(self, memo: dict) -> SessionGate:
        return SessionGate()

    def __reduce__(self) -> tuple[type[SessionGate], tuple[()]]:
        return SessionGate, ()

    def __repr__(self) -> str:
        with self._cond:
            return f"SessionGate(issued={self._issued}, serving={self._serving}, newest={self._newest})"

    @property
    def issued(self) -> int:
        """Tickets handed out so far."""
        with self._cond:
            return self._issued

    def superseded(self, ticket: int, topic: str = "view") -> bool:
        """True when a ticket taken after ``ticket`` supersedes ``topic``."""
        with self._cond:
            return self._newest.get(topic, -1) > ticket

    def _advance(self) -> None:  # with self._cond held
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @contextmanager
    def hold(self, supersede: Iterable[str] = ()) -> Iterator[int]:
        """Take a ticket, wait for its turn and hold the session until the block ends; yields the ticket.

        Args:
            supersede: topics this event sets (control events: ``("view",)``); older holders then see them
                :meth:`superseded`. Events that only change the session (measuring, painting GT) supersede nothing.
        """
        topics = (supersede,) if isinstance(supersede, str) else tuple(supersede)  # before a ticket is issued
        if self._owner == threading.get_ident():  # only this thread can have set it to its own id
            yield self._owner_ticket
            return
        with self._cond:
            ticket = self._issued
            self._issued += 1
            for topic in topics:
                self._newest[topic] = ticket
            try:
                self._cond.wait_for(lambda: self._serving == ticket)
            except BaseException:  # interrupted while waiting: never block the tickets behind this one
                if self._serving == ticket:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise
            self._owner, self._owner_ticket = threading.get_ident(), ticket
        try:
            yield ticket
        finally:
            with self._cond:
                self._owner, self._owner_ticket = None, -1
                self._advance()
