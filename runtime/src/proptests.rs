//! Property tests of every runtime parser that reads outside input: image references (API
//! bodies, stack files, archives), platforms, ELF headers (uploaded binaries), OCI manifests,
//! indexes and configs (registries and tarballs), and Docker credential files.
//!
//! Each property: no panic on any input, an error names what was wrong (and the input where
//! the message promises it), and what parses prints back to itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::image::auth::CredentialStore;
use crate::image::oci::{self, ManifestDocument};
use crate::image::platform::Platform;
use crate::image::reference::ImageRef;

/// 512 cases a property, or `PROPTEST_CASES` for a longer run (README, Reliability); the
/// rejections of `prop_assume!` are allowed in proportion.
fn config() -> ProptestConfig {
    let cases = ProptestConfig::default().cases.max(512);
    ProptestConfig {
        cases,
        max_global_rejects: cases.max(1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A digest that is valid, or one of the ways digests go wrong.
fn digest() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        1 => "[0-9A-Fa-z]{60,66}".prop_map(|h| format!("sha256:{h}")),
        1 => Just("sha256:../../../../etc/passwd".to_owned()),
        1 => "[0-9a-f]{64}".prop_map(|h| format!("sha512:{h}")),
        1 => ".{0,80}",
    ]
}

fn media_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(oci::OCI_INDEX.to_owned()),
        Just(oci::OCI_MANIFEST.to_owned()),
        Just(oci::DOCKER_LIST.to_owned()),
        Just(oci::DOCKER_MANIFEST.to_owned()),
        Just(oci::DOCKER_SCHEMA1.to_owned()),
        Just(oci::OCI_LAYER_TAR.to_owned()),
        ".{0,40}",
    ]
}

fn size() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0i64..1 << 40).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(1.5e300)),
        1 => Just(json!("12")),
    ]
}

fn descriptor() -> impl Strategy<Value = Value> {
    (
        media_type(),
        digest(),
        size(),
        prop::option::of(("[a-z0-9]{0,8}", "[a-z0-9]{0,8}", prop::option::of("v[0-9]"))),
    )
        .prop_map(|(m, d, s, p)| {
            let mut v = json!({"mediaType": m, "digest": d, "size": s});
            if let Some((arch, os, variant)) = p {
                v["platform"] = json!({"architecture": arch, "os": os, "variant": variant});
            }
            v
        })
}

/// Any JSON value, biased towards the field names image documents use.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("schemaVersion".to_owned()),
        Just("mediaType".to_owned()),
        Just("config".to_owned()),
        Just("layers".to_owned()),
        Just("manifests".to_owned()),
        Just("digest".to_owned()),
        Just("size".to_owned()),
        Just("rootfs".to_owned()),
        Just("diff_ids".to_owned()),
        Just("architecture".to_owned()),
        Just("os".to_owned()),
        ".{0,8}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every descriptor of a parsed document passed the checks parsing promises.
fn assert_descriptors_checked(document: &ManifestDocument) {
    let descriptors: Vec<&oci::Descriptor> = match document {
        ManifestDocument::Index(index) => index.manifests.iter().collect(),
        ManifestDocument::Manifest(m) => std::iter::once(&m.config).chain(&m.layers).collect(),
    };
    for d in descriptors {
        assert!(
            crate::content::validate_digest(&d.digest).is_ok(),
            "accepted digest {:?}",
            d.digest
        );
        assert!(d.size >= 0, "accepted size {}", d.size);
    }
}

/// The first 8 KiB of this test binary: a real ELF header with its program headers.
fn own_elf_head() -> &'static [u8] {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HEAD.get_or_init(|| {
        use std::io::Read as _;
        let mut head = Vec::new();
        std::fs::File::open("/proc/self/exe")
            .and_then(|f| f.take(8192).read_to_end(&mut head))
            .unwrap();
        head
    })
}

fn assert_image_error(e: &crate::Error) {
    let text = e.to_string();
    assert!(text.starts_with("image img: "), "{text}");
    assert!(text.len() > "image img: ".len() + 5, "vague error: {text}");
}

