"""A task queue for watcher tests: it records what it is sent and delivers nothing."""

from __future__ import annotations


class RecordingBroker:
    """Records the image ids it is sent (``sent``) and, with each, whether it was a takeover."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.calls: list[tuple[int, bool]] = []
        """(image id, takeover) for every task sent."""

    def send(self, image_id: int, *, takeover: bool = False, content_hash: str | None = None) -> None:
        self.sent.append(image_id)
        self.calls.append((image_id, takeover))

    def depth(self) -> int | None:
        return None

    def housekeeping(self) -> None:
        pass
