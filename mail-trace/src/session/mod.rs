//! The session engine: flows joined to dissectors, and the session records.
