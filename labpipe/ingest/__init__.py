"""Ingest: from a file dropped into the inbox to a registered image with a task on the queue.

- :mod:`~labpipe.ingest.rules`: which files are taken, and the sample id rule;
- :mod:`~labpipe.ingest.stability`: a file is taken only when complete;
- :mod:`~labpipe.ingest.register`: one image per content hash, duplicates and retries;
- :mod:`~labpipe.ingest.moves`: originals to the archive or to quarantine with a reason file;
- :mod:`~labpipe.ingest.lifecycle`: image states, claims, heartbeats and the sweeper's queries;
- :mod:`~labpipe.ingest.watcher`: the loop that ties them together.
"""

from labpipe.ingest.lifecycle import AttemptCounter, claim_image, finish_move, lock_image, stale_images
from labpipe.ingest.moves import destination_for, move_original, write_reason_file
from labpipe.ingest.register import Outcome, Registration, register_file, register_unreadable
from labpipe.ingest.rules import IngestRules, is_ignored
from labpipe.ingest.stability import Completeness, StabilityTracker, Verdict

__all__ = [
    "AttemptCounter",
    "Completeness",
    "IngestRules",
    "Outcome",
    "Registration",
    "StabilityTracker",
    "Verdict",
    "claim_image",
    "destination_for",
    "finish_move",
    "is_ignored",
    "lock_image",
    "move_original",
    "register_file",
    "register_unreadable",
    "stale_images",
    "write_reason_file",
]
