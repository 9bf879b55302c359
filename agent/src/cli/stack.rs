//! faas-cli stack files (`stack.yml`), as `bramble deploy -f` reads them.
//!
//! The format is faas-cli's (openfaas/go-sdk `stack/schema.go`): `version: 1.0`,
//! `provider: {name: openfaas, gateway: URL}`, an ignored `configuration:` (templates), and
//! `functions.<name>` with the deploy-time keys below. Build-time keys (`lang`, `handler`,
//! `build_args`, ...) are accepted and ignored; any other key is an error naming it, so a typo
//! never deploys a function without the setting it meant to give.
//!
//! `${VAR}`, `${VAR:-default}` (unset or empty) and `${VAR-default}` (unset) are substituted
//! from the environment in every value the deployment uses (`$${` stands for a literal `${`). An
//! unset variable without a default is an error naming it, where faas-cli would silently deploy
//! an empty string. Values are substituted after YAML parsing, so a variable cannot change the
//! file's structure, and a variable in a comment or a build-only key never matters.
//!
//! The environment of a function is `environment`, then each `environment_file` in order
//! (files override the inline map, exactly as faas-cli's `compileEnvironment` merges them), then
//! `--env` flags.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bramble_gateway::types::{FunctionDeployment, FunctionResources};
use bramble_gateway::validate;
use serde_norway::{Mapping, Value};

/// The keys of a function that reach the API.
const DEPLOY_KEYS: &[&str] = &[
    "image",
    "fprocess",
    "environment",
    "environment_file",
    "secrets",
    "labels",
    "annotations",
    "limits",
    "requests",
    "readonly_root_filesystem",
    "namespace",
    "constraints",
];

/// Keys faas-cli uses only to build images: accepted, ignored.
const BUILD_KEYS: &[&str] = &[
    "lang",
    "handler",
    "build_args",
    "build_options",
    "build_secrets",
    "platforms",
    "skip_build",
    "registry_auth",
];

const TOP_KEYS: &[&str] = &["version", "provider", "functions", "configuration"];
const PROVIDER_KEYS: &[&str] = &["name", "gateway", "network"];
const RESOURCE_KEYS: &[&str] = &["memory", "cpu"];
const ENV_FILE_KEYS: &[&str] = &["environment"];

/// Deepest `${A:-${B:-...}}` nesting accepted.
const MAX_NESTING: usize = 16;

/// A parsed stack file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stack {
    /// `provider.gateway`, when given.
    pub(crate) gateway: Option<String>,
    /// The selected functions, sorted by name.
    pub(crate) functions: Vec<StackFunction>,
}

/// One function of a stack file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StackFunction {
    /// What `PUT`/`POST /system/functions` receives (before command-line overrides).
    pub(crate) deployment: FunctionDeployment,
    /// The `handler` directory, resolved against the stack file's directory (for `--tag`).
    pub(crate) handler: Option<PathBuf>,
}

/// How a stack file is read.
pub(crate) struct Options<'a> {
    /// Substitute `${VAR}` in values.
    pub(crate) envsubst: bool,
    /// Where variables come from (the process environment outside tests).
    pub(crate) lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Only the functions whose name matches this wildcard pattern (`*` matches anything).
    pub(crate) filter: Option<&'a str>,
}

/// Reads and checks a stack file. `environment_file` paths are relative to its directory.
pub(crate) fn load(path: &Path, options: &Options<'_>) -> anyhow::Result<Stack> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the stack file {}", path.display()))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse(&text, &path.display().to_string(), base, options)
}

