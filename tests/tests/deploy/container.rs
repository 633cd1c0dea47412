//! One container of a manifest, run here as the kubelet would run it: its
//! command, arguments and environment unchanged, as the uid, gid and groups
//! the manifest names, in its own mount namespace whose root contains the
//! image's files and the pod's volumes at their mount paths.
//!
//! Images map to this machine as follows. meshcert's image: its binaries at
//! `/usr/local/bin` are the workspace's builds (`target/debug`), bind-mounted
//! read-only over the paths the Dockerfile copies them to. Prometheus's image
//! (`quay.io/prometheus/prometheus`): its `/bin/prometheus` is Debian's
//! `/usr/bin/prometheus`, because the container's `/bin` links to `/usr/bin`.
//! Every container sees this machine's `/usr` read-only, which supplies glibc
//! as distroless's cc image does. Any other image is an error.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use meshcert_tests::bin_path;
use serde_json::Value;

use super::pod;
use super::sandbox::shell_quote;
use super::yaml;

/// `PATH` of both images.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Image repository of the example's Prometheus.
const PROMETHEUS_IMAGE: &str = "quay.io/prometheus/prometheus:";
/// Debian's Prometheus, run in place of the image's `/bin/prometheus`.
pub(crate) const DEBIAN_PROMETHEUS: &str = "/usr/bin/prometheus";

/// Pod-level facts every container needs.
#[derive(Debug)]
pub(crate) struct PodContext {
    pub(crate) spec: Value,
    pub(crate) name: String,
    pub(crate) namespace: String,
    /// Directory on this machine of each pod volume, by volume name.
    pub(crate) volumes: BTreeMap<String, PathBuf>,
    /// The pod's `/etc/hosts`.
    pub(crate) hosts_file: PathBuf,
}

/// Returns the files of `image` that come from this machine, as pairs of
/// path in the image and path here.
fn image_files(image: &str) -> Result<Vec<(String, PathBuf)>> {
    if pod::is_meshcert_image(image) {
        return Ok(pod::MESHCERT_BINARIES
            .iter()
            .map(|binary| (format!("/usr/local/bin/{binary}"), bin_path(binary)))
            .collect());
    }
    if image.starts_with(PROMETHEUS_IMAGE) {
        ensure!(
            Path::new(DEBIAN_PROMETHEUS).is_file(),
            "{DEBIAN_PROMETHEUS} not found; install Debian's prometheus package"
        );
        return Ok(Vec::new());
    }
    bail!("image {image} has no local stand-in in the replay")
}

fn strings(value: &Value, pointer: &str) -> Result<Vec<String>> {
    yaml::array_at(value, pointer)
        .iter()
        .map(|word| {
            word.as_str()
                .map(str::to_string)
                .with_context(|| format!("{pointer} entry {word} is not a string"))
        })
        .collect()
}

/// Resolves the container's `env`, literal values and the downward API
/// fields the manifests use.
fn environment(pod: &PodContext, container: &Value) -> Result<Vec<(String, String)>> {
    ensure!(
        container.get("envFrom").is_none(),
        "envFrom is not supported by the replay"
    );
    let mut env = vec![("PATH".to_string(), IMAGE_PATH.to_string())];
    for entry in yaml::array_at(container, "/env") {
        let name = yaml::str_at(entry, "/name")?.to_string();
        if let Some(value) = entry.get("value") {
            env.push((name, value.as_str().unwrap_or_default().to_string()));
            continue;
        }
        let field = yaml::str_at(entry, "/valueFrom/fieldRef/fieldPath")
            .with_context(|| format!("env {name}: only values and fieldRef are supported"))?;
        let value = match field {
            "metadata.namespace" => pod.namespace.clone(),
            "metadata.name" => pod.name.clone(),
            "spec.serviceAccountName" => {
                yaml::str_at(&pod.spec, "/serviceAccountName")?.to_string()
            }
            other => bail!("env {name}: fieldRef {other} is not supported by the replay"),
        };
        env.push((name, value));
    }
    Ok(env)
}

/// Returns a security context field of the container, else of the pod.
fn security_field<'a>(pod: &'a PodContext, container: &'a Value, field: &str) -> Option<&'a Value> {
    container
        .pointer(&format!("/securityContext/{field}"))
        .or_else(|| pod.spec.pointer(&format!("/securityContext/{field}")))
}

/// Returns the uid, gid and supplementary groups the container runs with.
fn identity(pod: &PodContext, container: &Value) -> Result<(u64, u64, Vec<u64>)> {
    let uid = security_field(pod, container, "runAsUser")
        .and_then(Value::as_u64)
        .context("the replay needs runAsUser in the manifest")?;
    let gid = security_field(pod, container, "runAsGroup")
        .and_then(Value::as_u64)
        .context("the replay needs runAsGroup in the manifest")?;
    let mut groups = vec![gid];
    groups.extend(
        pod.spec
            .pointer("/securityContext/fsGroup")
            .and_then(Value::as_u64),
    );
    groups.extend(
        yaml::array_at(&pod.spec, "/securityContext/supplementalGroups")
            .iter()
            .filter_map(Value::as_u64),
    );
    groups.sort_unstable();
    groups.dedup();
    Ok((uid, gid, groups))
}

