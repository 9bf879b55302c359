//! Small HTTP helpers: the text error response, reading a bounded body, JSON with field paths,
//! hop-by-hop headers, call ids.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::provider::ProviderError;

/// An API error: a status and a one-line text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400 about one field.
    pub(crate) fn field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("{field}: {message}"))
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let status = e.status();
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        text_response(self.status, self.message)
    }
}

/// A `text/plain` response.
pub(crate) fn text_response(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body: String = body.into();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A status with an empty body (faasd's answer to deploy, update, delete, scale).
pub(crate) fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Reads a whole body of at most `limit` bytes; 413 beyond it.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// Parses JSON; an error names the field path (`envVars: invalid type: ...`).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request body is empty: expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // serde_json appends the position; the field path says more.
        if inner.line() > 0
            && let Some(at) = message.rfind(" at line ")
        {
            message.truncate(at);
        }
        if matches!(path.as_str(), "." | "?" | "") {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {message}"),
            )
        } else {
            ApiError::field(&path, message)
        }
    })?;
    deserializer.end().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid JSON body: trailing characters after the JSON value",
        )
    })?;
    Ok(value)
}

/// Reads and parses a JSON body of at most `limit` bytes.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, limit).await?;
    parse_json(&bytes)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the ones
/// HTTP/1.1 proxies also drop.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A new call id: 128 random bits written like a UUID (version 4), without allocating.
fn new_call_id_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const VERSION_MASK: u128 = 0xf << 76;
    const VARIANT_MASK: u128 = 0x3 << 62;
    let r: u128 = rand::random();
    let r = (((r & !VERSION_MASK) | (0x4 << 76)) & !VARIANT_MASK) | (0x2 << 62);
    let mut out = [b'-'; 36];
    let mut shift = 128;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        shift -= 4;
        *slot = HEX[((r >> shift) & 0xf) as usize];
    }
    out
}

/// A new call id: 128 random bits written like a UUID (version 4).
pub(crate) fn new_call_id() -> String {
    new_call_id_bytes()
        .iter()
        .copied()
        .map(char::from)
        .collect()
}

/// The caller's `X-Call-Id` when it is a sensible one (not empty, at most 128 bytes,
/// surrounding spaces trimmed), else a new one.
pub(crate) fn call_id_of(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get("x-call-id")
        && let Ok(text) = value.to_str()
    {
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.len() <= 128 {
            if trimmed.len() == text.len() {
                // Shares the request's bytes.
                return value.clone();
            }
            if let Ok(value) = HeaderValue::from_str(trimmed) {
                return value;
            }
        }
    }
    // Hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&new_call_id_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-call-id"))
}

/// Appends `ip` to the request's `X-Forwarded-For` (every earlier value kept, in order).
pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, ip: std::net::IpAddr) {
    use std::fmt::Write as _;
    let mut value = String::new();
    for previous in headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        value.push_str(previous);
        value.push_str(", ");
    }
    let _ = write!(value, "{ip}");
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert("x-forwarded-for", v);
    }
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FunctionDeployment;

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<FunctionDeployment>(br#"{"service":"f","image":"i","envVars":5}"#)
            .unwrap_err();
        assert_eq!(
            e.message,
            "envVars: invalid type: integer `5`, expected a map"
        );
        let e = parse_json::<FunctionDeployment>(
            br#"{"service":"f","image":"i","limits":{"memory":1}}"#,
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("limits.memory: invalid type"),
            "{}",
            e.message
        );
        let e =
            parse_json::<FunctionDeployment>(br#"{"service":"f","image":"i","secrets":["a",2]}"#)
                .unwrap_err();
        assert!(
            e.message.starts_with("secrets[1]: invalid type"),
            "{}",
            e.message
        );
        let e = parse_json::<FunctionDeployment>(br#"{"image":"i"}"#).unwrap_err();
        assert_eq!(e.message, "invalid JSON body: missing field `service`");
        let e = parse_json::<FunctionDeployment>(b"{").unwrap_err();
        assert!(
            e.message.starts_with("invalid JSON body: EOF"),
            "{}",
            e.message
        );
        let e = parse_json::<FunctionDeployment>(b" ").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = parse_json::<FunctionDeployment>(br#"{"service":"f","image":"i"} x"#).unwrap_err();
        assert!(e.message.contains("trailing"), "{}", e.message);
        assert!(e.status == StatusCode::BAD_REQUEST);
    }

    #[test]
    fn hop_by_hop_headers_go_and_named_ones_too() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
            ("x-keep", "1"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-keep"]);
    }

    #[test]
    fn call_ids_are_uuid_shaped_unique_and_callers_are_kept() {
        let a = new_call_id();
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{a}");
        assert_ne!(a, new_call_id());
        let mut h = HeaderMap::new();
        h.insert("x-call-id", HeaderValue::from_static("mine"));
        assert_eq!(call_id_of(&h), "mine");
        h.insert("x-call-id", HeaderValue::from_static(" mine "));
        assert_eq!(call_id_of(&h), "mine");
        h.insert("x-call-id", HeaderValue::from_static(" "));
        let new = call_id_of(&h);
        assert_eq!(new.len(), 36);
        assert_eq!(new.as_bytes()[14], b'4');
    }

    #[test]
    fn go_bools() {
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }
}
