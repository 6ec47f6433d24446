"""Process migration, the paper's three steps (create, transform, delete) as a protocol between
a source and a destination machine, over typed `Source`/`Peer`/`Destination`/`Transport`
protocols: the options, the process image that travels, the record of what a migration did,
the transports that move page blocks (memory to memory, or files on a shared plate) and the
fault plan that tests the rollback. May import `abi/`, `resources/`, `errors` and `logs`; never
the kernel, an engine or Ray (the kernel and the Ray layer implement its protocols).
"""

from tender_ray.migration.options import MigrationOptions, Resources, Transfer
from tender_ray.migration.record import MigrationRecord

__all__ = ["MigrationOptions", "MigrationRecord", "Resources", "Transfer"]
