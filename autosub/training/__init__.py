"""Run one selection: ``setup`` (the one setup path: working copy + fresh head, blocks, device, cache, the view
without test), ``trainer`` (fit, evaluate), ``cache`` (the prefix activation cache), ``checkpoint`` (FitState)."""
__all__ = ["cache", "checkpoint", "setup", "trainer"]
