"""The chaos soak (issue 10): runs under injected faults, checked from outside (``soak.py``)."""
