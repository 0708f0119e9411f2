//! A bound on calls being received at once, before their messages are
//! read. Admission control ([`super::admission`]) counts calls once they
//! are decoded; without this bound, any number of clients could each send
//! a message of up to twice `--max-message-mb` and have it buffered and
//! decoded before admission refuses the call. Past the bound a call is
//! answered `RESOURCE_EXHAUSTED` at once and its message is never read (HTTP/2
//! flow control keeps the sender to one window), so the memory held by
//! requests is at most the bound × the largest message.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::server::NamedService;

/// Wraps the gRPC service `S`: at most `permits` calls in it at once.
#[derive(Clone)]
pub struct Receiving<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S> Receiving<S> {
    pub fn new(inner: S, permits: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(permits.max(1))),
        }
    }
}

impl<S: NamedService> NamedService for Receiving<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for Receiving<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Err(_) => {
                let mut resp = tonic::Status::resource_exhausted(
                    "the server is receiving too many calls at once; retry shortly",
                )
                .into_http::<tonic::body::Body>();
                resp.headers_mut()
                    .insert("retry-after-ms", http::HeaderValue::from_static("100"));
                Box::pin(async move { Ok(resp) })
            }
            Ok(permit) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let r = fut.await;
                    drop(permit);
                    r
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[tokio::test]
    async fn past_the_bound_a_call_is_refused_before_it_is_read() {
        let (release, wait) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_req: http::Request<String>| {
            let mut wait = wait.clone();
            async move {
                let _ = wait.wait_for(|go| *go).await;
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let mut svc = Receiving::new(inner, 1);
        let first = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new("a".into()));
        let first = tokio::spawn(first);
        tokio::task::yield_now().await;
        let refused = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new("b".into()))
            .await
            .unwrap();
        assert_eq!(refused.headers()["grpc-status"], "8");
        assert!(refused.headers().contains_key("retry-after-ms"));
        release.send(true).unwrap();
        let ok = first.await.unwrap().unwrap();
        assert!(!ok.headers().contains_key("grpc-status"));
        // The permit came back.
        let again = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new("c".into()))
            .await
            .unwrap();
        assert!(!again.headers().contains_key("grpc-status"));
    }
}
