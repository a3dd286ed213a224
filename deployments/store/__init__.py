"""The job store (docs/design.md section 10): jobs, batches and request counters, on SQLite or PostgreSQL.

- `database.JobDatabase`: the store's operations, SQL written once for both dialects, each safe to repeat;
- `backend`: the interface of a backend and the store URL (`sqlite:///PATH`, `postgresql://...`);
  `sqlite.SQLiteBackend` (embedded, the default) and `postgres.PostgresBackend` (psycopg 3);
- `schema`: the versioned schema and its migrations, run when a replica starts;
- `deployment.JobStore`: the Serve deployment and its placement rules;
- `client.StoreClient`: the ingress's side: timeouts, retries on another replica, `StoreUnavailable`.
"""

from .database import JobDatabase, iso, now_iso

__all__ = ["JobDatabase", "iso", "now_iso"]
