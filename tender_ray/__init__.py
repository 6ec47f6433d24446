"""tender_ray: Tender's process migration on Ray."""
