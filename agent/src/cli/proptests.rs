//! Property tests of the stack file parser (`bramble deploy -f stack.yml`): any text, and
//! stack files shaped right with hostile values, `${VAR}` substitutions and YAML aliases.
//! An error names the file (and the key); nothing panics; an alias bomb is refused quickly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::stack::{Options, parse};

fn parse_text(text: &str) -> anyhow::Result<super::stack::Stack> {
    let lookup = |name: &str| (name == "SET").then(|| "value".to_owned());
    let options = Options {
        envsubst: true,
        lookup: &lookup,
        filter: None,
    };
    parse(text, "stack.yml", Path::new("/nonexistent"), &options)
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9:/._-]{0,20}",
        "\\$\\{(SET|UNSET|[A-Z]{0,3})(:?-[a-z${}]{0,6})?\\}?",
        "\\$\\{[$\\{\\}A-Z:-]{0,30}",
        "'[ -~]{0,20}'",
        ".{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[0-9.eE+-]{1,8}",
        Just("~".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ]
}

fn function() -> impl Strategy<Value = String> {
    let map = || btree_map("[a-zA-Z0-9._/-]{1,12}", scalar(), 0..3);
    (
        prop_oneof![
            "[a-z0-9-]{1,12}",
            ".{0,10}".prop_map(|s| serde_json::to_string(&s).unwrap())
        ],
        scalar(),
        map(),
        map(),
        map(),
        vec(scalar(), 0..3),
        prop::option::of((scalar(), scalar())),
        prop_oneof![
            Just("image"),
            Just("lang"),
            Just("handler"),
            Just("readonly_root_filesystem"),
            Just("bogus"),
            Just("constraints")
        ],
        scalar(),
    )
        .prop_map(
            |(name, image, env, labels, annotations, secrets, limits, extra_key, extra)| {
                let block = |title: &str, m: &std::collections::BTreeMap<String, String>| {
                    let mut out = format!("    {title}:\n");
                    for (k, v) in m {
                        out.push_str(&format!(
                            "      {}: {v}\n",
                            serde_json::to_string(k).unwrap()
                        ));
                    }
                    out
                };
                let mut f = format!("  {name}:\n    image: {image}\n");
                f.push_str(&block("environment", &env));
                f.push_str(&block("labels", &labels));
                f.push_str(&block("annotations", &annotations));
                f.push_str("    secrets:\n");
                for s in &secrets {
                    f.push_str(&format!("      - {s}\n"));
                }
                if let Some((memory, cpu)) = limits {
                    f.push_str(&format!(
                        "    limits:\n      memory: {memory}\n      cpu: {cpu}\n"
                    ));
                }
                f.push_str(&format!("    {extra_key}: {extra}\n"));
                f
            },
        )
}

fn assert_clear(e: &anyhow::Error) -> Result<(), TestCaseError> {
    let text = format!("{e:#}");
    prop_assert!(
        text.contains("stack.yml"),
        "the error does not name the file: {}",
        text
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(512), failure_persistence: None, ..ProptestConfig::default() })]

    /// Any text at all.
    #[test]
    fn stack_files_from_arbitrary_text(text in prop_oneof![".{0,300}", "[a-z:{}\\[\\]&*!|>#\n -]{0,200}"]) {
        if let Err(e) = parse_text(&text) {
            assert_clear(&e)?;
        }
    }

    /// Stack files shaped right, with hostile values and substitutions: an error names the
    /// file; what parses has valid function names and images.
    #[test]
    fn stack_files_shaped_right(
        version in prop_oneof![Just("1.0".to_owned()), Just("'1.0'".to_owned()), ".{0,4}"],
        provider in prop_oneof![Just("openfaas".to_owned()), ".{0,8}"],
        gateway in scalar(),
        functions in vec(function(), 0..4),
    ) {
        let mut text = format!("version: {version}\nprovider:\n  name: {provider}\n  gateway: {gateway}\nfunctions:\n");
        for f in &functions {
            text.push_str(f);
        }
        match parse_text(&text) {
            Ok(stack) => {
                for f in &stack.functions {
                    prop_assert!(bramble_gateway::validate::function_name(&f.deployment.service).is_ok());
                    prop_assert!(!f.deployment.image.trim().is_empty());
                }
            }
            Err(e) => assert_clear(&e)?,
        }
    }
}

/// A "billion laughs" document (aliases nested nine deep) is refused at once instead of
/// expanding into gigabytes.
#[test]
fn alias_bombs_are_refused_quickly() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (name, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        text.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    text.push_str("version: 1.0\nprovider: {name: openfaas}\nfunctions:\n  f:\n    image: x\n    annotations: {bomb: *i}\n");
    let started = std::time::Instant::now();
    let result = parse_text(&text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let e = format!("{:#}", result.expect_err("an alias bomb parsed"));
    assert!(e.contains("stack.yml"), "{e}");
}
