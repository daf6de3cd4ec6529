//! What every request passes before routing: path normalisation, the UTF-8 check of the path
//! and the `dapr-api-token` check.
//!
//! These are plain function calls in front of the router rather than axum middleware: a
//! `from_fn` layer boxes its future and the inner service on every request, which cost three
//! such layers about a dozen allocations per request on the hot path.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use futures_util::future::Either;
use tower::Service;

use super::ApiError;
use super::auth::Token;

/// A router with the checks in front of it. Cheap to clone (the router is shared).
#[derive(Clone)]
pub struct Gate {
    router: Router,
    /// `DAPR_API_TOKEN`, on the API port when set.
    token: Option<Arc<Token>>,
    /// Answer paths that do not percent-decode to UTF-8 as malformed (API port).
    utf8_paths: bool,
}

pub type GateFuture = Either<Ready<Result<Response, Infallible>>, RouteFuture<Infallible>>;

impl Gate {
    /// The API port: every check.
    pub fn api(router: Router, token: Option<Arc<Token>>) -> Self {
        Self {
            router,
            token,
            utf8_paths: true,
        }
    }

    /// The public port (health and metadata): path normalisation only.
    pub fn public(router: Router) -> Self {
        Self {
            router,
            token: None,
            utf8_paths: false,
        }
    }

    /// Checks the request and routes it, or answers it when a check refuses it.
    pub fn handle(&self, mut req: Request) -> GateFuture {
        normalize_path(&mut req);
        if let Some(token) = &self.token
            && let Err(refused) = token.admit(&mut req)
        {
            return Either::Left(ready(Ok(refused)));
        }
        if self.utf8_paths && !decodes_to_utf8(req.uri().path()) {
            let refused =
                ApiError::malformed("invalid URL: the path is not UTF-8 once percent-decoded");
            return Either::Left(ready(Ok(refused.into_response())));
        }
        // `Router` is always ready, and its clone shares the routes.
        Either::Right(self.router.clone().call(req))
    }
}

impl Service<Request> for Gate {
    type Response = Response;
    type Error = Infallible;
    type Future = GateFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> GateFuture {
        self.handle(req)
    }
}

/// Whether percent-decoding `path` (as axum decodes path parameters: `%XX` with two hex
/// digits is a byte, anything else is literal) yields UTF-8.
pub(crate) fn decodes_to_utf8(path: &str) -> bool {
    if !path.contains('%') {
        return true;
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// Collapses duplicate slashes and drops one trailing slash, as Dapr does before routing.
fn normalize_path(req: &mut Request) {
    let path = req.uri().path();
    let needs = path.contains("//") || (path.len() > 1 && path.ends_with('/'));
    if !needs {
        return;
    }
    let mut clean = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && clean.ends_with('/')) {
            clean.push(c);
        }
    }
    if clean.len() > 1 && clean.ends_with('/') {
        clean.pop();
    }
    if let Some(q) = req.uri().query() {
        clean.push('?');
        clean.push_str(q);
    }
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = clean.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[test]
    fn percent_decoded_paths() {
        assert!(decodes_to_utf8("/v1.0/state/s/plain"));
        assert!(decodes_to_utf8("/v1.0/state/s/a%2Fb%20c%E2%82%AC"));
        assert!(decodes_to_utf8("/v1.0/state/s/%ZZ%2"));
        assert!(!decodes_to_utf8("/v1.0/state/s/%FF"));
        assert!(!decodes_to_utf8("/v1.0/state/s/%E2%82"));
    }

    #[test]
    fn paths_are_normalized() {
        let cases = [
            ("/v1.0//state///s/k", "/v1.0/state/s/k"),
            ("/v1.0/state/s/k/", "/v1.0/state/s/k"),
            ("//v1.0/healthz//?appid=a", "/v1.0/healthz?appid=a"),
            ("/", "/"),
            ("/v1.0/state/s/k", "/v1.0/state/s/k"),
        ];
        for (given, want) in cases {
            let mut req = Request::get(given).body(Body::empty()).expect("request");
            normalize_path(&mut req);
            let got = req.uri().path_and_query().map(|pq| pq.as_str());
            assert_eq!(got, Some(want), "{given}");
        }
    }
}
