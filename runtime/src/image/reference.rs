//! Docker/OCI image references, parsed and normalised the way Docker does it.
//!
//! This follows `distribution/reference`'s `ParseNormalizedNamed` followed by
//! `TagNameOnly`: `alpine` becomes `docker.io/library/alpine:latest`,
//! `index.docker.io` becomes `docker.io`, and a reference without a tag or a
//! digest gets the tag `latest`.
//!
//! One deliberate difference: Docker also treats a first path component that
//! contains an uppercase letter as a registry host (`Foo/bar` is the registry
//! `Foo`); here a first component is a registry only if it contains `.` or
//! `:` or is `localhost`, so `Foo/bar` is rejected as an uppercase repository
//! name, which is what the user almost certainly meant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The registry of Docker Hub images.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy name of Docker Hub, normalised to [`DOCKER_HUB`].
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// The namespace of Docker Hub's official images (`alpine` is `library/alpine`).
const OFFICIAL_NAMESPACE: &str = "library";
/// The tag given to a reference that has neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest `registry/repository` accepted (Docker's `NameTotalLengthMax`).
pub const NAME_MAX_LEN: usize = 255;
/// Longest tag accepted.
const TAG_MAX_LEN: usize = 128;

/// A normalised image reference: `registry/repository[:tag][@digest]`.
///
/// The tag is `latest` when the input had neither a tag nor a digest; when a
/// digest was given without a tag, there is no tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why an image reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceProblem {
    /// The reference is the empty string.
    #[error("reference is empty")]
    Empty,
    /// The reference is a bare 64-hex-digit string, which Docker reserves for image IDs.
    #[error("a 64-character hexadecimal string is an image ID, not a repository name")]
    ImageId,
    /// The reference contains more than one `@`.
    #[error("more than one '@'")]
    MultipleAt,
    /// The repository name (everything after the registry) has uppercase letters.
    #[error("repository name must be lowercase")]
    Uppercase,
    /// A `/`-separated component of the repository name is empty.
    #[error("empty path component in the repository name")]
    EmptyComponent,
    /// A `/`-separated component of the repository name breaks the grammar.
    #[error(
        "invalid repository name component {0:?}: components are lowercase letters and digits, \
         separated by '.', '_', '__' or dashes, and must start and end with a letter or digit"
    )]
    InvalidComponent(String),
    /// The registry host is not a domain name, an IPv4 address or a bracketed IPv6 address.
    #[error("invalid registry host {0:?}")]
    InvalidRegistry(String),
    /// The registry port is not a number between 1 and 65535.
    #[error("invalid registry port {0:?}: must be a number between 1 and 65535")]
    InvalidPort(String),
    /// The tag breaks `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error(
        "invalid tag {0:?}: a tag is 1 to 128 letters, digits, '_', '.' or '-', \
         and must not start with '.' or '-'"
    )]
    InvalidTag(String),
    /// The digest is not `algorithm:encoded` (sha256 needs 64 lowercase hex digits).
    #[error("invalid digest {0:?}: expected sha256: followed by 64 lowercase hexadecimal digits")]
    InvalidDigest(String),
    /// `registry/repository` is longer than [`NAME_MAX_LEN`].
    #[error("name is {0} characters long, more than the 255 allowed")]
    NameTooLong(usize),
}

/// An image reference that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {problem}")]
pub struct ReferenceError {
    input: String,
    problem: ReferenceProblem,
}

impl ReferenceError {
    fn new(input: &str, problem: ReferenceProblem) -> Self {
        Self {
            input: input.to_owned(),
            problem,
        }
    }

    /// The rejected input.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &ReferenceProblem {
        &self.problem
    }
}

