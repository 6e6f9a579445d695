"""An app module whose import raises (the launcher must show this traceback)."""

raise RuntimeError("boom at import time")