/// Parses a stack file's text; `label` names it in errors.
pub(crate) fn parse(
    text: &str,
    label: &str,
    base: &Path,
    options: &Options<'_>,
) -> anyhow::Result<Stack> {
    let reader = Reader { label, options };
    let root = reader.yaml(text)?;
    let root = reader.mapping(&root, "")?;
    reader.known_keys(root, "", TOP_KEYS, &[])?;

    if let Some(version) = root.get("version").filter(|v| !v.is_null()) {
        let version = reader.scalar(version, "version", false)?;
        if version != "1.0" {
            return Err(reader.error(
                "version",
                format!("{version:?} is not a stack file version bramble knows (1.0)"),
            ));
        }
    }

    let provider = match root.get("provider") {
        Some(p) if !p.is_null() => reader.mapping(p, "provider")?,
        _ => {
            return Err(reader.error(
                "provider",
                "missing: a stack file names its provider (provider: {name: openfaas})",
            ));
        }
    };
    reader.known_keys(provider, "provider", PROVIDER_KEYS, &[])?;
    let name = match provider.get("name") {
        Some(v) if !v.is_null() => reader.string(v, "provider.name")?,
        _ => String::new(),
    };
    if name != "openfaas" {
        return Err(reader.error(
            "provider.name",
            format!("must be openfaas (the only provider faas-cli knows), not {name:?}"),
        ));
    }
    let gateway = match provider.get("gateway") {
        Some(v) if !v.is_null() => Some(reader.string(v, "provider.gateway")?),
        _ => None,
    }
    .filter(|g| !g.trim().is_empty());

    let functions = match root.get("functions") {
        Some(f) if !f.is_null() => reader.mapping(f, "functions")?,
        _ => return Err(reader.error("functions", "missing: the stack file defines no function")),
    };
    if functions.is_empty() {
        return Err(reader.error("functions", "the stack file defines no function"));
    }
    let mut selected = Vec::new();
    for (key, value) in functions {
        let Some(name) = key.as_str() else {
            return Err(reader.error(
                "functions",
                format!("a function name must be a string, not {}", describe(key)),
            ));
        };
        if options
            .filter
            .is_some_and(|pattern| !wildcard_match(pattern, name))
        {
            continue;
        }
        selected.push(reader.function(name, value, base)?);
    }
    if selected.is_empty() {
        let pattern = options.filter.unwrap_or_default();
        return Err(anyhow::anyhow!(
            "{label}: no function matches --filter {pattern:?} (functions: {})",
            functions
                .keys()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    selected.sort_by(|a, b| a.deployment.service.cmp(&b.deployment.service));
    Ok(Stack {
        gateway,
        functions: selected,
    })
}

/// Reads values with their place in the file, for errors that name it.
struct Reader<'a> {
    label: &'a str,
    options: &'a Options<'a>,
}

impl Reader<'_> {
    fn error(&self, path: &str, message: impl std::fmt::Display) -> anyhow::Error {
        if path.is_empty() {
            anyhow::anyhow!("{}: {message}", self.label)
        } else {
            anyhow::anyhow!("{}: {path}: {message}", self.label)
        }
    }

    fn yaml(&self, text: &str) -> anyhow::Result<Value> {
        let mut value: Value = serde_norway::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: not valid YAML: {e}", self.label))?;
        // `<<: *defaults` merge keys, as Go's YAML library applies them.
        value
            .apply_merge()
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.label))?;
        Ok(value)
    }

    fn mapping<'v>(&self, value: &'v Value, path: &str) -> anyhow::Result<&'v Mapping> {
        value.as_mapping().ok_or_else(|| {
            let what = if path.is_empty() { "the file" } else { "this" };
            self.error(
                path,
                format!(
                    "{what} must be a mapping (key: value), not {}",
                    describe(value)
                ),
            )
        })
    }

    /// Errors on keys outside `known` and `ignored`, naming all of them.
    fn known_keys(
        &self,
        mapping: &Mapping,
        path: &str,
        known: &[&str],
        ignored: &[&str],
    ) -> anyhow::Result<()> {
        let mut unknown = Vec::new();
        for key in mapping.keys() {
            match key.as_str() {
                Some(k) if known.contains(&k) || ignored.contains(&k) => {}
                Some(k) => unknown.push(k.to_owned()),
                None => unknown.push(format!("{key:?}")),
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let mut hinted = false;
        let named: Vec<String> = unknown
            .iter()
            .map(|k| match closest(k, known.iter().chain(ignored)) {
                Some(c) => {
                    hinted = true;
                    format!("{k:?} (did you mean {c:?}?)")
                }
                None => format!("{k:?}"),
            })
            .collect();
        let mut message = format!(
            "unknown key{} {}",
            if named.len() == 1 { "" } else { "s" },
            named.join(", ")
        );
        if !hinted {
            let _ = write!(message, " (known: {})", known.join(", "));
        }
        Err(self.error(path, message))
    }

    /// A scalar as text (numbers and booleans as written), substituted when `subst`.
    fn scalar(&self, value: &Value, path: &str, subst: bool) -> anyhow::Result<String> {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            other => {
                return Err(self.error(
                    path,
                    format!("expected a single value, not {}", describe(other)),
                ));
            }
        };
        if subst && self.options.envsubst {
            substitute(&text, self.options.lookup).map_err(|e| self.error(path, e))
        } else {
            Ok(text)
        }
    }

    fn string(&self, value: &Value, path: &str) -> anyhow::Result<String> {
        self.scalar(value, path, true)
    }

    fn optional_string(&self, value: Option<&Value>, path: &str) -> anyhow::Result<Option<String>> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(self.string(v, path)?)),
        }
    }

    fn bool(&self, value: Option<&Value>, path: &str) -> anyhow::Result<bool> {
        match value {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v @ Value::String(_)) => {
                let text = self.string(v, path)?;
                match text.trim() {
                    "true" | "True" | "TRUE" => Ok(true),
                    "false" | "False" | "FALSE" | "" => Ok(false),
                    other => Err(self.error(path, format!("{other:?} is not true or false"))),
                }
            }
            Some(other) => Err(self.error(
                path,
                format!("expected true or false, not {}", describe(other)),
            )),
        }
    }

    fn list(&self, value: Option<&Value>, path: &str) -> anyhow::Result<Vec<String>> {
        match value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.string(item, &format!("{path}[{i}]")))
                .collect(),
            Some(other) => Err(self.error(
                path,
                format!("expected a list (- item), not {}", describe(other)),
            )),
        }
    }

    fn map(&self, value: Option<&Value>, path: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(out);
        };
        let mapping = value.as_mapping().ok_or_else(|| {
            self.error(
                path,
                format!("expected a mapping (KEY: value), not {}", describe(value)),
            )
        })?;
        for (key, v) in mapping {
            let key = self.scalar(key, path, false)?;
            let entry = format!("{path}.{key}");
            let v = self.string(v, &entry)?;
            out.insert(key, v);
        }
        Ok(out)
    }

    fn resources(
        &self,
        value: Option<&Value>,
        path: &str,
        limits: bool,
    ) -> anyhow::Result<Option<FunctionResources>> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let mapping = self.mapping(value, path)?;
        self.known_keys(mapping, path, RESOURCE_KEYS, &[])?;
        let memory = self
            .optional_string(mapping.get("memory"), &format!("{path}.memory"))?
            .filter(|s| !s.trim().is_empty());
        let cpu = self
            .optional_string(mapping.get("cpu"), &format!("{path}.cpu"))?
            .filter(|s| !s.trim().is_empty());
        if let Some(m) = &memory {
            let bytes =
                validate::parse_memory(m).map_err(|e| self.error(&format!("{path}.memory"), e))?;
            if limits && bytes == 0 {
                return Err(self.error(
                    &format!("{path}.memory"),
                    "a memory limit must be more than 0",
                ));
            }
        }
        if let Some(c) = &cpu {
            let millis =
                validate::parse_cpu_millis(c).map_err(|e| self.error(&format!("{path}.cpu"), e))?;
            if limits && millis == 0 {
                return Err(self.error(&format!("{path}.cpu"), "a cpu limit must be more than 0"));
            }
        }
        Ok((memory.is_some() || cpu.is_some()).then_some(FunctionResources { memory, cpu }))
    }

    fn function(&self, name: &str, value: &Value, base: &Path) -> anyhow::Result<StackFunction> {
        let path = format!("functions.{name}");
        validate::function_name(name).map_err(|e| self.error(&path, e))?;
        let f = self.mapping(value, &path)?;
        self.known_keys(f, &path, DEPLOY_KEYS, BUILD_KEYS)?;
        let key = |k: &str| format!("{path}.{k}");

        let image = self
            .optional_string(f.get("image"), &key("image"))?
            .unwrap_or_default();
        if image.trim().is_empty() {
            return Err(self.error(&key("image"), "missing: every function needs an image"));
        }
        let namespace = self
            .optional_string(f.get("namespace"), &key("namespace"))?
            .filter(|s| !s.is_empty());
        if let Some(ns) = &namespace {
            validate::namespace_name(ns).map_err(|e| self.error(&key("namespace"), e))?;
        }
        let env_process = self
            .optional_string(f.get("fprocess"), &key("fprocess"))?
            .filter(|s| !s.is_empty());

        let mut env_vars = self.map(f.get("environment"), &key("environment"))?;
        for (i, file) in self
            .list(f.get("environment_file"), &key("environment_file"))?
            .iter()
            .enumerate()
        {
            let file_path = base.join(file);
            let vars = self
                .environment_file(&file_path)
                .with_context(|| format!("{}: {}[{i}]", self.label, key("environment_file")))?;
            env_vars.extend(vars);
        }
        for k in env_vars.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(self.error(
                    &key("environment"),
                    format!("{k:?} is not a variable name (non-empty, without '=')"),
                ));
            }
        }

        let secrets = self.list(f.get("secrets"), &key("secrets"))?;
        for (i, s) in secrets.iter().enumerate() {
            validate::secret_name(s)
                .map_err(|e| self.error(&format!("{}[{i}]", key("secrets")), e))?;
        }
        let deployment = FunctionDeployment {
            service: name.to_owned(),
            image,
            namespace,
            env_process,
            env_vars,
            constraints: self.list(f.get("constraints"), &key("constraints"))?,
            secrets,
            labels: self.map(f.get("labels"), &key("labels"))?,
            annotations: self.map(f.get("annotations"), &key("annotations"))?,
            limits: self.resources(f.get("limits"), &key("limits"), true)?,
            requests: self.resources(f.get("requests"), &key("requests"), false)?,
            read_only_root_filesystem: self.bool(
                f.get("readonly_root_filesystem"),
                &key("readonly_root_filesystem"),
            )?,
        };
        // Build-only: a variable it names is substituted when it can be, and never an error.
        let handler = f.get("handler").and_then(Value::as_str).map(|raw| {
            let text = if self.options.envsubst {
                substitute(raw, self.options.lookup).unwrap_or_else(|_| raw.to_owned())
            } else {
                raw.to_owned()
            };
            base.join(text)
        });
        Ok(StackFunction {
            deployment,
            handler,
        })
    }

    /// An `environment_file`: a YAML file with an `environment:` map.
    fn environment_file(&self, path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let label = path.display().to_string();
        let reader = Reader {
            label: &label,
            options: self.options,
        };
        let root = reader.yaml(&text)?;
        if root.is_null() {
            return Ok(BTreeMap::new());
        }
        let root = reader.mapping(&root, "")?;
        reader.known_keys(root, "", ENV_FILE_KEYS, &[])?;
        reader.map(root.get("environment"), "environment")
    }
}

