//! The dashboard's files, built into the binary by `build.rs`: served with a strong `ETag`
//! (304 when the browser has it), `Cache-Control: no-cache` (revalidated on each load, so a
//! new bramble is seen at once), and gzip-encoded when the browser accepts it — compressed
//! at build time, never per request.

use axum::body::Body;
use axum::response::Response;
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, VARY,
};
use http::{HeaderMap, HeaderValue, StatusCode};

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    /// Its path under `gateway/ui/`, e.g. `js/app.js`.
    pub(crate) path: &'static str,
    pub(crate) content_type: &'static str,
    /// A digest of its content (hex).
    pub(crate) etag: &'static str,
    pub(crate) raw: &'static [u8],
    /// Its gzip encoding, when that is smaller.
    pub(crate) gzip: Option<&'static [u8]>,
}

/// Every file of `gateway/ui/`, sorted by path.
pub(crate) static ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// The file at `path` (relative to `gateway/ui/`).
pub(crate) fn find(path: &str) -> Option<&'static Asset> {
    ASSETS
        .binary_search_by(|a| a.path.cmp(path))
        .ok()
        .and_then(|i| ASSETS.get(i))
}

/// Whether the client takes gzip (`Accept-Encoding: gzip`, not refused with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// The response for `asset` to a request with `headers`.
pub(crate) fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let gzip = asset.gzip.filter(|_| accepts_gzip(headers));
    // Each encoding is its own representation, with its own strong tag.
    let etag = match gzip {
        Some(_) => format!("\"{}-gz\"", asset.etag),
        None => format!("\"{}\"", asset.etag),
    };
    let mut response = if not_modified(headers, &etag) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let bytes = gzip.unwrap_or(asset.raw);
        let mut r = Response::new(Body::from(bytes));
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        if gzip.is_some() {
            r.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(http::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn every_file_is_embedded_sorted_with_a_type_and_a_smaller_gzip() {
        assert!(find("index.html").is_some() && find("login.html").is_some());
        assert!(find("js/app.js").is_some());
        assert!(find("nope.js").is_none());
        assert!(ASSETS.windows(2).all(|w| w[0].path < w[1].path));
        for a in ASSETS {
            assert!(!a.raw.is_empty(), "{}", a.path);
            assert_eq!(a.etag.len(), 24, "{}", a.path);
            if let Some(gz) = a.gzip {
                assert!(gz.len() < a.raw.len(), "{}", a.path);
            }
        }
    }

    #[test]
    fn gzip_etags_and_revalidation() {
        let asset = find("index.html").unwrap();
        let plain = serve(asset, &HeaderMap::new());
        assert_eq!(plain.status(), 200);
        assert!(plain.headers().get(CONTENT_ENCODING).is_none());
        let tag = plain.headers()[ETAG].to_str().unwrap().to_owned();
        assert!(tag.starts_with('"') && !tag.contains("-gz"), "{tag}");
        assert_eq!(plain.headers()[CACHE_CONTROL], "no-cache");

        let gz = serve(asset, &headers(&[(ACCEPT_ENCODING, "gzip, deflate, br")]));
        assert_eq!(gz.headers()[CONTENT_ENCODING], "gzip");
        let gz_tag = gz.headers()[ETAG].to_str().unwrap().to_owned();
        assert_ne!(gz_tag, tag);
        assert!(
            serve(asset, &headers(&[(ACCEPT_ENCODING, "gzip;q=0")]))
                .headers()
                .get(CONTENT_ENCODING)
                .is_none()
        );

        // The browser's copy is still good: 304, no body.
        let mut h = headers(&[(ACCEPT_ENCODING, "gzip")]);
        h.insert(IF_NONE_MATCH, HeaderValue::from_str(&gz_tag).unwrap());
        let r = serve(asset, &h);
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()[ETAG].to_str().unwrap(), gz_tag);
        // A tag of the other encoding does not match.
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, HeaderValue::from_str(&gz_tag).unwrap());
        assert_eq!(serve(asset, &h).status(), 200);
    }
}
