//! `dapr-api-token` authentication (enabled by `DAPR_API_TOKEN`).

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub const HEADER: &str = "dapr-api-token";

pub struct Token(Vec<u8>);

impl Token {
    pub fn new(token: &str) -> Self {
        Self(token.as_bytes().to_vec())
    }

    /// Compares without an early exit, so timing does not reveal a matching prefix.
    pub fn matches(&self, given: &[u8]) -> bool {
        given.len() == self.0.len()
            && given
                .iter()
                .zip(&self.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn exempt(req: &Request) -> bool {
    req.method() == Method::GET
        && matches!(req.uri().path(), "/v1.0/healthz" | "/v1.0/healthz/outbound")
}

impl Token {
    /// Lets a request with the right token through (without the token header, so that it is
    /// not passed on), and the health checks without one; anything else gets the 401.
    #[allow(clippy::result_large_err)]
    pub fn admit(&self, req: &mut Request) -> Result<(), Response> {
        if exempt(req) {
            return Ok(());
        }
        let ok = req
            .headers()
            .get(HEADER)
            .is_some_and(|v| self.matches(v.as_bytes()));
        if !ok {
            return Err((
                StatusCode::UNAUTHORIZED,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    ),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                "invalid api token\n",
            )
                .into_response());
        }
        req.headers_mut().remove(HEADER);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let t = Token::new("s3cret");
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret!"));
        assert!(!t.matches(b"S3cret"));
    }
}
