"""Defaults shown by the CLI and the nodes (no imports: the node pack reads them at start-up)."""

DEFAULT_LUFS = -23.0  # loudness of the prepared copies (EBU R 128's programme level)
ROUND_TRIP_LSD_DB = 12.0  # round-trip log-spectral distance above which a clip is flagged
