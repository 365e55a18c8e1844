//! The subcommands: each `run` is what `main` calls.
pub mod capture;
pub mod engine;
pub mod guard;
pub mod live;
pub mod maillog;
pub mod outfile;
pub mod output;
pub mod privilege;
pub mod replay;
pub mod tail;
pub mod why;
