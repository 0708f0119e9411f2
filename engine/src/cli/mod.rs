//! The command-line layer: flags ([`args`] for the groups several commands
//! share) and one module per subcommand ([`commands`]), mirroring
//! `tessera --help`. Shared printing lives in [`print`](mod@print); no command module
//! imports another.

pub mod args;
pub mod commands;
pub mod print;
