//! One module per `tessera` subcommand.

pub mod encode;
pub mod score;
