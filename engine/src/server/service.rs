//! The `tessera.v1.Tessera` service: request validation, admission,
//! deadlines, encoding through the [`Batcher`](super::batcher::Batcher), ranking on the search pool,
//! updates through the index's atomic writer, and one log line and metric
//! sample per call.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use prost::Message;
use tessera_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::server::handlers::admin::*;
use crate::server::handlers::documents::*;
use crate::server::handlers::search::*;
use crate::server::panic::panic_message;
use crate::server::state::*;
use crate::server::status::*;
use crate::server::validate::*;

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    pub(crate) state: Arc<State>,
}

impl Service {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// What the log line of a call says besides method and status.
#[derive(Default, Clone, Copy)]
pub(crate) struct CallInfo {
    pub(crate) queries: usize,
    pub(crate) k: usize,
}

impl Service {
    /// The frame of every call: refusal while loading or draining, size
    /// check, deadline, admission, panic capture, metrics and the log line.
    /// `hard_deadline`: cut the call off at its deadline (reads); updates
    /// handle theirs themselves, since a commit in progress finishes.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        meta: &tonic::metadata::MetadataMap,
        size: usize,
        info: CallInfo,
        hard_deadline: bool,
        f: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Arc<State>, Instant, Instant) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let st = &self.state;
        let result = async {
            // Who may call comes first: nothing about the server's state
            // is said to a caller without a valid key.
            if let Some(keys) = &st.keys {
                keys.check(meta, crate::server::auth::role_for(method))?;
            }
            if st.draining.load(Ordering::Acquire) {
                return Err(Status::unavailable("the server is shutting down"));
            }
            // A change another writer committed is seen before answering.
            st.ready()?.refresh().await?;
            let limit = st.limits.max_message_bytes;
            if size > limit {
                return Err(invalid(
                    "request",
                    format!("message of {size} bytes exceeds the server's --max-message-mb limit of {limit} bytes"),
                ));
            }
            let timeout = client_timeout(meta)
                .map_or(st.limits.default_timeout, |t| t.min(st.limits.max_timeout));
            // End a little before the transport's own timer (tonic's,
            // outside every service layer, which would answer CANCELLED),
            // so the client gets DEADLINE_EXCEEDED from us: a fifth of the
            // deadline, at most 25 ms, enough for a busy runtime to send
            // the answer first.
            let margin = (timeout / 5).min(Duration::from_millis(25));
            let deadline = start + timeout - margin;
            let _ticket = st.admission.enter(deadline).await?;
            let work = std::panic::AssertUnwindSafe(f(st.clone(), deadline, start)).catch_unwind();
            let out = if hard_deadline {
                match tokio::time::timeout_at(deadline.into(), work).await {
                    Ok(r) => r,
                    Err(_) => return Err(Status::deadline_exceeded(format!(
                        "deadline of {} ms passed", timeout.as_millis()
                    ))),
                }
            } else {
                work.await
            };
            match out {
                Ok(r) => r,
                Err(p) => {
                    let msg = panic_message(&*p);
                    tracing::error!(method, panic = %msg, "a handler panicked");
                    Err(Status::internal(format!("internal error: {msg}")))
                }
            }
        }
        .await;
        let secs = start.elapsed().as_secs_f64();
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        st.metrics.finish(method, code, secs);
        match &result {
            Ok(_) => {
                tracing::info!(target: "tessera::request", method, queries = info.queries, k = info.k,
                latency_ms = format!("{:.2}", secs * 1e3), status = ?code)
            }
            Err(s) => {
                tracing::info!(target: "tessera::request", method, queries = info.queries, k = info.k,
                latency_ms = format!("{:.2}", secs * 1e3), status = ?code, message = s.message())
            }
        }
        result.map(Response::new)
    }
}

