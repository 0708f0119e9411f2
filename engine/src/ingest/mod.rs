//! Getting documents in: dump readers' options, resumable encoding of a
//! dump into an embeddings folder ([`encode_to_dir`]), and index builds from
//! a dump ([`build_from_input`]) or from an embeddings folder
//! ([`build_from_vectors`]), from documents a program holds
//! ([`build_from_documents`]), and appends to an index ([`add_from_input`]).

mod add;
mod build;
mod documents;
mod encode;

pub use add::{add_from_input, Added};
pub use build::{build_from_input, build_from_vectors, share_codec, work_dir, Built};
pub use documents::{build_from_documents, TextDocument};
pub use encode::{encode_to_dir, skipped_note, Input, RecordOptions, Rerun};