proptest! {
    #![proptest_config(config())]

    /// Any string: a clear error naming the input, or a reference that prints back to itself.
    #[test]
    fn image_references_never_panic_and_round_trip(s in prop_oneof![
        ".{0,300}",
        "[a-zA-Z0-9._/:@-]{0,80}",
        "([a-z0-9.-]{1,12}(:[0-9]{1,6})?/)?[a-z0-9._-]{1,20}(/[a-z0-9._-]{1,20}){0,3}(:[A-Za-z0-9_.-]{1,130})?(@sha256:[0-9a-f]{62,66})?",
    ]) {
        match ImageRef::parse(&s) {
            Ok(r) => {
                let printed = r.to_string();
                let again = ImageRef::parse(&printed).unwrap();
                prop_assert_eq!(&again, &r);
                prop_assert_eq!(again.to_string(), printed);
            }
            Err(e) => {
                prop_assert_eq!(e.input(), s.as_str());
                let text = e.to_string();
                prop_assert!(text.starts_with(&format!("invalid image reference {s:?}: ")), "{}", text);
            }
        }
    }

    /// Well-formed references always parse, and keep their repository, tag and digest.
    #[test]
    fn valid_image_references_parse(
        host in prop::option::of("[a-z]([a-z0-9-]{0,8}[a-z0-9])?\\.[a-z]{2,5}(:[1-9][0-9]{0,3})?"),
        components in vec("[a-z0-9]{1,3}([._-][a-z0-9]{1,3}){0,2}", 1..4),
        tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}"),
        digest in prop::option::of("[0-9a-f]{64}"),
    ) {
        let path = components.join("/");
        let mut text = match &host { Some(h) => format!("{h}/{path}"), None => path.clone() };
        if let Some(t) = &tag { text = format!("{text}:{t}"); }
        if let Some(d) = &digest { text = format!("{text}@sha256:{d}"); }
        // Without a host, a first component with a '.' is the registry.
        prop_assume!(host.is_some() || !(components[0].contains('.') || components[0] == "localhost"));
        // A bare 64-hex name is an image id, not a repository.
        prop_assume!(!(host.is_none() && components.len() == 1 && components[0].len() == 64));
        let r = ImageRef::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(r.repository().ends_with(&path));
        prop_assert_eq!(r.digest().map(str::to_owned), digest.map(|d| format!("sha256:{d}")));
        if let Some(t) = &tag { prop_assert_eq!(r.tag(), Some(t.as_str())); }
    }

    /// Platforms from flags, configs and index entries.
    #[test]
    fn platforms_never_panic_and_round_trip(s in prop_oneof![
        ".{0,40}",
        "(linux|windows|darwin|[a-z]{1,6})(/(arm|arm64|amd64|aarch64|x86_64|armhf|armel|386|[a-z0-9]{1,6}))?(/(v[5-9]|[a-z0-9]{1,3}))?",
    ]) {
        match Platform::parse(&s) {
            Ok(p) => {
                let again = Platform::parse(&p.to_string()).unwrap();
                prop_assert_eq!(again, p);
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.starts_with(&format!("invalid platform {s:?}: ")), "{}", text);
            }
        }
    }

    /// ELF headers of uploaded binaries: arbitrary bytes, and real headers with bytes flipped.
    #[test]
    fn elf_headers_never_panic(
        bytes in vec(any::<u8>(), 0..512),
        flips in vec((0usize..4096, any::<u8>()), 0..16),
        cut in 0usize..8192,
    ) {
        let _ = Platform::from_elf(&bytes);
        let mut real = own_elf_head().to_vec();
        for (at, value) in flips {
            if let Some(b) = real.get_mut(at) { *b = value; }
        }
        real.truncate(cut);
        if let Err(e) = Platform::from_elf(&real) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Manifest documents as registries and archives hand them over: arbitrary bytes.
    #[test]
    fn manifest_documents_from_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..256),
        media in prop::option::of(media_type()),
    ) {
        match oci::parse_manifest_document("img", media.as_deref(), &bytes) {
            Ok(d) => assert_descriptors_checked(&d),
            Err(e) => assert_image_error(&e),
        }
    }

    /// Arbitrary JSON, biased to the image documents' field names.
    #[test]
    fn manifest_documents_from_arbitrary_json(value in json_value(), media in prop::option::of(media_type())) {
        let bytes = serde_json::to_vec(&value).unwrap();
        match oci::parse_manifest_document("img", media.as_deref(), &bytes) {
            Ok(d) => assert_descriptors_checked(&d),
            Err(e) => assert_image_error(&e),
        }
    }

    /// Manifests and indexes shaped right, with hostile digests, sizes and media types: what
    /// parses has only valid digests and non-negative sizes; the rest is a clear error.
    #[test]
    fn structured_manifests_and_indexes(
        config in descriptor(),
        layers in vec(descriptor(), 0..5),
        manifests in vec(descriptor(), 0..5),
        schema in prop_oneof![Just(json!(2)), Just(json!(1)), any::<i64>().prop_map(Value::from), Just(json!("2"))],
        top_media in prop::option::of(media_type()),
        media in prop::option::of(media_type()),
    ) {
        let manifest = json!({"schemaVersion": schema, "mediaType": top_media, "config": config, "layers": layers});
        let index = json!({"schemaVersion": schema, "mediaType": top_media, "manifests": manifests});
        for document in [manifest, index] {
            let bytes = serde_json::to_vec(&document).unwrap();
            match oci::parse_manifest_document("img", media.as_deref(), &bytes) {
                Ok(d) => assert_descriptors_checked(&d),
                Err(e) => assert_image_error(&e),
            }
        }
    }

    /// Image configs: arbitrary JSON, and configs whose diff ids and layer counts disagree with
    /// their manifest.
    #[test]
    fn image_configs(
        value in json_value(),
        diff_ids in vec(digest(), 0..4),
        layers in 0usize..4,
        arch in ".{0,10}",
    ) {
        let layer = json!({"mediaType": oci::OCI_LAYER_TAR, "digest": format!("sha256:{}", "a".repeat(64)), "size": 1});
        let manifest_json = json!({
            "schemaVersion": 2,
            "config": {"mediaType": oci::OCI_CONFIG, "digest": format!("sha256:{}", "b".repeat(64)), "size": 1},
            "layers": vec![layer; layers],
        });
        let ManifestDocument::Manifest(manifest) =
            oci::parse_manifest_document("img", None, &serde_json::to_vec(&manifest_json).unwrap()).unwrap()
        else {
            panic!("a manifest parsed as an index");
        };
        for config in [
            value,
            json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}),
        ] {
            match oci::parse_config("img", &serde_json::to_vec(&config).unwrap(), &manifest) {
                Ok(c) => {
                    prop_assert_eq!(c.rootfs.diff_ids.len(), manifest.layers.len());
                    for d in &c.rootfs.diff_ids {
                        prop_assert!(crate::content::validate_digest(d).is_ok());
                    }
                    // Chain ids of what parsed are computable.
                    prop_assert_eq!(oci::chain_ids(&c.rootfs.diff_ids).len(), layers);
                }
                Err(e) => assert_image_error(&e),
            }
        }
    }

    /// Docker `config.json` credential files: no panic, and an error never repeats a secret
    /// (a password or `auth` value of the wrong type, or not base64, or not `user:password`).
    #[test]
    fn credential_files_never_panic_nor_leak(
        bytes in vec(any::<u8>(), 0..200),
        host in ".{0,20}",
        secret_value in prop_oneof![
            Just(json!("SECRETMARK-hunter2")),
            Just(json!(["SECRETMARK-hunter2"])),
            Just(json!({"x": "SECRETMARK-hunter2"})),
            Just(json!(true)),
        ],
        field in prop_oneof![Just("auth"), Just("password"), Just("username"), Just("identitytoken")],
        auth in prop_oneof![
            Just("SECRETMARK-not-base64!!".to_owned()),
            // base64 of "SECRETMARK-no-colon" and of invalid UTF-8 holding the marker.
            Just("U0VDUkVUTUFSSy1uby1jb2xvbg==".to_owned()),
            Just("/1NFQ1JFVE1BUks=".to_owned()),
        ],
    ) {
        let _ = CredentialStore::parse(&bytes);
        let documents = [
            json!({"auths": {host.clone(): {field: secret_value}}}),
            json!({"auths": {host.clone(): secret_value}}),
            json!({"auths": {host: {"auth": auth}}}),
        ];
        for document in documents {
            if let Err(e) = CredentialStore::parse(&serde_json::to_vec(&document).unwrap()) {
                prop_assert!(!e.contains("SECRETMARK") && !e.contains("hunter2"), "leaks a secret: {}", e);
                prop_assert!(!e.is_empty());
            }
        }
    }
}
