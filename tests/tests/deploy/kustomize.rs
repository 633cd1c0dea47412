//! A small kustomize renderer for the kustomizations under `deploy/`, so the
//! tests can render them on machines without a kustomize binary.
//!
//! It implements what those files use: `resources` (files and directories),
//! `components`, and `patches` given by `path` or inline `patch`, either
//! strategic merge patches or JSON patches (RFC 6902), with targets selected
//! by group, version, kind and exact name. Any other field is an error, not
//! ignored. Strategic merge uses the merge keys of the pod fields listed in
//! [`merge_key`]; other lists are replaced, as kustomize does for lists
//! without a merge key. The tests compare its output with
//! `kubectl kustomize` where kubectl is installed.

use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};

use super::yaml;

const KUSTOMIZATION_FIELDS: &[&str] = &["apiVersion", "kind", "resources", "components", "patches"];
const PATCH_FIELDS: &[&str] = &["path", "patch", "target"];
const TARGET_FIELDS: &[&str] = &["group", "version", "kind", "name"];

/// Renders the kustomization in `dir` into its resources, in kustomize's
/// order of accumulation.
pub(crate) fn render(dir: &Path) -> Result<Vec<Value>> {
    let kustomization = read_kustomization(dir)?;
    ensure!(
        kustomization["kind"] == "Kustomization",
        "{} is a {}, not a Kustomization",
        dir.display(),
        kustomization["kind"]
    );
    let mut resources = Vec::new();
    accumulate(dir, &kustomization, &mut resources)?;
    Ok(resources)
}

fn read_kustomization(dir: &Path) -> Result<Value> {
    let path = dir.join("kustomization.yaml");
    let kustomization = yaml::load_single(&path)?;
    let Some(fields) = kustomization.as_object() else {
        bail!("{} is not a mapping", path.display());
    };
    for field in fields.keys() {
        ensure!(
            KUSTOMIZATION_FIELDS.contains(&field.as_str()),
            "{}: field {field} is not supported by the test renderer",
            path.display()
        );
    }
    Ok(kustomization)
}

/// Adds the resources of a Kustomization or Component to `resources`, then
/// applies its components and its patches to everything accumulated so far.
fn accumulate(dir: &Path, kustomization: &Value, resources: &mut Vec<Value>) -> Result<()> {
    for entry in string_list(kustomization, "resources")? {
        let path = dir.join(entry);
        if path.is_dir() {
            resources.extend(render(&path)?);
        } else {
            resources.extend(yaml::load_documents(&path)?);
        }
    }

    for entry in string_list(kustomization, "components")? {
        let component_dir = dir.join(entry);
        let component = read_kustomization(&component_dir)?;
        ensure!(
            component["kind"] == "Component",
            "{} is listed as a component but is a {}",
            component_dir.display(),
            component["kind"]
        );
        accumulate(&component_dir, &component, resources)?;
    }

    for patch in yaml::array_at(kustomization, "/patches") {
        apply_patch(dir, patch, resources)
            .with_context(|| format!("applying a patch of {}", dir.display()))?;
    }
    Ok(())
}

fn string_list<'a>(kustomization: &'a Value, field: &str) -> Result<Vec<&'a str>> {
    yaml::array_at(kustomization, &format!("/{field}"))
        .iter()
        .map(|entry| {
            entry
                .as_str()
                .with_context(|| format!("{field} entry {entry} is not a string"))
        })
        .collect()
}

