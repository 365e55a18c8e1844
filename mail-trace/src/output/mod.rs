//! Outputs: the session tail, JSON lines, pcapng.
pub mod pcapng;