/// What a YAML value is, for errors.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The known key closest to `key`, if it is a plausible typo.
fn closest<'k>(key: &str, known: impl Iterator<Item = &'k &'k str>) -> Option<&'k str> {
    known
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            let deletion = previous[j + 1] + 1;
            let insertion = current[j] + 1;
            current.push(substitution.min(deletion).min(insertion));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

/// faas-cli's `--filter`: `*` matches any run of characters, everything else itself.
pub(crate) fn wildcard_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return false,
    };
    let Some(mut remaining) = name.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return true;
    };
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// Substitutes `${VAR}`, `${VAR:-default}` and `${VAR-default}`; `$${` is a literal `${`.
pub(crate) fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    substitute_at(text, lookup, 0)
}

fn substitute_at(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!("variables nested more than {MAX_NESTING} deep"));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let end = matching_brace(body_start)
            .ok_or_else(|| format!("{} has no closing }}", excerpt(tail)))?;
        let body = &body_start[..end];
        out.push_str(&expand(body, lookup, depth)?);
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The byte offset of the `}` closing a `${` whose body starts `text`.
fn matching_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn excerpt(text: &str) -> String {
    let short: String = text.chars().take(24).collect();
    if short.len() < text.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

/// Expands the inside of `${...}`.
fn expand(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, String> {
    let name_len = body
        .char_indices()
        .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(body.len(), |(i, _)| i);
    let (name, operator) = body.split_at(name_len);
    if name.is_empty() {
        return Err(format!(
            "${{{body}}} is not a variable (${{NAME}}, ${{NAME:-default}})"
        ));
    }
    if operator.is_empty() {
        return lookup(name).ok_or_else(|| {
            format!(
                "${{{name}}} is not set (set it, give a default with ${{{name}:-value}}, or pass --envsubst=false)"
            )
        });
    }
    let (default, when_empty) = if let Some(d) = operator.strip_prefix(":-") {
        (d, true)
    } else if let Some(d) = operator.strip_prefix('-') {
        (d, false)
    } else {
        return Err(format!(
            "${{{body}}}: only ${{{name}}}, ${{{name}:-default}} and ${{{name}-default}} are supported"
        ));
    };
    match lookup(name) {
        Some(value) if !(when_empty && value.is_empty()) => Ok(value),
        _ => substitute_at(default, lookup, depth + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| vars.get(k).cloned()
    }

    fn parse_with(text: &str, base: &Path, vars: &[(&str, &str)]) -> anyhow::Result<Stack> {
        let lookup = env(vars);
        let options = Options {
            envsubst: true,
            lookup: &lookup,
            filter: None,
        };
        parse(text, "stack.yml", base, &options)
    }

    fn err(text: &str, vars: &[(&str, &str)]) -> String {
        format!("{:#}", parse_with(text, Path::new("."), vars).unwrap_err())
    }

    const REALISTIC: &str = r#"
version: 1.0
provider:
  name: openfaas
  gateway: ${GATEWAY:-http://127.0.0.1:8080}
configuration:
  templates:
    - name: golang-middleware
      source: https://github.com/openfaas/golang-http-template
  copy:
    - ./common
x-defaults: &defaults
functions:
  resize:
    lang: golang-middleware
    handler: ./resize
    image: ${REGISTRY:-ghcr.io/me}/resize:${TAG}
    build_args:
      GO111MODULE: "on"
    platforms: linux/arm64
    skip_build: false
    build_options: [dev]
    fprocess: ./handler
    environment:
      write_timeout: 10s
      PORT: 8080
      DEBUG: true
      DB_HOST: ${DB_HOST}
    secrets:
      - api-key
    labels:
      com.openfaas.scale.zero: "true"
    annotations:
      topic: images
    limits:
      memory: 64Mi
      cpu: 0.5
    requests:
      memory: 32Mi
      cpu: 100m
    readonly_root_filesystem: true
    namespace: openfaas-fn
    constraints:
      - "node.platform.os == linux"
  hello:
    image: hello:latest
"#;

    #[test]
    fn realistic_stack_file_with_templates_and_build_keys() {
        // x-defaults is not a faas-cli key: an error naming it.
        let e = err(REALISTIC, &[("TAG", "1.2"), ("DB_HOST", "db.lan")]);
        assert!(e.contains("stack.yml: unknown key \"x-defaults\""), "{e}");

        let text = REALISTIC.replace("x-defaults: &defaults\n", "");
        let stack = parse_with(
            &text,
            Path::new("/srv/fns"),
            &[("TAG", "1.2"), ("DB_HOST", "db.lan")],
        )
        .unwrap();
        assert_eq!(stack.gateway.as_deref(), Some("http://127.0.0.1:8080"));
        let names: Vec<&str> = stack
            .functions
            .iter()
            .map(|f| f.deployment.service.as_str())
            .collect();
        assert_eq!(names, ["hello", "resize"]);
        let resize = &stack.functions[1];
        assert_eq!(
            resize.handler.as_deref(),
            Some(Path::new("/srv/fns/./resize"))
        );
        let d = &resize.deployment;
        assert_eq!(d.image, "ghcr.io/me/resize:1.2");
        assert_eq!(d.env_process.as_deref(), Some("./handler"));
        assert_eq!(d.env_vars["PORT"], "8080");
        assert_eq!(d.env_vars["DEBUG"], "true");
        assert_eq!(d.env_vars["DB_HOST"], "db.lan");
        assert_eq!(d.env_vars["write_timeout"], "10s");
        assert_eq!(d.secrets, ["api-key"]);
        assert_eq!(d.labels["com.openfaas.scale.zero"], "true");
        assert_eq!(d.annotations["topic"], "images");
        assert_eq!(
            d.limits,
            Some(FunctionResources {
                memory: Some("64Mi".into()),
                cpu: Some("0.5".into())
            })
        );
        assert_eq!(
            d.requests,
            Some(FunctionResources {
                memory: Some("32Mi".into()),
                cpu: Some("100m".into())
            })
        );
        assert!(d.read_only_root_filesystem);
        assert_eq!(d.namespace.as_deref(), Some("openfaas-fn"));
        assert_eq!(d.constraints, ["node.platform.os == linux"]);
        let hello = &stack.functions[0].deployment;
        assert_eq!(
            (
                hello.image.as_str(),
                hello.limits.is_none(),
                hello.read_only_root_filesystem
            ),
            ("hello:latest", true, false)
        );
    }

    #[test]
    fn substitution_defaults_and_errors() {
        let vars = env(&[("A", "a"), ("EMPTY", "")]);
        let s = |t: &str| substitute(t, &vars);
        assert_eq!(s("x-${A}-y").unwrap(), "x-a-y");
        assert_eq!(s("${UNSET:-d}").unwrap(), "d");
        assert_eq!(s("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(s("${EMPTY-d}").unwrap(), "");
        assert_eq!(s("${UNSET-d}").unwrap(), "d");
        assert_eq!(s("${A:-d}").unwrap(), "a");
        assert_eq!(s("${UNSET:-${A}}").unwrap(), "a");
        assert_eq!(s("${UNSET:-}").unwrap(), "");
        assert_eq!(s("cost $5, $HOME, $${A}").unwrap(), "cost $5, $HOME, ${A}");
        assert_eq!(s("${EMPTY}").unwrap(), "");
        assert_eq!(s("ünïcode ${A} ✓").unwrap(), "ünïcode a ✓");
        assert!(s("${UNSET}").unwrap_err().contains("${UNSET} is not set"));
        assert!(s("${A").unwrap_err().contains("no closing }"));
        assert!(s("${}").unwrap_err().contains("is not a variable"));
        assert!(s("${A:=x}").unwrap_err().contains("only ${A}"));
        assert!(s("${1A}").unwrap_err().contains("is not a variable"));
        let deep = "${U:-".repeat(40) + &"}".repeat(40);
        assert!(s(&deep).unwrap_err().contains("nested"));
    }

    #[test]
    fn unset_variable_names_the_function_key_and_variable() {
        let text = "provider: {name: openfaas}\nfunctions:\n  f:\n    image: x\n    environment:\n      DB: ${DB_HOST}\n";
        let e = err(text, &[]);
        assert!(
            e.starts_with("stack.yml: functions.f.environment.DB: ${DB_HOST} is not set"),
            "{e}"
        );
        // Not substituted without envsubst; not looked at in build-only keys.
        let lookup = env(&[]);
        let options = Options {
            envsubst: false,
            lookup: &lookup,
            filter: None,
        };
        let stack = parse(text, "stack.yml", Path::new("."), &options).unwrap();
        assert_eq!(stack.functions[0].deployment.env_vars["DB"], "${DB_HOST}");
        let text = "provider: {name: openfaas}\n# ${IN_A_COMMENT}\nfunctions:\n  f:\n    image: x\n    lang: ${UNSET_LANG}\n    handler: ./${UNSET_DIR}\n";
        assert!(parse_with(text, Path::new("."), &[]).is_ok());
    }

    #[test]
    fn environment_files_are_merged_in_order_over_the_inline_map() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("env")).unwrap();
        std::fs::write(
            dir.path().join("env/common.yml"),
            "environment:\n  A: from-common\n  B: from-common\n  C: from-common\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("prod.yml"),
            "environment:\n  B: from-prod\n  HOST: ${HOST:-h}\n",
        )
        .unwrap();
        let text = "provider: {name: openfaas}\nfunctions:\n  f:\n    image: x\n    environment:\n      C: inline\n      D: inline\n    environment_file:\n      - env/common.yml\n      - prod.yml\n";
        let stack = parse_with(text, dir.path(), &[]).unwrap();
        let env = &stack.functions[0].deployment.env_vars;
        assert_eq!(env["A"], "from-common");
        assert_eq!(
            env["B"], "from-prod",
            "a later file overrides an earlier one"
        );
        assert_eq!(
            env["C"], "from-common",
            "files override the inline map (faas-cli)"
        );
        assert_eq!(env["D"], "inline");
        assert_eq!(env["HOST"], "h");

        let e = format!(
            "{:#}",
            parse_with(&text.replace("prod.yml", "missing.yml"), dir.path(), &[]).unwrap_err()
        );
        assert!(
            e.contains("functions.f.environment_file[1]") && e.contains("missing.yml"),
            "{e}"
        );
        std::fs::write(dir.path().join("prod.yml"), "environmnet:\n  B: x\n").unwrap();
        let e = format!("{:#}", parse_with(text, dir.path(), &[]).unwrap_err());
        assert!(e.contains("prod.yml: unknown key \"environmnet\""), "{e}");
    }

    #[test]
    fn unknown_keys_are_named_with_a_hint() {
        let e = err(
            "provider: {name: openfaas}\nfunctions:\n  f:\n    imgae: x\n    image: x\n    enviroment: {}\n",
            &[],
        );
        assert!(
            e.contains(
                "stack.yml: functions.f: unknown keys \"imgae\" (did you mean \"image\"?), \"enviroment\" (did you mean \"environment\"?)"
            ),
            "{e}"
        );
        let e = err(
            "provider: {name: openfaas}\nfunctions:\n  f:\n    image: x\n    replicas: 3\n",
            &[],
        );
        assert!(
            e.contains("unknown key \"replicas\" (known: image, fprocess"),
            "{e}"
        );
        let e = err(
            "provider: {name: openfaas}\nfunctions:\n  f:\n    image: x\n    limits: {memory: 1Mi, gpu: 1}\n",
            &[],
        );
        assert!(e.contains("functions.f.limits: unknown key \"gpu\""), "{e}");
        let e = err(
            "provider: {name: openfaas, gatway: x}\nfunctions: {f: {image: x}}\n",
            &[],
        );
        assert!(
            e.contains("provider: unknown key \"gatway\" (did you mean \"gateway\"?)"),
            "{e}"
        );
    }

    #[test]
    fn limits_and_value_errors_name_the_function_and_key() {
        let base = "provider: {name: openfaas}\nfunctions:\n  f:\n    image: x\n";
        let cases = [
            (
                "    limits:\n      memory: 12Zi\n",
                "functions.f.limits.memory: ",
            ),
            ("    limits:\n      cpu: lots\n", "functions.f.limits.cpu: "),
            (
                "    limits:\n      memory: 0\n",
                "functions.f.limits.memory: a memory limit must be more than 0",
            ),
            (
                "    limits: 64Mi\n",
                "functions.f.limits: this must be a mapping",
            ),
            (
                "    secrets: api-key\n",
                "functions.f.secrets: expected a list",
            ),
            ("    secrets: [\"../x\"]\n", "functions.f.secrets[0]: "),
            (
                "    environment: [A=1]\n",
                "functions.f.environment: expected a mapping",
            ),
            (
                "    environment: {A: [1]}\n",
                "functions.f.environment.A: expected a single value",
            ),
            (
                "    readonly_root_filesystem: maybe\n",
                "functions.f.readonly_root_filesystem: \"maybe\" is not true or false",
            ),
            ("    namespace: Bad_NS\n", "functions.f.namespace: "),
        ];
        for (extra, needle) in cases {
            let e = err(&format!("{base}{extra}"), &[]);
            assert!(
                e.starts_with(&format!("stack.yml: {needle}")),
                "{extra}: {e}"
            );
        }
        // Requests may be 0; a cpu of 0.5 (a YAML number) is fine.
        let stack = parse_with(
            &format!("{base}    requests: {{cpu: 0}}\n    limits: {{cpu: 0.5}}\n"),
            Path::new("."),
            &[],
        )
        .unwrap();
        assert_eq!(
            stack.functions[0]
                .deployment
                .limits
                .as_ref()
                .and_then(|l| l.cpu.as_deref()),
            Some("0.5")
        );
        let ro = parse_with(
            &format!("{base}    readonly_root_filesystem: ${{RO:-true}}\n"),
            Path::new("."),
            &[],
        )
        .unwrap();
        assert!(ro.functions[0].deployment.read_only_root_filesystem);
    }

    #[test]
    fn file_level_errors() {
        let cases = [
            (
                "functions: {f: {image: x}}\n",
                "stack.yml: provider: missing",
            ),
            (
                "provider: {name: faas}\nfunctions: {f: {image: x}}\n",
                "stack.yml: provider.name: must be openfaas",
            ),
            (
                "version: 2.0\nprovider: {name: openfaas}\nfunctions: {f: {image: x}}\n",
                "stack.yml: version: \"2.0\"",
            ),
            (
                "provider: {name: openfaas}\n",
                "stack.yml: functions: missing",
            ),
            (
                "provider: {name: openfaas}\nfunctions: {}\n",
                "stack.yml: functions: the stack file defines no function",
            ),
            (
                "provider: {name: openfaas}\nfunctions: {f: {lang: go}}\n",
                "stack.yml: functions.f.image: missing",
            ),
            (
                "provider: {name: openfaas}\nfunctions: {Bad/Name: {image: x}}\n",
                "stack.yml: functions.Bad/Name: ",
            ),
            (
                "provider: {name: openfaas}\nfunctions:\n  f: {image: x}\n  f: {image: y}\n",
                "stack.yml: not valid YAML: ",
            ),
            ("provider: [\n", "stack.yml: not valid YAML: "),
            ("- a\n- b\n", "stack.yml: the file must be a mapping"),
            ("", "stack.yml: the file must be a mapping"),
        ];
        for (text, needle) in cases {
            let e = err(text, &[]);
            assert!(e.starts_with(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn filter_selects_functions_by_wildcard() {
        let text = "provider: {name: openfaas}\nfunctions:\n  img-resize: {image: a}\n  img-crop: {image: b}\n  hello: {image: c}\n";
        let lookup = env(&[]);
        let run = |filter: &str| {
            let options = Options {
                envsubst: true,
                lookup: &lookup,
                filter: Some(filter),
            };
            parse(text, "stack.yml", Path::new("."), &options).map(|s| {
                s.functions
                    .into_iter()
                    .map(|f| f.deployment.service)
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(run("hello").unwrap(), ["hello"]);
        assert_eq!(run("img-*").unwrap(), ["img-crop", "img-resize"]);
        assert_eq!(run("*crop").unwrap(), ["img-crop"]);
        assert_eq!(run("*").unwrap().len(), 3);
        let e = format!("{:#}", run("nope").unwrap_err());
        assert!(e.contains("no function matches --filter \"nope\""), "{e}");
        assert!(wildcard_match("a*b*c", "aXbYc") && !wildcard_match("a*b*c", "aXcYb"));
        assert!(wildcard_match("ab*b", "abb") && !wildcard_match("ab*ab", "ab"));
    }

    #[test]
    fn merge_keys_and_anchors_work_like_faas_cli() {
        let text = "provider: {name: openfaas}\nfunctions:\n  a: &base\n    image: x\n    environment: {A: '1'}\n  b:\n    <<: *base\n    image: y\n";
        let stack = parse_with(text, Path::new("."), &[]).unwrap();
        let b = &stack.functions[1].deployment;
        assert_eq!((b.image.as_str(), b.env_vars["A"].as_str()), ("y", "1"));
    }
}
