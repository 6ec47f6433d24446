"""Tender's resources, one module each, and the manager base they share."""
