//! Tests of `deploy/`: the Dockerfile, the kustomizations and what their
//! manifests promise, and (as root) a replay of the example pods on this
//! machine with the real binaries, the dev CA, Prometheus and nginx.
//!
//! No container engine or cluster runs here, so the Dockerfile is checked
//! statically, with hadolint and the rules below. The manifests are rendered
//! by the small renderer in `deploy/kustomize.rs`, compared with
//! `kubectl kustomize` where kubectl exists, and validated against the
//! Kubernetes API schemas with kubernetes-validate.

mod deploy {
    pub(crate) mod container;
    pub(crate) mod dockerfile;
    pub(crate) mod kustomize;
    pub(crate) mod pod;
    pub(crate) mod replay;
    pub(crate) mod replay_checks;
    pub(crate) mod sandbox;
    pub(crate) mod tools;
    pub(crate) mod yaml;
}

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use deploy::dockerfile::Dockerfile;
use deploy::replay::PodReplay;
use deploy::{kustomize, pod, replay_checks, tools, yaml};

/// The kustomizations under deploy/, relative to it.
const KUSTOMIZATIONS: &[&str] = &[
    "kubernetes",
    "kubernetes/prometheus",
    "kubernetes/native-sidecar",
    "kubernetes/component-example",
    "kubernetes/alerts",
];

/// Kubernetes versions whose schemas the manifests must pass: the first
/// with native sidecars enabled by default, and the newest that
/// kubernetes-validate 1.37 ships schemas for.
const SCHEMA_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

const PYTHON_TOOLS_INSTALL: &str = "scripts/test.sh installs it into target/py-tools from PyPI";

fn render(relative: &str) -> Vec<Value> {
    let dir = yaml::deploy_dir().join(relative);
    kustomize::render(&dir).unwrap_or_else(|error| panic!("rendering {relative}: {error:#}"))
}

fn deployment<'a>(resources: &'a [Value], name: &str) -> &'a Value {
    yaml::find_resource(resources, "Deployment", name).unwrap_or_else(|error| panic!("{error:#}"))
}

fn pod_spec(deployment: &Value) -> &Value {
    deployment
        .pointer("/spec/template/spec")
        .expect("a Deployment has a pod template spec")
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    yaml::find_container(pod_spec, name).unwrap_or_else(|error| panic!("{error:#}"))
}

fn dockerfile() -> Dockerfile {
    Dockerfile::load(&yaml::deploy_dir().join("Dockerfile"))
        .unwrap_or_else(|error| panic!("{error:#}"))
}

/// Returns every container, init containers first, of every Deployment of
/// every kustomization, with the kustomization's name and its pod spec.
fn all_containers() -> Vec<(String, Value, Value)> {
    let mut found = Vec::new();
    for relative in KUSTOMIZATIONS {
        for resource in render(relative) {
            if resource["kind"] != "Deployment" {
                continue;
            }
            let spec = pod_spec(&resource).clone();
            for container in yaml::array_at(&spec, "/initContainers")
                .iter()
                .chain(yaml::array_at(&spec, "/containers"))
            {
                found.push((relative.to_string(), spec.clone(), container.clone()));
            }
        }
    }
    found
}

fn sorted(mut resources: Vec<Value>) -> Vec<Value> {
    resources.sort_by_key(|resource| {
        format!(
            "{}/{}/{}",
            resource["apiVersion"], resource["kind"], resource["metadata"]["name"]
        )
    });
    resources
}

fn write_yaml_stream(path: &Path, resources: &[Value]) {
    let mut text = String::new();
    for resource in resources {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(resource).expect("serialize a resource"));
    }
    fs::write(path, text).unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
}

