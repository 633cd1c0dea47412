//! Replays a Deployment's pod on this machine, as root, from the rendered
//! manifests: init containers run to completion (or, with restartPolicy
//! Always, until their startup probe passes), then the containers start.
//!
//! The pod's network namespace is a new one made for the replay, so every
//! port the manifests name (the CA's 15012, the refresher's 9851 and 9852,
//! Prometheus's 9090) is free and loopback-only. In it run `meshcert-devca`
//! on the CA address's port, standing in for istiod, and one nginx per https
//! scrape target of the Prometheus configuration, requiring client
//! certificates from the mesh root and serving a static `/metrics`. The
//! pod's `/etc/hosts` resolves the CA's and the targets' names to loopback.
//! Volumes are made as the kubelet makes them: `emptyDir` with
//! `medium: Memory` is a tmpfs of its `sizeLimit`, the projected token is a
//! token minted by the dev CA for the pod's namespace and service account
//! with the manifest's audience and lifetime, and `istio-ca-root-cert`
//! contains the dev CA's root, as istiod would publish it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use meshcert_tests::bin_path;
use serde_json::Value;
use tempfile::TempDir;

use super::container::{self, PodContext};
use super::sandbox::{self, wait_until, NetworkNamespace, Process, Tmpfs};
use super::{pod, tools, yaml};

/// Namespace the docs apply the example to; the token and the SPIFFE ID
/// of the replayed pod use it.
pub(crate) const NAMESPACE: &str = "monitoring";
const POD_NAME: &str = "prometheus-replay";
/// Limit for the dev CA and nginx to start, and for one init container.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of a `medium: Memory` emptyDir without a sizeLimit.
const DEFAULT_TMPFS_BYTES: u64 = 64 << 20;

/// Absolute paths of the programs the replay runs.
#[derive(Debug)]
struct Tools {
    nsenter: PathBuf,
    unshare: PathBuf,
    ip: PathBuf,
    curl: PathBuf,
    nginx: PathBuf,
    setpriv: PathBuf,
}

impl Tools {
    fn find() -> Result<Self> {
        let find = |name: &str| {
            tools::find(name).with_context(|| {
                format!("{name} not found; scripts/test.sh installs what the replay needs")
            })
        };
        Ok(Self {
            nsenter: find("nsenter")?,
            unshare: find("unshare")?,
            ip: find("ip")?,
            curl: find("curl")?,
            nginx: find("nginx")?,
            setpriv: find("setpriv")?,
        })
    }
}

/// An nginx that plays an mTLS scrape target.
#[derive(Debug)]
pub(crate) struct ScrapeTarget {
    process: Process,
    pub(crate) port: u16,
    pub(crate) access_log: PathBuf,
}

/// A replayed pod. Dropping it stops every process, containers first, and
/// removes its mounts and files.
#[derive(Debug)]
pub(crate) struct PodReplay {
    // Fields drop in declaration order.
    containers: Vec<Process>,
    targets: Vec<ScrapeTarget>,
    ca: Process,
    tmpfs: Vec<Tmpfs>,
    netns: NetworkNamespace,
    tools: Tools,
    pub(crate) pod: PodContext,
    pub(crate) resources: Vec<Value>,
    ca_state: PathBuf,
    dir: TempDir,
}

fn host_and_port(address: &str) -> Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("address {address} has no port"))?;
    let port = port
        .parse()
        .with_context(|| format!("address {address} has an invalid port"))?;
    Ok((host.to_string(), port))
}

/// Returns `host:port` of every target of the https scrape jobs.
fn https_targets(resources: &[Value]) -> Result<Vec<String>> {
    let config = pod::prometheus_config(resources)?;
    let mut targets = Vec::new();
    for job in yaml::array_at(&config, "/scrape_configs") {
        if job["scheme"] != "https" {
            continue;
        }
        for group in yaml::array_at(job, "/static_configs") {
            for target in yaml::array_at(group, "/targets") {
                targets.push(
                    target
                        .as_str()
                        .context("a target is not a string")?
                        .to_string(),
                );
            }
        }
    }
    Ok(targets)
}

