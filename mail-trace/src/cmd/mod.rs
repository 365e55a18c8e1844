//! Subcommands: each `run` is what `main` calls.
pub mod capture;
pub mod live;