impl ImageRef {
    /// Parses and normalises an image reference, like `docker pull` does.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        parse_reference(s).map_err(|problem| ReferenceError::new(s, problem))
    }

    /// The registry host, with its port if any: `docker.io`, `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry: `library/alpine`, `openfaas/figlet`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag: `latest` for a reference that had neither tag nor digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, `sha256:<64 hex>`, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form `docker images` shows: `alpine:latest`, `openfaas/figlet:0.1`,
    /// `ghcr.io/openfaas/figlet:0.1`.
    pub fn familiar(&self) -> String {
        let mut out = String::new();
        if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => out.push_str(rest),
                _ => out.push_str(&self.repository),
            }
        } else {
            out.push_str(&self.name());
        }
        self.push_tag_and_digest(&mut out);
        out
    }

    /// The same repository with `tag` (the digest, if any, is kept).
    pub fn with_tag(mut self, tag: &str) -> Result<Self, ReferenceError> {
        if !is_valid_tag(tag) {
            let input = format!("{}:{tag}", self.name());
            return Err(ReferenceError::new(
                &input,
                ReferenceProblem::InvalidTag(tag.to_owned()),
            ));
        }
        self.tag = Some(tag.to_owned());
        Ok(self)
    }

    /// The same repository pinned to `digest` (the tag, if any, is kept).
    pub fn with_digest(mut self, digest: &str) -> Result<Self, ReferenceError> {
        if !is_valid_digest(digest) {
            let input = format!("{}@{digest}", self.name());
            return Err(ReferenceError::new(
                &input,
                ReferenceProblem::InvalidDigest(digest.to_owned()),
            ));
        }
        self.digest = Some(digest.to_owned());
        Ok(self)
    }

    fn push_tag_and_digest(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_tag_and_digest(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for ImageRef {
    type Error = ReferenceError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_reference(s: &str) -> Result<ImageRef, ReferenceProblem> {
    if s.is_empty() {
        return Err(ReferenceProblem::Empty);
    }
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceProblem::ImageId);
    }

    let (name_and_tag, digest) = match s.split_once('@') {
        Some((_, digest)) if digest.contains('@') => return Err(ReferenceProblem::MultipleAt),
        Some((name, digest)) => (name, Some(digest)),
        None => (s, None),
    };

    // A tag is a ':' after the last '/': the ':' of "host:port/" is not one.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag
        .get(last_slash..)
        .and_then(|last| last.find(':'))
    {
        Some(colon) => {
            let at = last_slash + colon;
            (
                name_and_tag.get(..at).unwrap_or_default(),
                name_and_tag.get(at + 1..),
            )
        }
        None => (name_and_tag, None),
    };

    let (registry, repository) = split_registry(name);
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceProblem::Uppercase);
    }
    validate_registry(registry)?;
    for component in repository.split('/') {
        if component.is_empty() {
            return Err(ReferenceProblem::EmptyComponent);
        }
        if !is_valid_component(component) {
            return Err(ReferenceProblem::InvalidComponent(component.to_owned()));
        }
    }
    if let Some(tag) = tag
        && !is_valid_tag(tag)
    {
        return Err(ReferenceProblem::InvalidTag(tag.to_owned()));
    }
    if let Some(digest) = digest
        && !is_valid_digest(digest)
    {
        return Err(ReferenceProblem::InvalidDigest(digest.to_owned()));
    }

    let registry = if registry == LEGACY_DOCKER_HUB {
        DOCKER_HUB
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{repository}")
    } else {
        repository.to_owned()
    };
    let name_len = registry.len() + 1 + repository.len();
    if name_len > NAME_MAX_LEN {
        return Err(ReferenceProblem::NameTooLong(name_len));
    }

    let tag = match (tag, digest) {
        (Some(tag), _) => Some(tag.to_owned()),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TAG.to_owned()),
    };
    Ok(ImageRef {
        registry: registry.to_owned(),
        repository,
        tag,
        digest: digest.map(str::to_owned),
    })
}

/// Splits `name` into registry and repository: the first component is a
/// registry iff it contains '.' or ':' or is `localhost`.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// `host[:port]`, where host is a domain name, an IPv4 address or `[IPv6]`.
fn validate_registry(registry: &str) -> Result<(), ReferenceProblem> {
    let invalid = || ReferenceProblem::InvalidRegistry(registry.to_owned());
    let (host_ok, port) = if let Some(bracketed) = registry.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or_else(invalid)?;
        let ok = !inside.is_empty()
            && inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':').ok_or_else(invalid)?)
        };
        (ok, port)
    } else {
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        (is_valid_domain(host), port)
    };
    if !host_ok {
        return Err(invalid());
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err(ReferenceProblem::InvalidPort(port.to_owned()));
        }
    }
    Ok(())
}