fn apply_patch(dir: &Path, entry: &Value, resources: &mut [Value]) -> Result<()> {
    let Some(fields) = entry.as_object() else {
        bail!("patch entry {entry} is not a mapping");
    };
    for field in fields.keys() {
        ensure!(
            PATCH_FIELDS.contains(&field.as_str()),
            "patch field {field} is not supported by the test renderer"
        );
    }
    let text = match (entry.get("path"), entry.get("patch")) {
        (Some(Value::String(path)), None) => {
            let path = dir.join(path);
            fs::read_to_string(&path)
                .with_context(|| format!("failed to read patch {}", path.display()))?
        }
        (None, Some(Value::String(inline))) => inline.clone(),
        _ => bail!("a patch needs exactly one of path and patch: {entry}"),
    };
    let mut documents = yaml::parse_documents(&text)?;
    ensure!(documents.len() == 1, "a patch must be one YAML document");
    let patch = documents.remove(0);
    let target = entry.get("target");

    let mut matched = 0;
    for resource in resources.iter_mut() {
        let selected = match target {
            Some(target) => matches_target(resource, target)?,
            None => same_resource(resource, &patch),
        };
        if !selected {
            continue;
        }
        matched += 1;
        match &patch {
            Value::Array(operations) => apply_json_patch(resource, operations)?,
            Value::Object(_) => {
                let mut patch = patch.clone();
                if target.is_some() {
                    // kustomize applies a targeted patch to every selected
                    // resource whatever name the patch itself carries.
                    if let Some(metadata) = patch
                        .pointer_mut("/metadata")
                        .and_then(Value::as_object_mut)
                    {
                        metadata.remove("name");
                    }
                }
                strategic_merge(resource, &patch, None)?;
            }
            _ => bail!("a patch must be a mapping or a list of operations"),
        }
    }
    ensure!(matched > 0, "the patch matches no resource: {entry}");
    Ok(())
}

fn matches_target(resource: &Value, target: &Value) -> Result<bool> {
    let Some(fields) = target.as_object() else {
        bail!("patch target {target} is not a mapping");
    };
    let api_version = resource["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    for (field, wanted) in fields {
        ensure!(
            TARGET_FIELDS.contains(&field.as_str()),
            "target field {field} is not supported by the test renderer"
        );
        let wanted = wanted.as_str().unwrap_or_default();
        ensure!(
            !wanted.contains(|c: char| "^$.*+?()[]{}|\\".contains(c)),
            "target {field} {wanted:?} is a regular expression; the test renderer compares names exactly"
        );
        let actual = match field.as_str() {
            "group" => group,
            "version" => version,
            "kind" => resource["kind"].as_str().unwrap_or_default(),
            _ => resource
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        };
        if actual != wanted {
            return Ok(false);
        }
    }
    Ok(true)
}

fn same_resource(resource: &Value, patch: &Value) -> bool {
    resource["apiVersion"] == patch["apiVersion"]
        && resource["kind"] == patch["kind"]
        && resource.pointer("/metadata/name") == patch.pointer("/metadata/name")
}