/// Returns `(mount path, directory here, read-only)` for each volume mount,
/// parents before children.
fn mounts(pod: &PodContext, container: &Value) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut mounts = Vec::new();
    for mount in yaml::array_at(container, "/volumeMounts") {
        ensure!(
            mount.get("subPath").is_none(),
            "subPath mounts are not supported by the replay"
        );
        let name = yaml::str_at(mount, "/name")?;
        let source = pod
            .volumes
            .get(name)
            .with_context(|| format!("volume {name} is mounted but not defined"))?;
        let path = yaml::str_at(mount, "/mountPath")?.to_string();
        ensure!(
            path.starts_with('/') && !path.contains(".."),
            "mountPath {path} must be absolute"
        );
        mounts.push((path, source.clone(), mount["readOnly"] == true));
    }
    mounts.sort_by_key(|(path, _, _)| path.matches('/').count());
    Ok(mounts)
}

/// Builds the command that runs `container` in a new mount namespace inside
/// the pod's network namespace (`in_pod` wraps a program in it). `root` is
/// an empty directory that becomes the container's root.
pub(crate) fn command(
    pod: &PodContext,
    container: &Value,
    root: &Path,
    unshare: &Path,
    in_pod: impl Fn(&Path) -> Command,
) -> Result<Command> {
    let image = yaml::str_at(container, "/image")?;
    let files = image_files(image)?;
    let mut argv = strings(container, "/command")?;
    ensure!(
        !argv.is_empty(),
        "the replay needs an explicit command for image {image}"
    );
    argv.extend(strings(container, "/args")?);
    let (uid, gid, groups) = identity(pod, container)?;
    let read_only_root =
        container.pointer("/securityContext/readOnlyRootFilesystem") == Some(&Value::Bool(true));
    fs::create_dir_all(root).with_context(|| format!("failed to create {}", root.display()))?;

    let q = |path: &Path| shell_quote(&path.to_string_lossy());
    let mut script = vec![
        "set -eu".to_string(),
        format!(
            "mount -t tmpfs -o mode=0755,size=16m container-root {}",
            q(root)
        ),
        format!("cd {}", q(root)),
        "mkdir usr etc proc dev".to_string(),
        "ln -s usr/bin bin; ln -s usr/sbin sbin; ln -s usr/lib lib; ln -s usr/lib64 lib64"
            .to_string(),
        "mount --bind /usr usr; mount -o remount,bind,ro usr".to_string(),
        "mount --rbind /dev dev; mount -t proc proc proc".to_string(),
        "cp /etc/passwd /etc/group /etc/nsswitch.conf etc/".to_string(),
        format!("cp {} etc/hosts", q(&pod.hosts_file)),
    ];
    if !files.is_empty() {
        // The image's own files: a writable layer over /usr/local contains the
        // mount points, then each file is bound read-only.
        script.push("mount -t tmpfs -o mode=0755,size=1m image-files usr/local".to_string());
    }
    for (image_path, local) in &files {
        ensure!(
            image_path.starts_with("/usr/local/"),
            "image file {image_path} must be under /usr/local"
        );
        let target = shell_quote(&format!(".{image_path}"));
        let parent = shell_quote(&format!(
            ".{}",
            Path::new(image_path).parent().unwrap().display()
        ));
        script.push(format!("mkdir -p {parent}; touch {target}"));
        script.push(format!(
            "mount --bind {} {target}; mount -o remount,bind,ro {target}",
            q(local)
        ));
    }
    for (mount_path, source, read_only) in mounts(pod, container)? {
        let target = shell_quote(&format!(".{mount_path}"));
        script.push(format!(
            "mkdir -p {target}; mount --bind {} {target}",
            q(&source)
        ));
        if read_only {
            script.push(format!("mount -o remount,bind,ro {target}"));
        }
    }
    if read_only_root {
        script.push(format!("mount -o remount,ro {}", q(root)));
    }
    let groups: Vec<String> = groups.iter().map(u64::to_string).collect();
    let argv: Vec<String> = argv.iter().map(|word| shell_quote(word)).collect();
    // allowPrivilegeEscalation: false is the no_new_privs flag, which the
    // exec chain keeps. Capabilities go with the switch to a non-root uid.
    let no_new_privs = match container.pointer("/securityContext/allowPrivilegeEscalation") {
        Some(Value::Bool(false)) => "setpriv --no-new-privs ",
        _ => "",
    };
    script.push(format!(
        "exec {no_new_privs}chroot --userspec={uid}:{gid} --groups={} {} {}",
        groups.join(","),
        q(root),
        argv.join(" ")
    ));

    let mut command = in_pod(unshare);
    command
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(script.join("\n"))
        .env_clear()
        .envs(environment(pod, container)?);
    Ok(command)
}
