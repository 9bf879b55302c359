//! HTTP Basic auth of `/system/*`, compared in constant time (SHA-256 digests of the given and
//! expected user and password, so that not even the lengths are compared early).

use base64::Engine as _;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::Credentials;

/// Whether `user` and `password` are `credentials` (Basic auth, the dashboard's login form).
/// Both are always compared, so the time taken says nothing about which one was wrong.
pub(crate) fn valid(credentials: &Credentials, user: &[u8], password: &[u8]) -> bool {
    let user_ok = same(user, credentials.user.as_bytes());
    let password_ok = same(password, credentials.password.as_bytes());
    bool::from(user_ok & password_ok)
}

/// Whether `headers` carry `credentials` as HTTP Basic auth.
pub(crate) fn authorized(credentials: &Credentials, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, encoded)) = value.split_first_chunk::<6>() else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return false;
    };
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    valid(credentials, user, password)
}

/// Constant-time equality that also hides the expected length: slices of different lengths
/// would compare unequal at once, so their SHA-256 digests (always 32 bytes) are compared.
pub(crate) fn same(given: &[u8], expected: &[u8]) -> subtle::Choice {
    Sha256::digest(given).ct_eq(&Sha256::digest(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn basic_auth() {
        let c = Credentials {
            user: "admin".into(),
            password: "p:w".into(),
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(authorized(
            &c,
            &with(&format!("Basic {}", b64("admin:p:w")))
        ));
        assert!(authorized(
            &c,
            &with(&format!("basic  {} ", b64("admin:p:w")))
        ));
        assert!(!authorized(&c, &HeaderMap::new()));
        assert!(!authorized(&c, &with(&format!("Basic {}", b64("admin:p")))));
        assert!(!authorized(
            &c,
            &with(&format!("Basic {}", b64("admi:p:w")))
        ));
        assert!(!authorized(
            &c,
            &with(&format!("Basic {}", b64("adminp:w")))
        ));
        assert!(!authorized(
            &c,
            &with(&format!("Bearer {}", b64("admin:p:w")))
        ));
        assert!(!authorized(&c, &with("Basic !!!")));
        assert!(!authorized(&c, &with("Basic")));
    }

    #[test]
    fn comparison_is_by_digest_whatever_the_lengths() {
        for (a, b, equal) in [
            (&b""[..], &b""[..], true),
            (b"p:w", b"p:w", true),
            (b"p:w", b"p:x", false),
            (b"p", b"p:w", false),
            (b"p:w:longer", b"p:w", false),
            (b"", b"x", false),
        ] {
            assert_eq!(bool::from(same(a, b)), equal, "{a:?} {b:?}");
        }
    }
}