#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = tools::require("hadolint", PYTHON_TOOLS_INSTALL) else {
        return;
    };
    let output = Command::new(hadolint)
        .arg(yaml::deploy_dir().join("Dockerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        output.status.success(),
        "hadolint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn dockerfile_cross_compiles_in_build_stage() {
    let dockerfile = dockerfile();
    assert!(
        dockerfile.stages.len() >= 2,
        "expected a build stage and a final stage"
    );
    let build = &dockerfile.stages[0];
    assert!(
        build.from.contains("--platform=$BUILDPLATFORM"),
        "the build stage should run on the build machine's platform: {}",
        build.from
    );
    assert!(
        build.has_instruction("ARG", "TARGETARCH"),
        "the build stage should read TARGETARCH"
    );
    assert!(
        build
            .instructions
            .iter()
            .any(|(_, arguments)| arguments.contains("--release")),
        "the build stage should build the release profile"
    );
}

#[test]
fn dockerfile_final_stage_has_no_shell() {
    let dockerfile = dockerfile();
    let last = dockerfile.final_stage();
    let base = last.base_image();
    assert!(
        (base.starts_with("gcr.io/distroless/") && !base.contains("debug")) || base == "scratch",
        "the final stage should start from a shell-less base (distroless without :debug, or scratch), not {base}"
    );
    for forbidden in ["RUN", "SHELL"] {
        assert!(
            !last.instructions.iter().any(|(name, _)| name == forbidden),
            "the final stage has a {forbidden} instruction, which needs a shell"
        );
    }
}

#[test]
fn dockerfile_final_user_is_numeric_non_root() {
    let (uid, gid) = dockerfile()
        .final_user()
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_ne!(uid, 0, "the image must not run as root");
    assert_ne!(gid, 0, "the image's group must not be root");
}

#[test]
fn dockerfile_ships_both_binaries() {
    let dockerfile = dockerfile();
    let copied = dockerfile.final_stage().copy_destinations();
    for binary in pod::MESHCERT_BINARIES {
        let path = format!("/usr/local/bin/{binary}");
        assert!(
            copied.contains(&path),
            "the final stage does not copy {path}: {copied:?}"
        );
    }
    let entrypoint = dockerfile
        .final_stage()
        .entrypoint()
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert!(
        copied.contains(&entrypoint[0]),
        "ENTRYPOINT {entrypoint:?} is not a file the final stage copies"
    );
}

#[test]
fn meshcert_containers_match_image() {
    let dockerfile = dockerfile();
    let copied = dockerfile.final_stage().copy_destinations();
    let (uid, gid) = dockerfile.final_user().unwrap();
    for (kustomization, _, container) in all_containers() {
        if !pod::is_meshcert_image(container["image"].as_str().unwrap_or_default()) {
            continue;
        }
        let name = &container["name"];
        let command = container["command"][0].as_str().unwrap_or_default();
        assert!(
            copied.iter().any(|path| path == command),
            "{kustomization}: {name} runs {command:?}, which the image does not contain"
        );
        assert_eq!(
            container.pointer("/securityContext/runAsUser"),
            Some(&Value::from(uid)),
            "{kustomization}: {name} should run as the image's user, so init and refresher share a uid"
        );
        assert_eq!(
            container.pointer("/securityContext/runAsGroup"),
            Some(&Value::from(gid)),
            "{kustomization}: {name} should run with the image's group"
        );
    }
}

#[test]
fn kustomizations_render_like_kubectl() {
    let kubectl = tools::find("kubectl");
    if kubectl.is_none() {
        println!("kubectl not found: the kustomizations are rendered by the test renderer only");
    }
    for relative in KUSTOMIZATIONS {
        let ours = sorted(render(relative));
        assert!(!ours.is_empty(), "{relative} renders no resources");
        let Some(kubectl) = &kubectl else {
            continue;
        };
        let output = Command::new(kubectl)
            .arg("kustomize")
            .arg(yaml::deploy_dir().join(relative))
            .output()
            .expect("run kubectl kustomize");
        assert!(
            output.status.success(),
            "kubectl kustomize {relative} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs =
            sorted(yaml::parse_documents(&String::from_utf8_lossy(&output.stdout)).unwrap());
        assert_eq!(
            ours, theirs,
            "{relative}: the test renderer and kubectl kustomize disagree"
        );
    }
}

#[test]
fn manifests_pass_kubernetes_schemas() {
    let Some(validator) = tools::require("kubernetes-validate", PYTHON_TOOLS_INSTALL) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for relative in KUSTOMIZATIONS {
        // kubernetes-validate has schemas for built-in kinds only, so the
        // PrometheusRule is checked by prometheus_rules_pass_promtool.
        let resources: Vec<Value> = render(relative)
            .into_iter()
            .filter(|resource| resource["kind"] != "PrometheusRule")
            .collect();
        if resources.is_empty() {
            continue;
        }
        let path = dir
            .path()
            .join(format!("{}.yaml", relative.replace('/', "_")));
        write_yaml_stream(&path, &resources);
        for version in SCHEMA_VERSIONS {
            let output = Command::new(&validator)
                .args(["--strict", "-k", version])
                .arg(&path)
                .output()
                .expect("run kubernetes-validate");
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success(),
                "{relative} does not validate against Kubernetes {version}:\n{report}"
            );
            assert!(
                !report.contains("WARN"),
                "{relative}: kubernetes-validate warned for {version}:\n{report}"
            );
        }
    }
}

#[test]
fn containers_are_locked_down() {
    for (kustomization, spec, container) in all_containers() {
        let name = format!("{kustomization}: container {}", container["name"]);
        let context = |field: &str| {
            container
                .pointer(&format!("/securityContext/{field}"))
                .or_else(|| spec.pointer(&format!("/securityContext/{field}")))
                .cloned()
        };
        assert_eq!(
            context("runAsNonRoot"),
            Some(Value::Bool(true)),
            "{name}: runAsNonRoot"
        );
        assert!(
            context("runAsUser")
                .and_then(|uid| uid.as_u64())
                .is_some_and(|uid| uid != 0),
            "{name}: needs a numeric non-root runAsUser"
        );
        assert_eq!(
            context("seccompProfile/type"),
            Some(Value::from("RuntimeDefault")),
            "{name}: seccompProfile"
        );
        assert_eq!(
            container.pointer("/securityContext/allowPrivilegeEscalation"),
            Some(&Value::Bool(false)),
            "{name}: allowPrivilegeEscalation"
        );
        assert_eq!(
            container.pointer("/securityContext/readOnlyRootFilesystem"),
            Some(&Value::Bool(true)),
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(
            container.pointer("/securityContext/capabilities/drop"),
            Some(&serde_json::json!(["ALL"])),
            "{name}: capabilities"
        );
        if container["image"]
            .as_str()
            .is_some_and(pod::is_meshcert_image)
        {
            for field in [
                "requests/cpu",
                "requests/memory",
                "limits/cpu",
                "limits/memory",
            ] {
                assert!(
                    container.pointer(&format!("/resources/{field}")).is_some(),
                    "{name}: resources.{field} is not set"
                );
            }
        }
    }
}

#[test]
fn meshcert_volumes_follow_contract() {
    for (kustomization, spec, container) in all_containers() {
        if !container["image"]
            .as_str()
            .is_some_and(pod::is_meshcert_image)
        {
            continue;
        }
        let name = format!("{kustomization}: container {}", container["name"]);
        let env = pod::literal_env(&container);

        let out_dir = &env["OUTPUT_CERTS"];
        let certs = pod::volume_mounted_at(&spec, &container, out_dir)
            .unwrap_or_else(|error| panic!("{name}: {error:#}"));
        assert_eq!(
            certs.pointer("/emptyDir/medium"),
            Some(&Value::from("Memory")),
            "{name}: certificate volume medium"
        );
        assert!(
            certs.pointer("/emptyDir/sizeLimit").is_some(),
            "{name}: certificate volume sizeLimit"
        );

        let token_file = Path::new(&env["TOKEN_FILE"]);
        let token = pod::volume_mounted_at(
            &spec,
            &container,
            token_file.parent().unwrap().to_str().unwrap(),
        )
        .unwrap_or_else(|error| panic!("{name}: {error:#}"));
        let source = &token["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(source["audience"], "istio-ca", "{name}: token audience");
        assert_eq!(source["expirationSeconds"], 43200, "{name}: token lifetime");
        assert_eq!(
            Some(source["path"].as_str().unwrap_or_default()),
            token_file.file_name().and_then(|file| file.to_str()),
            "{name}: token file name"
        );

        let ca_root = Path::new(&env["CA_ROOT_CA"]);
        let root = pod::volume_mounted_at(
            &spec,
            &container,
            ca_root.parent().unwrap().to_str().unwrap(),
        )
        .unwrap_or_else(|error| panic!("{name}: {error:#}"));
        assert_eq!(
            root.pointer("/configMap/name"),
            Some(&Value::from("istio-ca-root-cert")),
            "{name}: CA root volume"
        );
        assert_eq!(
            ca_root.file_name().unwrap(),
            "root-cert.pem",
            "{name}: CA root file"
        );

        let field_path = |variable: &str| {
            yaml::array_at(&container, "/env")
                .iter()
                .find(|entry| entry["name"] == variable)
                .and_then(|entry| entry.pointer("/valueFrom/fieldRef/fieldPath"))
                .cloned()
        };
        assert_eq!(
            field_path("POD_NAMESPACE"),
            Some(Value::from("metadata.namespace")),
            "{name}: POD_NAMESPACE"
        );
        assert_eq!(
            field_path("SERVICE_ACCOUNT"),
            Some(Value::from("spec.serviceAccountName")),
            "{name}: SERVICE_ACCOUNT"
        );

        let fs_group = spec
            .pointer("/securityContext/fsGroup")
            .and_then(Value::as_u64);
        assert_eq!(
            env.get("CERT_GROUP")
                .and_then(|group| group.parse::<u64>().ok()),
            fs_group,
            "{name}: CERT_GROUP must be the pod's fsGroup, so the app can read key.pem"
        );
    }
}

#[test]
fn mesh_ca_root_is_not_shipped() {
    for relative in KUSTOMIZATIONS {
        let shipped = render(relative).iter().any(|resource| {
            resource["kind"] == "ConfigMap" && resource["metadata"]["name"] == "istio-ca-root-cert"
        });
        assert!(
            !shipped,
            "{relative} ships istio-ca-root-cert, which istiod owns"
        );
    }
}

#[test]
fn refresher_probes_use_its_endpoints() {
    for (kustomization, _, container) in all_containers() {
        if container["name"] != "meshcert-refresher" {
            continue;
        }
        let env = pod::literal_env(&container);
        let port: u16 = env["PROBE_ADDR"]
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/healthz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{kustomization}: {probe} path");
            assert_eq!(
                get["port"], port,
                "{kustomization}: {probe} port must be PROBE_ADDR's"
            );
        }
        let admin = &env["ADMIN_ADDR"];
        assert!(
            admin.starts_with("127.0.0.1:"),
            "{kustomization}: ADMIN_ADDR {admin} must stay on loopback"
        );
    }
}

#[test]
fn example_pod_opts_out_of_injection() {
    let resources = render("kubernetes");
    let template = &deployment(&resources, "prometheus")["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["sidecar.istio.io/inject"],
        "false"
    );
}

#[test]
fn component_excludes_ca_port_from_capture() {
    let resources = render("kubernetes/component-example");
    let annotations = &deployment(&resources, "app")["spec"]["template"]["metadata"]["annotations"];
    let ports = annotations["traffic.sidecar.istio.io/excludeOutboundPorts"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ports.split(',').any(|port| port.trim() == "15012"),
        "excludeOutboundPorts is {ports:?}"
    );
}

#[test]
fn component_adds_example_containers() {
    let example = render("kubernetes");
    let example_spec = pod_spec(deployment(&example, "prometheus"));
    let with_component = render("kubernetes/component-example");
    let spec = pod_spec(deployment(&with_component, "app"));

    for name in ["meshcert-init", "meshcert-refresher"] {
        assert_eq!(
            container(spec, name),
            container(example_spec, name),
            "component's {name} differs from the example's"
        );
    }
    assert_eq!(
        spec["initContainers"][0]["name"], "meshcert-init",
        "meshcert-init must be an init container"
    );
    for volume in ["meshcert-certs", "istio-token", "istio-ca-root-cert"] {
        let find = |spec: &Value| {
            yaml::array_at(spec, "/volumes")
                .iter()
                .find(|entry| entry["name"] == volume)
                .cloned()
        };
        assert!(
            find(spec).is_some(),
            "component does not add volume {volume}"
        );
        assert_eq!(
            find(spec),
            find(example_spec),
            "component's volume {volume} differs from the example's"
        );
    }
    assert_eq!(
        spec.pointer("/securityContext/fsGroup"),
        example_spec.pointer("/securityContext/fsGroup"),
        "component's fsGroup differs from the example's"
    );
    let app = container(spec, "app");
    let mount = yaml::array_at(app, "/volumeMounts")
        .iter()
        .find(|mount| mount["name"] == "meshcert-certs")
        .expect("the example app mounts meshcert-certs");
    assert_eq!(
        mount["readOnly"], true,
        "the app's mount of the certificates should be read-only"
    );
}

#[test]
fn native_sidecar_gates_app_on_first_set() {
    let base = render("kubernetes");
    let base_spec = pod_spec(deployment(&base, "prometheus"));
    let native = render("kubernetes/native-sidecar");
    let spec = pod_spec(deployment(&native, "prometheus"));

    let init_names: Vec<&Value> = yaml::array_at(spec, "/initContainers")
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(
        init_names,
        ["meshcert-refresher"],
        "the refresher should be the only init container"
    );
    let names: Vec<&Value> = yaml::array_at(spec, "/containers")
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(
        names,
        ["prometheus"],
        "only the app should remain a regular container"
    );

    let mut refresher = spec["initContainers"][0].clone();
    assert_eq!(
        refresher["restartPolicy"], "Always",
        "a native sidecar has restartPolicy Always"
    );
    assert_eq!(
        refresher["startupProbe"]["httpGet"]["path"], "/ready",
        "startup should wait for /ready"
    );
    assert_eq!(
        refresher["startupProbe"]["httpGet"]["port"],
        refresher["readinessProbe"]["httpGet"]["port"],
        "startupProbe port"
    );
    let fields = refresher.as_object_mut().unwrap();
    fields.remove("restartPolicy");
    fields.remove("startupProbe");
    assert_eq!(
        &refresher,
        container(base_spec, "meshcert-refresher"),
        "the refresher should otherwise be the base's"
    );
}

#[test]
fn prometheus_scrapes_with_published_files() {
    let resources = render("kubernetes");
    let spec = pod_spec(deployment(&resources, "prometheus"));
    let prometheus = container(spec, "prometheus");
    let config = pod::prometheus_config(&resources).unwrap_or_else(|error| panic!("{error:#}"));

    let certs_mount = yaml::array_at(prometheus, "/volumeMounts")
        .iter()
        .find(|mount| mount["name"] == "meshcert-certs")
        .expect("Prometheus mounts the certificate volume");
    assert_eq!(
        certs_mount["readOnly"], true,
        "Prometheus only reads the certificates"
    );
    let dir = PathBuf::from(certs_mount["mountPath"].as_str().unwrap());

    let jobs: Vec<&Value> = yaml::array_at(&config, "/scrape_configs")
        .iter()
        .filter(|job| job["scheme"] == "https")
        .collect();
    assert!(!jobs.is_empty(), "no https scrape job");
    for job in jobs {
        let tls = &job["tls_config"];
        for (field, file) in [
            ("cert_file", "cert-chain.pem"),
            ("key_file", "key.pem"),
            ("ca_file", "root-cert.pem"),
        ] {
            assert_eq!(
                tls[field],
                dir.join(file).to_str().unwrap(),
                "job {}: {field}",
                job["job_name"]
            );
        }
        assert_eq!(
            tls["insecure_skip_verify"], true,
            "job {}: SPIFFE certificates carry no DNS name to verify",
            job["job_name"]
        );
    }
}

#[test]
fn prometheus_rules_pass_promtool() {
    let rules = pod::prometheus_rules();
    assert!(!rules.is_empty(), "the PrometheusRule has no rules");
    for rule in &rules {
        assert!(
            rule.expr.contains("meshcert_"),
            "alert {} does not use a meshcert metric",
            rule.alert
        );
    }
    let Some(promtool) = tools::require("promtool", "install Debian's prometheus package") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    let resources = render("kubernetes/alerts");
    let rule = yaml::find_resource(&resources, "PrometheusRule", "meshcert").unwrap();
    let groups = serde_json::json!({ "groups": rule["spec"]["groups"] });
    fs::write(&path, serde_norway::to_string(&groups).unwrap()).unwrap();
    let output = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// === Replays of the example pods (root only) ===

/// Environment variable that makes the replay tests print every process's
/// log after a successful run too (scripts/replay-pod.sh sets it).
const REPLAY_LOGS_ENV: &str = "MESHCERT_REPLAY_LOGS";

fn print_logs_if_requested(replay: &PodReplay) {
    if std::env::var_os(REPLAY_LOGS_ENV).is_some() {
        println!("{}", replay.logs());
    }
}

/// Returns whether the replay can run; prints `skipped` when it cannot.
fn replay_is_possible() -> bool {
    if tools::is_root() {
        return true;
    }
    println!("skipped: needs root (network and mount namespaces, tmpfs, switching uids)");
    false
}

#[test]
fn replay_example_pod() {
    if !replay_is_possible() {
        return;
    }
    let mut replay = PodReplay::prepare(render("kubernetes"), "prometheus")
        .unwrap_or_else(|error| panic!("{error:#}"));
    if let Err(error) = replay_checks::check_example_pod(&mut replay) {
        panic!("{error:#}\n{}", replay.logs());
    }
    print_logs_if_requested(&replay);
}

#[test]
fn replay_native_sidecar_pod() {
    if !replay_is_possible() {
        return;
    }
    let mut replay = PodReplay::prepare(render("kubernetes/native-sidecar"), "prometheus")
        .unwrap_or_else(|error| panic!("{error:#}"));
    if let Err(error) = replay_checks::check_native_sidecar_pod(&mut replay) {
        panic!("{error:#}\n{}", replay.logs());
    }
    print_logs_if_requested(&replay);
}
