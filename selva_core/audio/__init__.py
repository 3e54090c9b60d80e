"""Audio front end: log-mel conversion and audio file helpers."""
