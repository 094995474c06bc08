"""Replay settings shared by the offline and live replays and ``rgbt-eval-bag`` (no heavy imports)."""

#: Synchroniser settings shared with the node's defaults (30 Hz RGB, thermal 150 ms late).
DEFAULT_QUEUE_SIZE = 10
DEFAULT_SLOP = 0.05
#: Detections down to this score are kept for box mAP (the value ``rgbt-eval`` uses).
DEFAULT_SCORE_THRESHOLD = 0.05
