"""Usage records: one per request, durable in a local journal before the request is settled, moved into the store
in batches (exactly once), taken over by a surviving replica when their writer dies."""

from mxn.usage.journal import journal_dir
from mxn.usage.records import COLUMNS, record
from mxn.usage.writer import UsageWriter

__all__ = ["COLUMNS", "UsageWriter", "journal_dir", "record"]
