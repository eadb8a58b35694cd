"""The fault-injection suite: each case tries to break one promise of ``qtasks run``."""