#[tonic::async_trait]
impl pb::tessera_server::Tessera for Service {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let size = request.get_ref().encoded_len();
        let q = &request.get_ref().queries;
        let info = CallInfo {
            queries: q.len(),
            k: q.iter().map(|q| q.k as usize).max().unwrap_or(0),
        };
        let (meta, _, req) = request.into_parts();
        self.call("Search", &meta, size, info, true, |st, deadline, start| {
            search(st, req, deadline, start)
        })
        .await
    }

    async fn get_documents(
        &self,
        request: Request<pb::GetDocumentsRequest>,
    ) -> Result<Response<pb::GetDocumentsResponse>, Status> {
        let size = request.get_ref().encoded_len();
        let (meta, _, req) = request.into_parts();
        self.call(
            "GetDocuments",
            &meta,
            size,
            CallInfo::default(),
            true,
            |st, _, _| async move { get_documents(st, req) },
        )
        .await
    }

    async fn add_documents(
        &self,
        request: Request<Streaming<pb::AddDocumentsRequest>>,
    ) -> Result<Response<pb::AddDocumentsResponse>, Status> {
        let (meta, _, stream) = request.into_parts();
        self.call(
            "AddDocuments",
            &meta,
            0,
            CallInfo::default(),
            false,
            |st, deadline, _| add_documents(st, stream, deadline),
        )
        .await
    }

    async fn delete_documents(
        &self,
        request: Request<pb::DeleteDocumentsRequest>,
    ) -> Result<Response<pb::DeleteDocumentsResponse>, Status> {
        let size = request.get_ref().encoded_len();
        let (meta, _, req) = request.into_parts();
        self.call(
            "DeleteDocuments",
            &meta,
            size,
            CallInfo::default(),
            false,
            |st, _, _| delete_documents(st, req),
        )
        .await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let (meta, _, _) = request.into_parts();
        self.call(
            "Compact",
            &meta,
            0,
            CallInfo::default(),
            false,
            |st, _, _| compact(st),
        )
        .await
    }

    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let size = request.get_ref().encoded_len();
        let info = CallInfo {
            queries: request.get_ref().texts.len(),
            k: 0,
        };
        let (meta, _, req) = request.into_parts();
        self.call("Prepare", &meta, size, info, true, |st, deadline, _| {
            prepare(st, req, deadline)
        })
        .await
    }

    async fn index_info(
        &self,
        request: Request<pb::IndexInfoRequest>,
    ) -> Result<Response<pb::IndexInfoResponse>, Status> {
        let (meta, _, _) = request.into_parts();
        self.call(
            "IndexInfo",
            &meta,
            0,
            CallInfo::default(),
            true,
            |st, _, _| async move { index_info(st) },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_in_every_unit() {
        let mut m = tonic::metadata::MetadataMap::new();
        for (v, d) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("900u", Duration::from_micros(900)),
            ("7n", Duration::from_nanos(7)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(client_timeout(&m), Some(d), "{v}");
        }
        m.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(client_timeout(&m), None);
        assert_eq!(client_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn packed_vectors_are_checked_for_length_count_and_values() {
        let ok = tessera_proto::pack_vectors(&[0.5, 0.5, 1.0, 0.0], 2);
        assert_eq!(unpack("q", &ok, 2).unwrap().len(), 2);
        let ragged = pb::TokenVectors {
            data: vec![0; 12],
            num_tokens: 1,
        };
        let e = unpack("q", &ragged, 2).unwrap_err();
        assert!(
            e.message().contains("not a multiple of 4 × dim = 8"),
            "{}",
            e.message()
        );
        let miscounted = tessera_proto::pack_vectors(&[0.5, 0.5, 1.0, 0.0], 3);
        assert!(unpack("q", &miscounted, 2)
            .unwrap_err()
            .message()
            .contains("num_tokens"));
        let nan = tessera_proto::pack_vectors(&[0.5, f32::NAN], 1);
        let e = unpack("q", &nan, 2).unwrap_err();
        assert!(e.message().contains("token 0, dim 1"), "{}", e.message());
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