/// Returns the field that identifies the items of a list in a strategic
/// merge patch, for the pod and container fields the manifests patch.
fn merge_key(field: Option<&str>) -> Option<&'static str> {
    match field? {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Merges `patch` into `target`: mappings merge key by key (`null` removes
/// a key), lists with a merge key merge item by item and append new items,
/// and everything else is replaced.
fn strategic_merge(target: &mut Value, patch: &Value, field: Option<&str>) -> Result<()> {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => merge_mappings(target, patch),
        (Value::Array(target), Value::Array(patch)) => {
            let Some(key) = merge_key(field) else {
                *target = patch.clone();
                return Ok(());
            };
            for item in patch {
                let id = &item[key];
                ensure!(
                    !id.is_null(),
                    "list item without its merge key {key}: {item}"
                );
                match target.iter_mut().find(|existing| &existing[key] == id) {
                    Some(existing) => strategic_merge(existing, item, None)?,
                    None => target.push(item.clone()),
                }
            }
            Ok(())
        }
        (target, patch) => {
            *target = patch.clone();
            Ok(())
        }
    }
}

fn merge_mappings(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<()> {
    for (key, value) in patch {
        ensure!(
            !key.starts_with('$'),
            "patch directive {key} is not supported by the test renderer"
        );
        if value.is_null() {
            target.remove(key);
        } else if let Some(existing) = target.get_mut(key) {
            strategic_merge(existing, value, Some(key))?;
        } else {
            target.insert(key.clone(), value.clone());
        }
    }
    Ok(())
}

/// Applies JSON patch operations (RFC 6902) in order.
fn apply_json_patch(document: &mut Value, operations: &[Value]) -> Result<()> {
    for operation in operations {
        let op = yaml::str_at(operation, "/op")?;
        let path = yaml::str_at(operation, "/path")?;
        match op {
            "add" => add(document, path, value_of(operation)?)?,
            "remove" => {
                remove(document, path)?;
            }
            "replace" => {
                remove(document, path)?;
                add(document, path, value_of(operation)?)?;
            }
            "move" => {
                let value = remove(document, yaml::str_at(operation, "/from")?)?;
                add(document, path, value)?;
            }
            "copy" => {
                let from = yaml::str_at(operation, "/from")?;
                let value = document
                    .pointer(from)
                    .with_context(|| format!("copy from missing path {from}"))?
                    .clone();
                add(document, path, value)?;
            }
            "test" => {
                let expected = value_of(operation)?;
                let actual = document.pointer(path);
                ensure!(
                    actual == Some(&expected),
                    "test operation failed: {path} is {actual:?}, expected {expected}"
                );
            }
            other => bail!("unknown JSON patch operation {other:?}"),
        }
    }
    Ok(())
}

fn value_of(operation: &Value) -> Result<Value> {
    operation
        .get("value")
        .cloned()
        .with_context(|| format!("operation without a value: {operation}"))
}

/// Splits a JSON pointer into its parent pointer and its last token, with
/// `~1` and `~0` unescaped in the token.
fn split_pointer(path: &str) -> Result<(&str, String)> {
    let Some((parent, last)) = path.rsplit_once('/') else {
        bail!("invalid JSON pointer {path:?}");
    };
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(document: &mut Value, path: &str, value: Value) -> Result<()> {
    let (parent_path, token) = split_pointer(path)?;
    let parent = document
        .pointer_mut(parent_path)
        .with_context(|| format!("add to {path}: {parent_path} does not exist"))?;
    match parent {
        Value::Object(fields) => {
            fields.insert(token, value);
        }
        Value::Array(items) if token == "-" => items.push(value),
        Value::Array(items) => {
            let index: usize = token
                .parse()
                .with_context(|| format!("add to {path}: {token} is not an index"))?;
            ensure!(index <= items.len(), "add to {path}: index out of range");
            items.insert(index, value);
        }
        _ => bail!("add to {path}: {parent_path} is neither a mapping nor a list"),
    }
    Ok(())
}

fn remove(document: &mut Value, path: &str) -> Result<Value> {
    let (parent_path, token) = split_pointer(path)?;
    let parent = document
        .pointer_mut(parent_path)
        .with_context(|| format!("remove {path}: {parent_path} does not exist"))?;
    let removed = match parent {
        Value::Object(fields) => fields.remove(&token),
        Value::Array(items) => match token.parse::<usize>() {
            Ok(index) if index < items.len() => Some(items.remove(index)),
            _ => None,
        },
        _ => None,
    };
    removed.with_context(|| format!("remove {path}: no such field or index"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_patch_moves_and_tests() {
        let mut document = json!({"a": [1, 2], "b": []});
        let operations = json!([
            {"op": "test", "path": "/a/0", "value": 1},
            {"op": "move", "from": "/a/0", "path": "/b/0"},
            {"op": "add", "path": "/c~1d", "value": "x"},
        ]);
        apply_json_patch(&mut document, operations.as_array().unwrap()).unwrap();
        assert_eq!(document, json!({"a": [2], "b": [1], "c/d": "x"}));
    }

    #[test]
    fn json_patch_test_failure_stops() {
        let mut document = json!({"a": 1});
        let operations = json!([{"op": "test", "path": "/a", "value": 2}]);
        assert!(apply_json_patch(&mut document, operations.as_array().unwrap()).is_err());
    }

    #[test]
    fn strategic_merge_merges_by_name() {
        let mut target = json!({"containers": [{"name": "app", "image": "a"}]});
        let patch = json!({"containers": [
            {"name": "app", "env": [{"name": "X", "value": "1"}]},
            {"name": "sidecar", "image": "s"},
        ]});
        strategic_merge(&mut target, &patch, None).unwrap();
        assert_eq!(
            target,
            json!({"containers": [
                {"name": "app", "image": "a", "env": [{"name": "X", "value": "1"}]},
                {"name": "sidecar", "image": "s"},
            ]})
        );
    }

    #[test]
    fn strategic_merge_replaces_plain_lists() {
        let mut target = json!({"args": ["a", "b"]});
        strategic_merge(&mut target, &json!({"args": ["c"]}), None).unwrap();
        assert_eq!(target, json!({"args": ["c"]}));
    }
}
