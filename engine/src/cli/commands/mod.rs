//! One module per `tessera` subcommand.

pub mod encode;
pub mod encode_corpus;
pub mod eval;
pub mod export;
pub mod index;
pub mod query;
pub mod reduce;
pub mod score;
pub mod search;
pub mod serve;
pub mod shards;
pub mod train;
