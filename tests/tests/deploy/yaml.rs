//! Loading YAML manifests as JSON values, and the paths of the repository's
//! deploy files.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// Returns the workspace's `deploy/` directory.
pub(crate) fn deploy_dir() -> PathBuf {
    workspace_dir().join("deploy")
}

/// Returns the workspace root, the parent of the `tests` crate.
pub(crate) fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate has a parent directory")
        .to_path_buf()
}

/// Parses every non-empty document of a YAML stream.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("invalid YAML document")?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// Reads and parses every document of a YAML file.
pub(crate) fn load_documents(path: &Path) -> Result<Vec<Value>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    parse_documents(&text).with_context(|| format!("failed to parse {}", path.display()))
}

/// Reads a YAML file that must contain exactly one document.
pub(crate) fn load_single(path: &Path) -> Result<Value> {
    let mut documents = load_documents(path)?;
    if documents.len() != 1 {
        bail!(
            "{} contains {} YAML documents, expected one",
            path.display(),
            documents.len()
        );
    }
    Ok(documents.remove(0))
}

/// Returns the string at a JSON pointer, or an error naming the pointer.
pub(crate) fn str_at<'a>(value: &'a Value, pointer: &str) -> Result<&'a str> {
    match value.pointer(pointer).and_then(Value::as_str) {
        Some(text) => Ok(text),
        None => bail!("missing string at {pointer}"),
    }
}

/// Returns the array at a JSON pointer; a missing field is an empty array.
pub(crate) fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Finds the one resource of `kind` named `name`.
pub(crate) fn find_resource<'a>(
    resources: &'a [Value],
    kind: &str,
    name: &str,
) -> Result<&'a Value> {
    let mut matches = resources.iter().filter(|resource| {
        resource["kind"] == kind && resource.pointer("/metadata/name") == Some(&Value::from(name))
    });
    match (matches.next(), matches.next()) {
        (Some(resource), None) => Ok(resource),
        (None, _) => bail!("no {kind} named {name} among the rendered resources"),
        (Some(_), Some(_)) => bail!("more than one {kind} named {name}"),
    }
}

/// Finds the container or init container named `name` in a pod template spec.
pub(crate) fn find_container<'a>(pod_spec: &'a Value, name: &str) -> Result<&'a Value> {
    array_at(pod_spec, "/initContainers")
        .iter()
        .chain(array_at(pod_spec, "/containers"))
        .find(|container| container["name"] == name)
        .with_context(|| format!("no container named {name} in the pod"))
}

/// Parses a Kubernetes resource quantity with a binary or decimal suffix
/// (`16Mi`, `1Gi`, `500k`, `1024`) into bytes.
pub(crate) fn parse_quantity_bytes(quantity: &str) -> Result<u64> {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    let (digits, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|rest| (rest, *factor)))
        .unwrap_or((quantity, 1));
    let number: u64 = digits.parse().with_context(|| {
        format!("invalid quantity {quantity:?}: expected digits and a suffix such as Mi")
    })?;
    Ok(number * factor)
}
