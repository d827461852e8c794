"""Deployment: ``delta`` (a tuned task as a small verified artifact: export, load_delta, Delta), ``multitask``
(MultiTaskModel: many tasks on one frozen trunk, the shared prefix run once), ``routing`` (how one forward of
the trunk's own code carries every task's fork), ``serving`` (torch.export of a MultiTaskModel)."""
__all__ = ["delta", "multitask", "routing", "serving"]
