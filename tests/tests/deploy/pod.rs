//! What the tests read from the example pods: meshcert's image and settings,
//! volumes by mount path, the Prometheus configuration and alert rules.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{kustomize, yaml};

/// The binaries of the meshcert image, installed in `/usr/local/bin`.
pub(crate) const MESHCERT_BINARIES: [&str; 2] = ["meshcert-init", "meshcert-refresher"];

/// Returns whether `image` names meshcert's image (repository `.../meshcert`,
/// any registry and tag).
pub(crate) fn is_meshcert_image(image: &str) -> bool {
    let repository = image.split('@').next().unwrap_or_default();
    let name = repository.rsplit('/').next().unwrap_or_default();
    name.split(':').next() == Some("meshcert")
}

/// Returns the container's environment variables that have a literal value.
pub(crate) fn literal_env(container: &Value) -> BTreeMap<String, String> {
    yaml::array_at(container, "/env")
        .iter()
        .filter_map(|entry| {
            Some((
                entry["name"].as_str()?.to_string(),
                entry["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Returns the pod volume that `container` mounts at `mount_path`.
pub(crate) fn volume_mounted_at<'a>(
    pod_spec: &'a Value,
    container: &Value,
    mount_path: &str,
) -> Result<&'a Value> {
    let mount = yaml::array_at(container, "/volumeMounts")
        .iter()
        .find(|mount| mount["mountPath"] == mount_path)
        .with_context(|| format!("no volume mounted at {mount_path}"))?;
    yaml::array_at(pod_spec, "/volumes")
        .iter()
        .find(|volume| volume["name"] == mount["name"])
        .with_context(|| format!("volume {} is mounted but not defined", mount["name"]))
}

/// Parses `prometheus.yml` of the rendered `prometheus-config` ConfigMap.
pub(crate) fn prometheus_config(resources: &[Value]) -> Result<Value> {
    let config_map = yaml::find_resource(resources, "ConfigMap", "prometheus-config")?;
    let text = yaml::str_at(config_map, "/data/prometheus.yml")?;
    let mut documents = yaml::parse_documents(text)?;
    anyhow::ensure!(
        documents.len() == 1,
        "prometheus.yml must be one YAML document"
    );
    Ok(documents.remove(0))
}

/// One alerting rule of the example PrometheusRule.
#[derive(Debug)]
pub(crate) struct AlertRule {
    pub(crate) alert: String,
    pub(crate) expr: String,
}

/// Returns the alerting rules of `deploy/kubernetes/alerts`.
///
/// # Panics
///
/// Panics when the kustomization does not render or a rule lacks a field.
pub(crate) fn prometheus_rules() -> Vec<AlertRule> {
    let dir = yaml::deploy_dir().join("kubernetes/alerts");
    let resources = kustomize::render(&dir).unwrap_or_else(|error| panic!("{error:#}"));
    let rule = yaml::find_resource(&resources, "PrometheusRule", "meshcert")
        .unwrap_or_else(|error| panic!("{error:#}"));
    yaml::array_at(rule, "/spec/groups")
        .iter()
        .flat_map(|group| yaml::array_at(group, "/rules"))
        .map(|rule| AlertRule {
            alert: yaml::str_at(rule, "/alert")
                .expect("every rule is an alert")
                .to_string(),
            expr: yaml::str_at(rule, "/expr")
                .expect("every rule has an expr")
                .to_string(),
        })
        .collect()
}

/// Returns the names of the meshcert metrics an expression uses.
pub(crate) fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("meshcert_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshcert_image_matches_any_registry() {
        assert!(is_meshcert_image("registry.example.com/meshcert:0.1.0"));
        assert!(is_meshcert_image("meshcert"));
        assert!(is_meshcert_image("ghcr.io/org/meshcert@sha256:abc"));
        assert!(!is_meshcert_image("quay.io/prometheus/prometheus:v2.53.3"));
    }

    #[test]
    fn metric_names_skip_labels_and_functions() {
        assert_eq!(
            metric_names(r#"increase(meshcert_renewals_total{result="failure"}[30m]) > 0"#),
            ["meshcert_renewals_total"]
        );
    }
}
