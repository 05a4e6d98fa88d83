"""Deleting one's account (DELETE /user): a resumable, idempotent saga (service.py)."""
