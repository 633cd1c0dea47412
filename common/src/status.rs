//! A report of what is published in a certificate directory, read from the
//! files alone; no CA is contacted.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::bundle::{self, rfc3339};
use crate::certdir::CertDir;
use crate::identity::SpiffeId;
use crate::issue;
use crate::schedule::RenewPolicy;
use crate::settings::{parse_jitter, parse_ratio};

/// Arguments of the `status` subcommand.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Certificate directory to report on.
    #[arg(long, env = "OUTPUT_CERTS", default_value = "/etc/istio-certs")]
    pub out_dir: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Renewal ratio used to compute the renewal time, as the refresher's setting.
    #[arg(long, env = "SECRET_GRACE_PERIOD_RATIO", default_value_t = 0.5, value_parser = parse_ratio)]
    pub renew_ratio: f64,

    /// Renewal jitter; the report shows the earliest and latest renewal times it allows.
    #[arg(long, env = "SECRET_GRACE_PERIOD_RATIO_JITTER", default_value_t = 0.01, value_parser = parse_jitter)]
    pub renew_jitter: f64,
}

/// One certificate of the chain or the root bundle.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateInfo {
    /// Subject in RFC 4514 form; empty for SPIFFE leaves.
    pub subject: String,
    /// Issuer in RFC 4514 form.
    pub issuer: String,
    /// Serial number in lowercase hex.
    pub serial: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
}

/// Mode and owner of one published file.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// File name in the directory.
    pub name: String,
    /// Permission bits in octal, such as `0600`.
    pub mode: String,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

/// Report of the published set and whether it is usable.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The directory.
    pub dir: PathBuf,
    /// Whether a complete, valid, unexpired set is published.
    pub valid: bool,
    /// Reason the set is not valid, when it is not.
    pub problem: Option<String>,
    /// Generation directory `..data` points at.
    pub generation: Option<String>,
    /// SPIFFE ID in the leaf's URI SAN.
    pub spiffe_id: Option<String>,
    /// Leaf serial in lowercase hex.
    pub serial: Option<String>,
    /// Key algorithm of the leaf, in `--key-type` spelling.
    pub key_type: Option<String>,
    /// Leaf notBefore, RFC 3339.
    pub not_before: Option<String>,
    /// Leaf notAfter, RFC 3339.
    pub not_after: Option<String>,
    /// Earliest notAfter of the chain, RFC 3339.
    pub expires_at: Option<String>,
    /// Renewal time without jitter under the given ratio, RFC 3339.
    pub renew_at: Option<String>,
    /// Seconds from now until `renew_at`; negative when already due.
    pub seconds_until_renewal: Option<i64>,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateInfo>,
    /// Roots in `root-cert.pem`.
    pub roots: Vec<CertificateInfo>,
    /// The published files.
    pub files: Vec<FileInfo>,
}

/// Reads the directory and builds the report at `now`. Files that cannot be
/// read are reported in `problem` rather than as an error.
pub fn read_status(dir: &Path, policy: &RenewPolicy, now: SystemTime) -> Status {
    let cert_dir = CertDir::new(dir, None);
    let mut status = Status {
        dir: dir.to_path_buf(),
        valid: false,
        problem: None,
        generation: cert_dir.current_generation(),
        spiffe_id: None,
        serial: None,
        key_type: None,
        not_before: None,
        not_after: None,
        expires_at: None,
        renew_at: None,
        seconds_until_renewal: None,
        chain: Vec::new(),
        roots: Vec::new(),
        files: file_infos(dir),
    };
    let files = match cert_dir.read() {
        Ok(files) => files,
        Err(error) => {
            status.problem = Some(error.to_string());
            return status;
        }
    };
    status.chain = describe_all(&files.chain_pem);
    status.roots = describe_all(&files.root_pem);
    fill_leaf(&mut status, &files.chain_pem);

    let Some(spiffe_id) = status.spiffe_id.as_deref().and_then(SpiffeId::parse) else {
        status.problem = Some("the leaf has no SPIFFE URI SAN".to_string());
        return status;
    };
    match issue::read_published(&cert_dir, &spiffe_id, now) {
        Ok((_key, set)) => {
            let renew_at = policy.renew_at_with_draw(&set, 0.0);
            status.valid = true;
            status.expires_at = Some(rfc3339(set.expires_at));
            status.renew_at = Some(rfc3339(renew_at));
            status.seconds_until_renewal = Some(signed_seconds(renew_at, now));
        }
        Err(error) => status.problem = Some(error.to_string()),
    }
    status
}