impl PodReplay {
    /// Sets up the pod of Deployment `deployment`: its network namespace,
    /// the dev CA, the scrape targets and the volumes. No container runs yet.
    pub(crate) fn prepare(resources: Vec<Value>, deployment: &str) -> Result<Self> {
        let tools = Tools::find()?;
        let spec = yaml::find_resource(&resources, "Deployment", deployment)?
            .pointer("/spec/template/spec")
            .context("the Deployment has no pod template")?
            .clone();
        let dir = tempfile::Builder::new()
            .prefix("meshcert-replay-")
            .tempdir()?;
        // Other users must reach the volume directories, as on a node.
        sandbox::set_owner_and_mode(dir.path(), None, 0o755)?;
        for sub in ["logs", "roots", "volumes"] {
            fs::create_dir(dir.path().join(sub))?;
        }
        let netns = NetworkNamespace::create(&tools.unshare, &tools.nsenter, &tools.ip)?;

        let ca_addr = meshcert_env(&spec, "CA_ADDR")?;
        let (_, ca_port) = host_and_port(&ca_addr)?;
        let ca_state = dir.path().join("ca");
        let ca = start_dev_ca(&netns, dir.path(), &ca_state, ca_port)?;

        let targets = https_targets(&resources)?;
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for address in targets.iter().chain([&ca_addr]) {
            let (host, _) = host_and_port(address)?;
            hosts.push_str(&format!("127.0.0.1 {host}\n"));
        }
        let hosts_file = dir.path().join("hosts");
        fs::write(&hosts_file, hosts)?;

        let mut replay = Self {
            containers: Vec::new(),
            targets: Vec::new(),
            ca,
            tmpfs: Vec::new(),
            netns,
            tools,
            pod: PodContext {
                spec,
                name: POD_NAME.to_string(),
                namespace: NAMESPACE.to_string(),
                volumes: BTreeMap::new(),
                hosts_file,
            },
            resources,
            ca_state,
            dir,
        };
        replay.make_volumes()?;
        for address in &targets {
            let target = replay.start_scrape_target(address)?;
            replay.targets.push(target);
        }
        Ok(replay)
    }

