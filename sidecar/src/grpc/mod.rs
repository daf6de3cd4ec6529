//! The gRPC API: the state RPCs of `dapr.proto.runtime.v1.Dapr`, which every Dapr SDK but the
//! JavaScript one uses (port 50001, `DAPR_GRPC_PORT`).
//!
//! The wire types come from the `dapr` crate (the official Rust SDK). Routing is a plain match
//! on the path rather than the crate's generated service trait: the trait has some ninety RPCs,
//! and every one statecar does not serve answers UNIMPLEMENTED with its name from one place.
//! The handlers (`state`) call the same building block (`crate::state`) as the HTTP API.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::{Grpc, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::api::AppState;
use crate::api::auth::{HEADER as TOKEN_HEADER, Token};

pub mod errors;
pub mod state;

/// The service statecar answers for; any other service path is UNIMPLEMENTED too.
pub const SERVICE: &str = "dapr.proto.runtime.v1.Dapr";

/// What the gRPC handlers share.
pub struct GrpcApi {
    pub state: Arc<AppState>,
    token: Option<Token>,
    max_message_size: usize,
}

impl GrpcApi {
    pub fn new(state: Arc<AppState>, api_token: Option<&str>, max_message_size: usize) -> Self {
        Self {
            state,
            token: api_token.map(Token::new),
            max_message_size,
        }
    }

    /// `dapr-api-token` is required on every RPC when `DAPR_API_TOKEN` is set, as on HTTP.
    fn authorize<B>(&self, req: &http::Request<B>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        match req.headers().get(TOKEN_HEADER) {
            None => Err(Status::unauthenticated(
                "missing api token in request metadata",
            )),
            Some(given) if token.matches(given.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "authentication error: api token mismatch",
            )),
        }
    }
}

/// The tower service tonic's server runs: one per connection, all sharing one [`GrpcApi`].
#[derive(Clone)]
pub struct DaprService {
    api: Arc<GrpcApi>,
}

impl DaprService {
    pub fn new(api: Arc<GrpcApi>) -> Self {
        Self { api }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<Body>> for DaprService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let api = self.api.clone();
        Box::pin(async move { Ok(route(api, req).await) })
    }
}

/// The RPCs statecar serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    GetState,
    GetBulkState,
    SaveState,
    DeleteState,
    DeleteBulkState,
    ExecuteStateTransaction,
    QueryStateAlpha1,
    GetMetadata,
    SetMetadata,
}

/// The method a request path names, or the UNIMPLEMENTED status naming what it asked for.
fn method(path: &str) -> Result<Method, Status> {
    let Some((SERVICE, rpc)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Err(Status::unimplemented(format!(
            "unknown service or method {path}: statecar serves the state RPCs of {SERVICE}"
        )));
    };
    Ok(match rpc {
        "GetState" => Method::GetState,
        "GetBulkState" => Method::GetBulkState,
        "SaveState" => Method::SaveState,
        "DeleteState" => Method::DeleteState,
        "DeleteBulkState" => Method::DeleteBulkState,
        "ExecuteStateTransaction" => Method::ExecuteStateTransaction,
        "QueryStateAlpha1" => Method::QueryStateAlpha1,
        "GetMetadata" => Method::GetMetadata,
        "SetMetadata" => Method::SetMetadata,
        other => {
            return Err(Status::unimplemented(format!(
                "{SERVICE}/{other} is not implemented: statecar serves the state management API only"
            )));
        }
    })
}

async fn route(api: Arc<GrpcApi>, req: http::Request<Body>) -> http::Response<Body> {
    let method = match api.authorize(&req).and_then(|()| method(req.uri().path())) {
        Ok(m) => m,
        Err(status) => return status.into_http(),
    };
    match method {
        Method::GetState => unary(api, req, state::get_state).await,
        Method::GetBulkState => unary(api, req, state::get_bulk_state).await,
        Method::SaveState => unary(api, req, state::save_state).await,
        Method::DeleteState => unary(api, req, state::delete_state).await,
        Method::DeleteBulkState => unary(api, req, state::delete_bulk_state).await,
        Method::ExecuteStateTransaction => unary(api, req, state::execute_state_transaction).await,
        Method::QueryStateAlpha1 => unary(api, req, state::query_state).await,
        Method::GetMetadata => unary(api, req, state::get_metadata).await,
        Method::SetMetadata => unary(api, req, state::set_metadata).await,
    }
}

/// A handler of one unary RPC.
struct Handler<F> {
    api: Arc<GrpcApi>,
    f: F,
}

impl<Req, Resp, F, Fut> UnaryService<Req> for Handler<F>
where
    F: Fn(Arc<GrpcApi>, Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<Result<Response<Resp>, Status>>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let fut = (self.f)(self.api.clone(), request.into_inner());
        Box::pin(async move { fut.await.map(Response::new) })
    }
}

async fn unary<Req, Resp, F, Fut>(
    api: Arc<GrpcApi>,
    req: http::Request<Body>,
    f: F,
) -> http::Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(Arc<GrpcApi>, Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let max = api.max_message_size;
    let mut grpc = Grpc::new(ProstCodec::<Resp, Req>::default())
        .apply_max_message_size_config(Some(max), None);
    grpc.unary(Handler { api, f }, req).await
}

/// Serves the gRPC API on `listener` until `stop` turns true; calls in flight then finish.
pub async fn serve(
    listener: TcpListener,
    service: DaprService,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(service, incoming, stopped)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_by_path() {
        assert!(matches!(
            method("/dapr.proto.runtime.v1.Dapr/GetState"),
            Ok(Method::GetState)
        ));
        let other = method("/dapr.proto.runtime.v1.Dapr/PublishEvent").unwrap_err();
        assert_eq!(other.code(), tonic::Code::Unimplemented);
        assert!(
            other.message().contains("PublishEvent"),
            "{}",
            other.message()
        );
        let service = method("/grpc.health.v1.Health/Check").unwrap_err();
        assert_eq!(service.code(), tonic::Code::Unimplemented);
        assert!(service.message().contains("grpc.health.v1.Health/Check"));
    }
}