/// Prints the report for `args` to stdout and returns the exit code of the
/// `status` subcommand: 0 for a valid set, 1 otherwise, 2 if printing failed.
pub fn print_status(args: &StatusArgs) -> u8 {
    let policy = RenewPolicy {
        ratio: args.renew_ratio,
        jitter: args.renew_jitter,
    };
    let report = read_status(&args.out_dir, &policy, SystemTime::now());
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("formatting the status as JSON failed: {error}");
                return 2;
            }
        }
    } else {
        print!("{}", format_text(&report));
    }
    u8::from(!report.valid)
}

/// Formats the report for people.
pub fn format_text(status: &Status) -> String {
    let show = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_string());
    let mut out = String::new();
    let verdict = if status.valid { "valid" } else { "NOT VALID" };
    out.push_str(&format!("directory:       {}\n", status.dir.display()));
    out.push_str(&format!("state:           {verdict}\n"));
    if let Some(problem) = &status.problem {
        out.push_str(&format!("problem:         {problem}\n"));
    }
    out.push_str(&format!("generation:      {}\n", show(&status.generation)));
    out.push_str(&format!("identity:        {}\n", show(&status.spiffe_id)));
    out.push_str(&format!("serial:          {}\n", show(&status.serial)));
    out.push_str(&format!("key type:        {}\n", show(&status.key_type)));
    out.push_str(&format!("not before:      {}\n", show(&status.not_before)));
    out.push_str(&format!("not after:       {}\n", show(&status.not_after)));
    out.push_str(&format!("chain expires:   {}\n", show(&status.expires_at)));
    let until = status
        .seconds_until_renewal
        .map(|s| {
            format!(
                " (in {})",
                humantime::format_duration(Duration::from_secs(s.max(0) as u64))
            )
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "renews at:       {}{until}\n",
        show(&status.renew_at)
    ));
    out.push_str("chain:\n");
    for certificate in &status.chain {
        out.push_str(&format!(
            "  subject={:?} issuer={:?} expires {}\n",
            certificate.subject, certificate.issuer, certificate.not_after
        ));
    }
    out.push_str("roots:\n");
    for root in &status.roots {
        out.push_str(&format!(
            "  subject={:?} expires {}\n",
            root.subject, root.not_after
        ));
    }
    out.push_str("files:\n");
    for file in &status.files {
        out.push_str(&format!(
            "  {:<16} {} uid={} gid={} {} bytes\n",
            file.name, file.mode, file.uid, file.gid, file.size
        ));
    }
    out
}

fn file_infos(dir: &Path) -> Vec<FileInfo> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with(".."))
        .collect();
    names.sort();
    let mut infos = Vec::new();
    for name in names {
        let Ok(meta) = fs::metadata(dir.join(&name)) else {
            continue;
        };
        infos.push(FileInfo {
            mode: format!("{:04o}", meta.mode() & 0o7777),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            name,
        });
    }
    infos
}

fn describe_all(pem: &str) -> Vec<CertificateInfo> {
    let Ok(ders) = bundle::pem_certificates(pem, 0) else {
        return Vec::new();
    };
    ders.iter()
        .filter_map(|der| {
            X509Certificate::from_der(der)
                .ok()
                .map(|(_, c)| describe(&c))
        })
        .collect()
}

fn describe(certificate: &X509Certificate<'_>) -> CertificateInfo {
    let validity = certificate.validity();
    CertificateInfo {
        subject: certificate.subject().to_string(),
        issuer: certificate.issuer().to_string(),
        serial: certificate.raw_serial_as_string().replace(':', ""),
        not_before: rfc3339(unix(validity.not_before.timestamp())),
        not_after: rfc3339(unix(validity.not_after.timestamp())),
    }
}

fn fill_leaf(status: &mut Status, chain_pem: &str) {
    let Ok(ders) = bundle::pem_certificates(chain_pem, 0) else {
        return;
    };
    let Some(Ok((_, leaf))) = ders.first().map(|der| X509Certificate::from_der(der)) else {
        return;
    };
    let info = describe(&leaf);
    status.serial = Some(info.serial);
    status.not_before = Some(info.not_before);
    status.not_after = Some(info.not_after);
    status.key_type = key_type_name(&leaf);
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        status.spiffe_id = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_string()),
            _ => None,
        });
    }
}

fn key_type_name(leaf: &X509Certificate<'_>) -> Option<String> {
    match leaf.public_key().parsed().ok()? {
        PublicKey::RSA(rsa) => Some(format!("rsa-{}", rsa.key_size())),
        PublicKey::EC(point) => match point.key_size() {
            256 => Some("ecdsa-p256".to_string()),
            384 => Some("ecdsa-p384".to_string()),
            bits => Some(format!("ecdsa-{bits}")),
        },
        _ => Some(leaf.public_key().algorithm.algorithm.to_id_string()),
    }
}

fn unix(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn signed_seconds(at: SystemTime, now: SystemTime) -> i64 {
    match at.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
