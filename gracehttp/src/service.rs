//! Any tower service (an axum `Router`, `tower::service_fn`, ...) or hyper service, erased to
//! one handler type so servers of different services can be served together.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

/// The error type handlers and bodies are boxed into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A handler's answer, with its service's future type erased.
pub(crate) type ResponseFuture = BoxFuture<Result<Response<UnsyncBoxBody<Bytes, BoxError>>, BoxError>>;

/// A request handler with its service and body types erased.
pub(crate) type Handler = Arc<dyn Fn(Request<Incoming>) -> ResponseFuture + Send + Sync>;

/// A service gracehttp can serve: any tower service of HTTP requests that can be cloned per
/// connection and sent between threads (an axum `Router`, `tower::service_fn`, a hyper
/// service through [`from_hyper`]). Implemented for every such service; named so the bounds
/// are written once.
pub trait HttpService:
    tower_service::Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + Sync
    + 'static
{
    /// The response body.
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> HttpService for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Body = B;
}

/// Erases a service: each request gets its own clone, made ready, then called, as
/// hyper-util's `TowerToHyperService` does.
pub(crate) fn handler<S: HttpService>(service: S) -> Handler {
    Arc::new(move |req| {
        let mut service = service.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let response = service.call(req).await.map_err(Into::into)?;
            Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
        })
    })
}

/// Adapts a hyper service (`hyper::service::service_fn`, say) to the tower service gracehttp
/// serves.
///
/// ```
/// use http_body_util::Full;
/// let hello = gracehttp::from_hyper(hyper::service::service_fn(|_req| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from("hello"))))
/// }));
/// # let _ = gracehttp::Server::new().http("127.0.0.1:0", hello);
/// ```
pub fn from_hyper<S>(service: S) -> FromHyper<S> {
    FromHyper(Arc::new(service))
}

/// A hyper service usable as a tower service; made by [`from_hyper`].
pub struct FromHyper<S>(Arc<S>);

impl<S> Clone for FromHyper<S> {
    fn clone(&self) -> Self {
        FromHyper(self.0.clone())
    }
}

impl<S, R> tower_service::Service<R> for FromHyper<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.0.call(req)
    }
}
