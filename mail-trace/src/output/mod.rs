//! Outputs: the session tail, JSON lines, pcapng.
