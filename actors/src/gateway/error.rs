//! Errors in OpenAI's JSON shape, with the HTTP status that tells the client what to do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for `retry-after` on a 429 or 503 (1 when not set).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after_s: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn unknown_model(model: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist. This server serves `{served}`."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after_s: None,
        }
    }

    pub fn too_large(limit: u64) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("The request body exceeds the limit of {limit} bytes."),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
            retry_after_s: None,
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("Unknown path {path}."),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after_s: None,
        }
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("Method {method} is not allowed for {path}."),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
            retry_after_s: None,
        }
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "server_overloaded",
            param: None,
            code: Some("overloaded"),
            retry_after_s: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "service_unavailable",
            param: None,
            code: Some("unavailable"),
            retry_after_s: None,
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after_s: None,
        }
    }

    pub fn forbidden(message: &str) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
            kind: "permission_error",
            param: None,
            code: Some("forbidden"),
            retry_after_s: None,
        }
    }

    /// The key `id` is over its limit of `what` (requests or tokens) for `retry_after`.
    pub fn rate_limited(id: &str, what: &'static str, retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs_f64().ceil().clamp(1.0, 3600.0) as u64;
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("Rate limit reached for key `{id}` on {what} per second; retry in {secs} s."),
            kind: what,
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after_s: Some(secs),
        }
    }

    pub fn body_timeout(wait: std::time::Duration) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("The request body did not arrive within {} s (gateway.body_timeout).", wait.as_secs()),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_timeout"),
            retry_after_s: None,
        }
    }

    /// A prompt of `bytes` that cannot fit `context` tokens whatever it holds.
    pub fn cannot_fit(bytes: usize, context: u32, param: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "The prompt ({bytes} bytes) cannot fit this model's context of {context} tokens; it was refused before tokenizing."
            ),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: Some("context_length_exceeded"),
            retry_after_s: None,
        }
    }

    pub fn headers_too_large(bytes: usize, count: usize) -> Self {
        use super::serve::{MAX_HEADER_BYTES, MAX_HEADERS};
        Self {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            message: format!(
                "The request's headers are too large: {count} headers of {bytes} bytes; at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes."
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_header_fields_too_large"),
            retry_after_s: None,
        }
    }

    pub fn unsupported_media_type() -> Self {
        Self {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "POST bodies must be JSON, sent with `Content-Type: application/json`.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("unsupported_media_type"),
            retry_after_s: None,
        }
    }

    /// Seconds for `retry-after`: set on a 429 or 503 (1 unless the error says).
    pub fn retry_after(&self) -> Option<u64> {
        matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
            .then(|| self.retry_after_s.unwrap_or(1))
    }

    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut().insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        resp
    }
}
