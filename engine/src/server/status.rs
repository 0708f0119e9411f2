//! The one mapping from errors to gRPC statuses: field-named
//! `INVALID_ARGUMENT`, index and encoder errors, panics.

use crate::error::EngineError;
use tessera_index::IndexError;
use tonic::Status;

use crate::server::batcher::EncodeError;

pub(crate) fn invalid(field: impl std::fmt::Display, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

/// A response that would pass `--max-response-mb`: the request asked for
/// too much at once.
pub(crate) fn response_too_large(field: &str, limit: usize) -> Status {
    invalid(
        field,
        format!(
            "the answer passes the server's --max-response-mb of {} MiB; ask for fewer \
             documents, hits or fields per call",
            limit >> 20
        ),
    )
}

/// An index error from ranking or updating: the caller's fault or ours.
pub(crate) fn index_status(e: IndexError, what: &str) -> Status {
    match e {
        IndexError::InvalidParameter(_)
        | IndexError::DimMismatch { .. }
        | IndexError::InvalidDocument { .. } => Status::invalid_argument(format!("{what}: {e}")),
        IndexError::Locked { .. } => Status::aborted(format!("{what}: {e}")),
        IndexError::Stopped { deadline: true } => Status::deadline_exceeded(format!("{what}: {e}")),
        IndexError::Stopped { deadline: false } => Status::cancelled(format!("{what}: {e}")),
        IndexError::Corrupt { .. } | IndexError::Checksum { .. } => {
            tracing::error!(error = %e, "{what}: the index is damaged");
            Status::data_loss(format!("{what}: {e}"))
        }
        e => {
            tracing::error!(error = %e, "{what} failed");
            Status::internal(format!("{what}: {e}"))
        }
    }
}

pub(crate) fn encode_status(e: EncodeError) -> Status {
    match e {
        EncodeError::Expired => {
            Status::deadline_exceeded("deadline passed before the query was encoded")
        }
        EncodeError::Closed => Status::unavailable("the encoder is shutting down"),
        EncodeError::Failed(m) => Status::internal(format!("encoding failed: {m}")),
    }
}

/// An engine error from ranking: index errors by [`index_status`], the
/// rest `INTERNAL`.
pub(crate) fn engine_status(e: EngineError, what: &str) -> Status {
    match e {
        EngineError::Index(e) => index_status(e, what),
        e => {
            tracing::error!(error = %e.chain(), "{what} failed");
            Status::internal(format!("{what}: {}", e.chain()))
        }
    }
}