    /// Mints a token with the dev CA's key.
    fn mint_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        ttl_seconds: u64,
    ) -> Result<String> {
        let output = Command::new(bin_path("meshcert-devca"))
            .arg("token")
            .arg("--state-dir")
            .arg(&self.ca_state)
            .args([
                "--namespace",
                namespace,
                "--service-account",
                service_account,
                "--audience",
                audience,
            ])
            .arg(format!("--ttl={ttl_seconds}s"))
            .output()
            .context("failed to run meshcert-devca token")?;
        ensure!(
            output.status.success(),
            "meshcert-devca token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?.trim().to_string())
    }

    fn make_volumes(&mut self) -> Result<()> {
        let fs_group = self
            .pod
            .spec
            .pointer("/securityContext/fsGroup")
            .and_then(Value::as_u64)
            .map(|gid| gid as u32);
        let service_account = yaml::str_at(&self.pod.spec, "/serviceAccountName")?.to_string();
        for volume in yaml::array_at(&self.pod.spec, "/volumes").to_vec() {
            let name = yaml::str_at(&volume, "/name")?.to_string();
            let path = self.dir.path().join("volumes").join(&name);
            fs::create_dir(&path)?;

            if let Some(empty_dir) = volume.get("emptyDir") {
                if empty_dir["medium"] == "Memory" {
                    let size = match empty_dir["sizeLimit"].as_str() {
                        Some(limit) => yaml::parse_quantity_bytes(limit)?,
                        None => DEFAULT_TMPFS_BYTES,
                    };
                    self.tmpfs.push(Tmpfs::mount(&path, size, 0o777)?);
                }
                // The kubelet gives an emptyDir mode 0777, and with fsGroup
                // the group and the setgid bit.
                let mode = if fs_group.is_some() { 0o2777 } else { 0o777 };
                sandbox::set_owner_and_mode(&path, fs_group, mode)?;
            } else if let Some(projected) = volume.get("projected") {
                let mut files = Vec::new();
                for source in yaml::array_at(projected, "/sources") {
                    let token = source.get("serviceAccountToken").with_context(|| {
                        format!("volume {name}: only serviceAccountToken sources are supported")
                    })?;
                    let audience = yaml::str_at(token, "/audience")?;
                    let ttl = token["expirationSeconds"].as_u64().unwrap_or(3600);
                    let jwt =
                        self.mint_token(&self.pod.namespace, &service_account, audience, ttl)?;
                    files.push((yaml::str_at(token, "/path")?.to_string(), jwt.into_bytes()));
                }
                sandbox::write_kubelet_volume(&path, &files, fs_group)?;
            } else if let Some(config_map) = volume.get("configMap") {
                ensure!(
                    config_map.get("items").is_none(),
                    "volume {name}: configMap items are not supported"
                );
                let files = self.config_map_files(yaml::str_at(config_map, "/name")?)?;
                sandbox::write_kubelet_volume(&path, &files, fs_group)?;
            } else {
                bail!(
                    "volume {name}: only emptyDir, projected and configMap volumes are supported"
                );
            }
            self.pod.volumes.insert(name, path);
        }
        Ok(())
    }

    /// Returns the files of a ConfigMap: from the rendered resources, or for
    /// `istio-ca-root-cert` (which istiod creates) the dev CA's root.
    fn config_map_files(&self, name: &str) -> Result<Vec<(String, Vec<u8>)>> {
        if let Ok(config_map) = yaml::find_resource(&self.resources, "ConfigMap", name) {
            let data = config_map["data"]
                .as_object()
                .context("the ConfigMap has no data")?;
            return Ok(data
                .iter()
                .map(|(key, value)| {
                    (
                        key.clone(),
                        value.as_str().unwrap_or_default().as_bytes().to_vec(),
                    )
                })
                .collect());
        }
        ensure!(
            name == "istio-ca-root-cert",
            "ConfigMap {name} is neither rendered nor created by istiod"
        );
        let root = fs::read(self.ca_state.join("root-cert.pem"))
            .context("failed to read the dev CA's root")?;
        Ok(vec![("root-cert.pem".to_string(), root)])
    }

    /// Starts nginx on 127.0.0.1 at the target's port with a certificate the
    /// dev CA issues to `<service>.<namespace>`'s service account, requiring
    /// client certificates that chain to the mesh root.
    fn start_scrape_target(&self, address: &str) -> Result<ScrapeTarget> {
        let (host, port) = host_and_port(address)?;
        let mut labels = host.split('.');
        let (Some(service), Some(namespace)) = (labels.next(), labels.next()) else {
            bail!("scrape target {host} is not a <service>.<namespace>.svc name");
        };
        let dir = self.dir.path().join(format!("target-{service}"));
        fs::create_dir_all(dir.join("temp"))?;
        let token_file = dir.join("token");
        fs::write(
            &token_file,
            self.mint_token(namespace, service, "istio-ca", 3600)?,
        )?;

        let certs = dir.join("certs");
        let mut init = self.netns.command(&bin_path("meshcert-init"));
        init.arg(format!(
            "--ca-addr=127.0.0.1:{}",
            host_and_port(&meshcert_env(&self.pod.spec, "CA_ADDR")?)?.1
        ))
        .arg("--ca-root")
        .arg(self.ca_state.join("root-cert.pem"))
        .arg("--token-file")
        .arg(&token_file)
        .arg("--out-dir")
        .arg(&certs);
        let mut process = Process::spawn(
            &format!("{service} certificate"),
            init,
            dir.join("init.log"),
        )?;
        let status = process.wait(START_TIMEOUT)?;
        ensure!(
            status.success(),
            "meshcert-init for the scrape target failed:\n{}",
            process.log()
        );

        let access_log = dir.join("access.log");
        let config = format!(
            r#"daemon off;
user nobody nogroup;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    log_format scrape '$ssl_client_verify $ssl_client_serial $status';
    access_log {access_log} scrape;
    client_body_temp_path {dir}/temp/body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
    # One request per connection, so every scrape is a new TLS handshake
    # with the client certificate published at that time.
    keepalive_timeout 0;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs}/cert-chain.pem;
        ssl_certificate_key {certs}/key.pem;
        ssl_client_certificate {certs}/root-cert.pem;
        ssl_verify_client on;
        ssl_verify_depth 2;
        location = /metrics {{
            default_type text/plain;
            return 200 "replay_target_up 1\n";
        }}
    }}
}}
"#,
            dir = dir.display(),
            access_log = access_log.display(),
            certs = certs.display(),
        );
        let config_path = dir.join("nginx.conf");
        fs::write(&config_path, config)?;
        let mut nginx = self.netns.command(&self.tools.nginx);
        nginx
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&config_path);
        let mut process =
            Process::spawn(&format!("nginx for {host}"), nginx, dir.join("nginx.log"))?;

        let url = format!("https://127.0.0.1:{port}/metrics");
        wait_until(
            &format!("nginx listens on port {port}"),
            START_TIMEOUT,
            || {
                process.ensure_running()?;
                Ok(self
                    .http("GET", &url, &["--insecure"])
                    .ok()
                    .map(|(code, _)| code))
            },
        )
        .with_context(|| fs::read_to_string(dir.join("error.log")).unwrap_or_default())?;
        Ok(ScrapeTarget {
            process,
            port,
            access_log,
        })
    }

    /// Sends an HTTP request from inside the pod.
    pub(crate) fn http(&self, method: &str, url: &str, extra: &[&str]) -> Result<(u16, String)> {
        sandbox::http(&self.netns, &self.tools.curl, method, url, extra)
    }

    /// Starts `container` of the pod spec and keeps it running.
    pub(crate) fn start_container(&mut self, container: &Value) -> Result<&Process> {
        let name = yaml::str_at(container, "/name")?.to_string();
        let root = self.dir.path().join("roots").join(&name);
        let netns = &self.netns;
        let command = container::command(
            &self.pod,
            container,
            &root,
            &self.tools.unshare,
            |program| netns.command(program),
        )
        .with_context(|| format!("container {name}"))?;
        let log = self.dir.path().join("logs").join(format!("{name}.log"));
        self.containers.push(Process::spawn(&name, command, log)?);
        Ok(self.containers.last().expect("just pushed"))
    }

    /// Returns the running container named `name`.
    pub(crate) fn process(&mut self, name: &str) -> Result<&mut Process> {
        self.containers
            .iter_mut()
            .find(|process| process.name == name)
            .with_context(|| format!("container {name} is not running"))
    }

    /// Waits until the container's `probe` (an httpGet probe field such as
    /// `readinessProbe`) returns a 2xx status, as the kubelet checks it.
    pub(crate) fn wait_for_probe(
        &mut self,
        container: &Value,
        probe: &str,
        timeout: Duration,
    ) -> Result<()> {
        let name = yaml::str_at(container, "/name")?.to_string();
        let path = yaml::str_at(container, &format!("/{probe}/httpGet/path"))?.to_string();
        let port = container
            .pointer(&format!("/{probe}/httpGet/port"))
            .and_then(Value::as_u64)
            .with_context(|| format!("{name}: {probe} needs a numeric httpGet port"))?;
        let url = format!("http://127.0.0.1:{port}{path}");
        let result = wait_until(
            &format!("{name} passes its {probe} ({url})"),
            timeout,
            || {
                self.process(&name)?.ensure_running()?;
                let (code, body) = self.http("GET", &url, &[])?;
                ensure!((200..300).contains(&code), "{code}: {}", body.trim());
                Ok(Some(()))
            },
        );
        result.with_context(|| {
            format!(
                "log of {name}:\n{}",
                self.process(&name).map(|p| p.log()).unwrap_or_default()
            )
        })
    }

    /// Runs the pod's init containers in order: each to completion with exit
    /// code 0, or with restartPolicy Always until its startupProbe passes.
    pub(crate) fn run_init_containers(&mut self) -> Result<()> {
        for container in yaml::array_at(&self.pod.spec, "/initContainers").to_vec() {
            let name = yaml::str_at(&container, "/name")?.to_string();
            self.start_container(&container)?;
            if container["restartPolicy"] == "Always" {
                if container.get("startupProbe").is_some() {
                    self.wait_for_probe(&container, "startupProbe", START_TIMEOUT)?;
                }
                continue;
            }
            let process = self.process(&name)?;
            let status = process.wait(START_TIMEOUT)?;
            ensure!(
                status.success(),
                "init container {name} exited with {status}; log:\n{}",
                process.log()
            );
        }
        Ok(())
    }

    /// Starts the pod's containers in order.
    pub(crate) fn start_containers(&mut self) -> Result<()> {
        for container in yaml::array_at(&self.pod.spec, "/containers").to_vec() {
            self.start_container(&container)?;
        }
        Ok(())
    }

    /// Returns the container spec named `name`.
    pub(crate) fn container_spec(&self, name: &str) -> Result<Value> {
        yaml::find_container(&self.pod.spec, name).cloned()
    }

    /// Returns the directory on this machine of the volume `container`
    /// mounts at `mount_path`.
    pub(crate) fn volume_dir(&self, container: &str, mount_path: &str) -> Result<PathBuf> {
        let spec = self.container_spec(container)?;
        let volume = pod::volume_mounted_at(&self.pod.spec, &spec, mount_path)?;
        let name = yaml::str_at(volume, "/name")?;
        Ok(self.pod.volumes[name].clone())
    }

    /// Returns the scrape targets (nginx) of the replay.
    pub(crate) fn targets(&self) -> &[ScrapeTarget] {
        &self.targets
    }

    /// Runs `cat path` as `uid` with exactly `groups`, and returns whether it
    /// could read the file.
    pub(crate) fn can_read_as(&self, path: &Path, uid: u64, groups: &[u64]) -> Result<bool> {
        let groups: Vec<String> = groups.iter().map(u64::to_string).collect();
        let status = Command::new(&self.tools.setpriv)
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={}", groups[0]))
            .arg(format!("--groups={}", groups.join(",")))
            .arg("cat")
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("failed to run setpriv")?;
        Ok(status.success())
    }

    /// Returns the log of the dev CA.
    pub(crate) fn ca_log(&self) -> String {
        self.ca.log()
    }

    /// Returns the logs of every container, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let mut text = String::new();
        for process in &self.containers {
            text.push_str(&format!("--- {}\n{}\n", process.name, process.log()));
        }
        for target in &self.targets {
            let access_log = fs::read_to_string(&target.access_log).unwrap_or_default();
            text.push_str(&format!(
                "--- {}\n{}--- its access log (client verification, serial, status)\n{access_log}\n",
                target.process.name,
                target.process.log()
            ));
        }
        text.push_str(&format!("--- dev CA\n{}\n", self.ca_log()));
        text
    }
}

/// Returns a literal environment variable of the pod's meshcert containers.
fn meshcert_env(spec: &Value, variable: &str) -> Result<String> {
    yaml::array_at(spec, "/initContainers")
        .iter()
        .chain(yaml::array_at(spec, "/containers"))
        .filter(|container| {
            container["image"]
                .as_str()
                .is_some_and(pod::is_meshcert_image)
        })
        .find_map(|container| pod::literal_env(container).remove(variable))
        .with_context(|| format!("no meshcert container sets {variable}"))
}

/// Starts `meshcert-devca serve` on `127.0.0.1:port` inside the namespace
/// and waits until it accepts calls.
fn start_dev_ca(netns: &NetworkNamespace, dir: &Path, state: &Path, port: u16) -> Result<Process> {
    let ready = dir.join("ca.ready");
    let mut command = netns.command(&bin_path("meshcert-devca"));
    command
        .arg("serve")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state)
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "info");
    let mut process = Process::spawn("dev CA", command, dir.join("logs").join("devca.log"))?;
    wait_until("the dev CA writes its ready file", START_TIMEOUT, || {
        process.ensure_running()?;
        Ok(ready.exists().then_some(()))
    })?;
    Ok(process)
}