/// Dot-separated labels of letters, digits and inner dashes (IPv4 fits too).
fn is_valid_domain(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            let bytes = label.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    first.is_ascii_alphanumeric()
                        && last.is_ascii_alphanumeric()
                        && bytes
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                }
                _ => false,
            }
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_valid_component(component: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut rest = component.as_bytes();
    loop {
        let run = rest.iter().take_while(|b| alnum(b)).count();
        if run == 0 {
            return false;
        }
        rest = rest.get(run..).unwrap_or_default();
        let separator = match rest {
            [] => return true,
            [b'_', b'_', ..] => 2,
            [b'.' | b'_', ..] => 1,
            [b'-', ..] => rest.iter().take_while(|b| **b == b'-').count(),
            _ => return false,
        };
        rest = rest.get(separator..).unwrap_or_default();
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_valid_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    match tag.as_bytes().split_first() {
        Some((first, rest)) => {
            tag.len() <= TAG_MAX_LEN
                && word(first)
                && rest.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
        }
        None => false,
    }
}

/// `algorithm:encoded`: sha256 and sha512 need exactly 64 / 128 lowercase hex
/// digits; other algorithms follow the OCI grammar
/// `[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}`.
pub(crate) fn is_valid_digest(digest: &str) -> bool {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return false;
    };
    let lower_hex = |len: usize| {
        encoded.len() == len
            && encoded
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match algorithm {
        "sha256" => lower_hex(64),
        "sha512" => lower_hex(128),
        _ => {
            let algorithm_ok = algorithm.split(['.', '+', '_', '-']).all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
            let encoded_ok = encoded.len() >= 32
                && encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
            algorithm_ok && encoded_ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sha(hex: &str) -> String {
        format!("sha256:{hex}")
    }

    #[test]
    fn normalises_like_docker() {
        let d = sha(HEX);
        /// input, registry, repository, tag, digest, display
        type Case = (
            String,
            &'static str,
            &'static str,
            Option<&'static str>,
            Option<String>,
            String,
        );
        let cases: Vec<Case> = vec![
            (
                "alpine".into(),
                "docker.io",
                "library/alpine",
                Some("latest"),
                None,
                "docker.io/library/alpine:latest".into(),
            ),
            (
                "alpine:3.20".into(),
                "docker.io",
                "library/alpine",
                Some("3.20"),
                None,
                "docker.io/library/alpine:3.20".into(),
            ),
            (
                "openfaas/figlet".into(),
                "docker.io",
                "openfaas/figlet",
                Some("latest"),
                None,
                "docker.io/openfaas/figlet:latest".into(),
            ),
            (
                "docker.io/alpine".into(),
                "docker.io",
                "library/alpine",
                Some("latest"),
                None,
                "docker.io/library/alpine:latest".into(),
            ),
            (
                "index.docker.io/alpine:edge".into(),
                "docker.io",
                "library/alpine",
                Some("edge"),
                None,
                "docker.io/library/alpine:edge".into(),
            ),
            (
                "index.docker.io/library/alpine".into(),
                "docker.io",
                "library/alpine",
                Some("latest"),
                None,
                "docker.io/library/alpine:latest".into(),
            ),
            (
                "ghcr.io/openfaas/figlet:0.1".into(),
                "ghcr.io",
                "openfaas/figlet",
                Some("0.1"),
                None,
                "ghcr.io/openfaas/figlet:0.1".into(),
            ),
            (
                "ghcr.io/figlet".into(),
                "ghcr.io",
                "figlet",
                Some("latest"),
                None,
                "ghcr.io/figlet:latest".into(),
            ),
            (
                "localhost/x".into(),
                "localhost",
                "x",
                Some("latest"),
                None,
                "localhost/x:latest".into(),
            ),
            (
                "localhost:5000/x".into(),
                "localhost:5000",
                "x",
                Some("latest"),
                None,
                "localhost:5000/x:latest".into(),
            ),
            (
                "localhost:5000/x:v1".into(),
                "localhost:5000",
                "x",
                Some("v1"),
                None,
                "localhost:5000/x:v1".into(),
            ),
            // No '/': "localhost:5000" is the image "localhost" with tag "5000".
            (
                "localhost:5000".into(),
                "docker.io",
                "library/localhost",
                Some("5000"),
                None,
                "docker.io/library/localhost:5000".into(),
            ),
            (
                format!("127.0.0.1:5000/a/b@{d}"),
                "127.0.0.1:5000",
                "a/b",
                None,
                Some(d.clone()),
                format!("127.0.0.1:5000/a/b@{d}"),
            ),
            (
                format!("alpine@{d}"),
                "docker.io",
                "library/alpine",
                None,
                Some(d.clone()),
                format!("docker.io/library/alpine@{d}"),
            ),
            (
                format!("alpine:3.20@{d}"),
                "docker.io",
                "library/alpine",
                Some("3.20"),
                Some(d.clone()),
                format!("docker.io/library/alpine:3.20@{d}"),
            ),
            (
                "[::1]:5000/foo/bar:1".into(),
                "[::1]:5000",
                "foo/bar",
                Some("1"),
                None,
                "[::1]:5000/foo/bar:1".into(),
            ),
            (
                "[fe80::1]/foo".into(),
                "[fe80::1]",
                "foo",
                Some("latest"),
                None,
                "[fe80::1]/foo:latest".into(),
            ),
            (
                "Registry.Example.COM/foo".into(),
                "Registry.Example.COM",
                "foo",
                Some("latest"),
                None,
                "Registry.Example.COM/foo:latest".into(),
            ),
            (
                "my-registry.local:443/team/sub/app:Tag_1.0-rc".into(),
                "my-registry.local:443",
                "team/sub/app",
                Some("Tag_1.0-rc"),
                None,
                "my-registry.local:443/team/sub/app:Tag_1.0-rc".into(),
            ),
            (
                "a__b/c.d/e---f/g_h:_".into(),
                "docker.io",
                "a__b/c.d/e---f/g_h",
                Some("_"),
                None,
                "docker.io/a__b/c.d/e---f/g_h:_".into(),
            ),
            (
                "sha256/foo".into(),
                "docker.io",
                "sha256/foo",
                Some("latest"),
                None,
                "docker.io/sha256/foo:latest".into(),
            ),
            (
                "foo@sha512:".to_owned() + &"ab".repeat(64),
                "docker.io",
                "library/foo",
                None,
                Some("sha512:".to_owned() + &"ab".repeat(64)),
                "docker.io/library/foo@sha512:".to_owned() + &"ab".repeat(64),
            ),
            (
                "foo@multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8".into(),
                "docker.io",
                "library/foo",
                None,
                Some("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8".into()),
                "docker.io/library/foo@multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"
                    .into(),
            ),
        ];
        for (input, registry, repository, tag, digest, display) in cases {
            let r = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repository, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest(), digest.as_deref(), "{input}");
            assert_eq!(r.to_string(), display, "{input}");
            // The normalised form is a fixed point.
            assert_eq!(ImageRef::parse(&display).unwrap(), r, "{input}");
            assert_eq!(input.parse::<ImageRef>().unwrap(), r, "{input}");
        }
    }

    #[test]
    fn rejects_with_a_named_problem() {
        use ReferenceProblem as P;
        let long_component = "a".repeat(250);
        let cases: Vec<(String, ReferenceProblem)> = vec![
            (String::new(), P::Empty),
            (HEX.into(), P::ImageId),
            (format!("a@{}@{}", sha(HEX), sha(HEX)), P::MultipleAt),
            ("Foo/bar".into(), P::Uppercase),
            ("Alpine".into(), P::Uppercase),
            ("ghcr.io/OpenFaaS/figlet".into(), P::Uppercase),
            ("Alpine:Latest".into(), P::Uppercase),
            ("a//b".into(), P::EmptyComponent),
            ("ghcr.io/".into(), P::EmptyComponent),
            ("foo/".into(), P::EmptyComponent),
            ("/foo".into(), P::EmptyComponent),
            (":tag".into(), P::EmptyComponent),
            ("-foo".into(), P::InvalidComponent("-foo".into())),
            ("foo-".into(), P::InvalidComponent("foo-".into())),
            ("a..b".into(), P::InvalidComponent("a..b".into())),
            ("a___b".into(), P::InvalidComponent("a___b".into())),
            ("a._b".into(), P::InvalidComponent("a._b".into())),
            ("foo bar".into(), P::InvalidComponent("foo bar".into())),
            (
                "ghcr.io/x/caf\u{e9}".into(),
                P::InvalidComponent("caf\u{e9}".into()),
            ),
            ("foo/b!r".into(), P::InvalidComponent("b!r".into())),
            (
                "-bad.host/foo".into(),
                P::InvalidRegistry("-bad.host".into()),
            ),
            (
                "bad..host/foo".into(),
                P::InvalidRegistry("bad..host".into()),
            ),
            (
                "bad_host.io/foo".into(),
                P::InvalidRegistry("bad_host.io".into()),
            ),
            ("[::1/foo".into(), P::InvalidRegistry("[::1".into())),
            ("[]:5000/foo".into(), P::InvalidRegistry("[]:5000".into())),
            ("[::1]x/foo".into(), P::InvalidRegistry("[::1]x".into())),
            ("[zz::1]/foo".into(), P::InvalidRegistry("[zz::1]".into())),
            ("localhost:/foo".into(), P::InvalidPort(String::new())),
            ("localhost:99999/foo".into(), P::InvalidPort("99999".into())),
            ("localhost:0/foo".into(), P::InvalidPort("0".into())),
            ("localhost:50a/foo".into(), P::InvalidPort("50a".into())),
            (
                "localhost:5000:1/foo".into(),
                P::InvalidPort("5000:1".into()),
            ),
            ("[::1]:+1/foo".into(), P::InvalidPort("+1".into())),
            ("alpine:".into(), P::InvalidTag(String::new())),
            ("alpine:.x".into(), P::InvalidTag(".x".into())),
            ("alpine:-x".into(), P::InvalidTag("-x".into())),
            ("alpine:a:b".into(), P::InvalidTag("a:b".into())),
            ("alpine:a+b".into(), P::InvalidTag("a+b".into())),
            (
                format!("alpine:{}", "t".repeat(129)),
                P::InvalidTag("t".repeat(129)),
            ),
            ("alpine@".into(), P::InvalidDigest(String::new())),
            ("alpine@sha256".into(), P::InvalidDigest("sha256".into())),
            (
                "alpine@sha256:abc".into(),
                P::InvalidDigest("sha256:abc".into()),
            ),
            (
                format!("alpine@sha256:{}", HEX.to_uppercase()),
                P::InvalidDigest(format!("sha256:{}", HEX.to_uppercase())),
            ),
            (
                format!("alpine@sha256:{HEX}0"),
                P::InvalidDigest(format!("sha256:{HEX}0")),
            ),
            (
                format!("alpine@sha512:{HEX}"),
                P::InvalidDigest(format!("sha512:{HEX}")),
            ),
            (
                format!("alpine@Sha1:{HEX}"),
                P::InvalidDigest(format!("Sha1:{HEX}")),
            ),
            (
                "alpine@md5:short".into(),
                P::InvalidDigest("md5:short".into()),
            ),
            (
                format!("alpine@a..b:{HEX}"),
                P::InvalidDigest(format!("a..b:{HEX}")),
            ),
            (
                format!("alpine@sha256:{HEX}:{HEX}"),
                P::InvalidDigest(format!("sha256:{HEX}:{HEX}")),
            ),
            // "docker.io/library/" is 18 characters.
            (
                long_component.chars().take(238).collect(),
                P::NameTooLong(256),
            ),
            (format!("ghcr.io/{long_component}"), P::NameTooLong(258)),
        ];
        for (input, problem) in cases {
            let err = ImageRef::parse(&input)
                .map(|r| panic!("{input:?} was accepted as {r}"))
                .unwrap_err();
            assert_eq!(err.problem(), &problem, "{input:?}");
            assert_eq!(err.input(), input);
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("invalid image reference {input:?}: ")),
                "{message}"
            );
        }
        // 255 characters exactly is fine.
        let fits: String = long_component.chars().take(237).collect();
        assert_eq!(ImageRef::parse(&fits).unwrap().name().len(), 255);
    }

    #[test]
    fn error_messages_read_well() {
        let err = ImageRef::parse("Foo/bar").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid image reference "Foo/bar": repository name must be lowercase"#
        );
        let err = ImageRef::parse("alpine@sha256:abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid image reference \"alpine@sha256:abc\": invalid digest \"sha256:abc\": \
             expected sha256: followed by 64 lowercase hexadecimal digits"
        );
        let err = ImageRef::parse("localhost:99999/x").unwrap_err();
        assert!(err.to_string().contains("invalid registry port \"99999\""));
        // Control characters are escaped, not printed raw.
        let err = ImageRef::parse("a\nb").unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"invalid image reference "a\nb""#)
        );
    }

    #[test]
    fn familiar_names() {
        let d = sha(HEX);
        let cases = [
            ("alpine".to_owned(), "alpine:latest".to_owned()),
            ("docker.io/library/alpine:3".into(), "alpine:3".into()),
            ("openfaas/figlet:0.1".into(), "openfaas/figlet:0.1".into()),
            ("library/a/b".into(), "library/a/b:latest".into()),
            (
                "ghcr.io/openfaas/figlet:0.1".into(),
                "ghcr.io/openfaas/figlet:0.1".into(),
            ),
            ("localhost:5000/x".into(), "localhost:5000/x:latest".into()),
            (format!("alpine@{d}"), format!("alpine@{d}")),
            (format!("alpine:1@{d}"), format!("alpine:1@{d}")),
        ];
        for (input, familiar) in cases {
            assert_eq!(ImageRef::parse(&input).unwrap().familiar(), familiar);
        }
    }

    #[test]
    fn with_tag_and_digest() {
        let r = ImageRef::parse("alpine").unwrap();
        let tagged = r.clone().with_tag("3.20").unwrap();
        assert_eq!(tagged.to_string(), "docker.io/library/alpine:3.20");
        let pinned = tagged.with_digest(&sha(HEX)).unwrap();
        assert_eq!(pinned.tag(), Some("3.20"));
        assert_eq!(pinned.digest(), Some(sha(HEX).as_str()));

        let err = r.clone().with_tag("bad tag").unwrap_err();
        assert_eq!(
            err.problem(),
            &ReferenceProblem::InvalidTag("bad tag".into())
        );
        assert_eq!(err.input(), "docker.io/library/alpine:bad tag");
        let err = r.with_digest("sha256:nope").unwrap_err();
        assert_eq!(
            err.problem(),
            &ReferenceProblem::InvalidDigest("sha256:nope".into())
        );
    }

    #[test]
    fn serde_uses_the_normalised_string() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#""docker.io/library/alpine:latest""#
        );
        let back: ImageRef = serde_json::from_str(r#""alpine""#).unwrap();
        assert_eq!(back, r);
        let err = serde_json::from_str::<ImageRef>(r#""Foo/bar""#).unwrap_err();
        assert!(err.to_string().contains("must be lowercase"), "{err}");
        assert!(serde_json::from_str::<ImageRef>("42").is_err());
    }

    #[test]
    fn digest_grammar() {
        assert!(is_valid_digest(&sha(HEX)));
        assert!(is_valid_digest(&format!("sha512:{}", "0f".repeat(64))));
        assert!(is_valid_digest(&format!("blake3:{HEX}")));
        assert!(is_valid_digest(
            "a.b+c_d-e:ABCDEFGHIJKLMNOPQRSTUVWXYZ012345=_-"
        ));
        assert!(!is_valid_digest(
            "a.b+c_d-e:ABCDEFGHIJKLMNOPQRSTUVWXYZ01234"
        ));
        assert!(!is_valid_digest(&format!(".a:{HEX}")));
        assert!(!is_valid_digest(&format!("a.:{HEX}")));
        assert!(!is_valid_digest(&format!(":{HEX}")));
        assert!(!is_valid_digest(&format!("blake3:{HEX}/")));
    }

    #[test]
    fn never_panics_on_garbage() {
        // A deterministic pseudo-random walk over a reference-ish alphabet.
        let alphabet = b"aZ0:/@.-_[]9 \xc3\xa9sha256";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let len = (state >> 58) as usize;
            for _ in 0..len {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                bytes.push(alphabet[(state >> 33) as usize % alphabet.len()]);
            }
            let input = String::from_utf8_lossy(&bytes);
            if let Ok(r) = ImageRef::parse(&input) {
                // Whatever is accepted round-trips through its normalised form.
                assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r, "{input:?}");
            }
        }
    }
}
