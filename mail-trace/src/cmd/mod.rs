//! The subcommands, each a `run` over its clap arguments.
pub mod output;
pub mod replay;
