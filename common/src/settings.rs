//! Command-line settings shared by `meshcert-init` and `meshcert-refresher`.
//!
//! Flag names and environment variables follow istio-agent where it has one,
//! so a pod spec written for istio-agent's `OUTPUT_CERTS` mode reads the same.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::csr::KeyType;

/// Settings for reaching the CA and naming the workload.
#[derive(Debug, Clone, Args)]
pub struct CaSettings {
    /// Address of the Istio CA as `host:port`.
    #[arg(long, env = "CA_ADDR", default_value = "istiod.istio-system.svc:15012")]
    pub ca_addr: String,

    /// PEM file with the root certificates that sign the CA's serving certificate.
    #[arg(
        long,
        env = "CA_ROOT_CA",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root: PathBuf,

    /// TLS server name expected in the CA's certificate [default: host of --ca-addr].
    #[arg(long, env = "ISTIOD_SAN")]
    pub ca_server_name: Option<String>,

    /// File holding the service-account token sent as `authorization: Bearer`; re-read on every request.
    #[arg(
        long,
        env = "TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/istio-token"
    )]
    pub token_file: PathBuf,

    /// Value of the `clusterid` request header.
    #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// SPIFFE trust domain of the workload identity.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Kubernetes namespace of the workload [default: from the token's claims].
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Service account of the workload [default: from the token's claims].
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// Directory where key.pem, cert-chain.pem and root-cert.pem are published.
    #[arg(long, env = "OUTPUT_CERTS", default_value = "/etc/istio-certs")]
    pub out_dir: PathBuf,

    /// Private key algorithm of each new key.
    #[arg(long, env = "KEY_TYPE", value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,

    /// Requested certificate lifetime, such as `24h` or `90m`.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub ttl: Duration,

    /// Renew when this share of the certificate's lifetime remains (between 0 and 1).
    #[arg(
        long,
        env = "SECRET_GRACE_PERIOD_RATIO",
        default_value_t = 0.5,
        value_parser = parse_ratio, allow_hyphen_values = true
    )]
    pub renew_ratio: f64,

    /// Random spread added to --renew-ratio, as a share of the lifetime, so a fleet does not renew at once.
    #[arg(
        long,
        env = "SECRET_GRACE_PERIOD_RATIO_JITTER",
        default_value_t = 0.01,
        value_parser = parse_jitter, allow_hyphen_values = true
    )]
    pub renew_jitter: f64,

    /// Group (name or numeric GID) that owns the published files; key files become 0640 instead of 0600.
    #[arg(long, env = "CERT_GROUP", value_parser = parse_group, allow_hyphen_values = true)]
    pub group: Option<u32>,

    /// Time limit of one CA request, connection included, such as `10s`.
    #[arg(long, env = "CA_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub request_timeout: Duration,

    /// Time limit of the TCP and TLS connection to the CA, such as `5s`.
    #[arg(long, env = "CA_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub connect_timeout: Duration,

    /// How far a certificate's notBefore may lie ahead of the local clock; within it the set is held until valid.
    #[arg(long, env = "MAX_CLOCK_SKEW", default_value = "5m", value_parser = parse_duration, allow_hyphen_values = true)]
    pub max_clock_skew: Duration,

    /// First retry delay after a failed CA request; it doubles up to --retry-max-backoff.
    #[arg(long, env = "RETRY_INITIAL_BACKOFF", default_value = "1s", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub retry_initial_backoff: Duration,

    /// Cap of the retry delay after failed CA requests.
    #[arg(long, env = "RETRY_MAX_BACKOFF", default_value = "60s", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub retry_max_backoff: Duration,

    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output format; levels are set with `RUST_LOG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl CaSettings {
    /// Returns the TLS server name: `--ca-server-name`, or the host part of `--ca-addr`.
    pub fn server_name(&self) -> String {
        if let Some(name) = &self.ca_server_name {
            return name.clone();
        }
        let host = match self.ca_addr.rsplit_once(':') {
            Some((host, _port)) => host,
            None => self.ca_addr.as_str(),
        };
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    }

    /// Checks the combinations that single-flag parsers cannot see.
    ///
    /// Returns a message naming the flags and the accepted values.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_ratio - self.renew_jitter <= 0.0
            || self.renew_ratio + self.renew_jitter >= 1.0
        {
            return Err(format!(
                "invalid --renew-ratio {} with --renew-jitter {}: ratio - jitter must be above 0 and ratio + jitter below 1",
                self.renew_ratio, self.renew_jitter
            ));
        }
        if self.retry_initial_backoff > self.retry_max_backoff {
            return Err(format!(
                "invalid --retry-initial-backoff {}: it must not exceed --retry-max-backoff {}",
                humantime::format_duration(self.retry_initial_backoff),
                humantime::format_duration(self.retry_max_backoff)
            ));
        }
        crate::ca::parse_ca_addr(&self.ca_addr)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

/// Parses a duration such as `90s`, `24h` or `1h30m`; zero is allowed.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        format!("invalid duration {value:?}: {e}; expected a number with a unit, such as 90s, 10m or 24h")
    })
}

/// Parses a duration that must be above zero.
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() {
        return Err(format!(
            "invalid duration {value:?}: it must be above zero, such as 10s"
        ));
    }
    Ok(duration)
}

/// Parses a certificate lifetime: at least one minute.
pub fn parse_ttl(value: &str) -> Result<Duration, String> {
    let ttl = parse_duration(value)?;
    if ttl < Duration::from_secs(60) {
        return Err(format!(
            "invalid TTL {value:?}: it must be at least 1m, such as 24h"
        ));
    }
    Ok(ttl)
}

/// Parses a share strictly between 0 and 1.
pub fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(ratio) if ratio > 0.0 && ratio < 1.0 => Ok(ratio),
        _ => Err(format!(
            "invalid ratio {value:?}: expected a number between 0 and 1 (exclusive), such as 0.5"
        )),
    }
}

/// Parses a jitter share in `[0, 1)`.
pub fn parse_jitter(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(jitter) if (0.0..1.0).contains(&jitter) => Ok(jitter),
        _ => Err(format!(
            "invalid jitter {value:?}: expected a number from 0 up to 1 (exclusive), such as 0.01"
        )),
    }
}

/// Parses a group given as a numeric GID or a name in the group database.
pub fn parse_group(value: &str) -> Result<u32, String> {
    let value = value.trim();
    if let Ok(gid) = value.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(value) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!(
            "invalid group {value:?}: no such group; give a numeric GID, such as the pod's fsGroup"
        )),
        Err(e) => Err(format!("invalid group {value:?}: lookup failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_accepts_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    }

    #[test]
    fn parse_duration_rejects_bare_number() {
        let message = parse_duration("90").unwrap_err();
        assert!(message.contains("\"90\""), "{message}");
        assert!(message.contains("24h"), "{message}");
    }

    #[test]
    fn parse_ttl_rejects_zero_and_negative() {
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("-1h").is_err());
        assert!(parse_ttl("30s").is_err());
        assert_eq!(parse_ttl("1m"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn parse_ratio_bounds() {
        assert!(parse_ratio("0").is_err());
        assert!(parse_ratio("1").is_err());
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("abc").is_err());
        assert_eq!(parse_ratio("0.5"), Ok(0.5));
    }

    #[test]
    fn parse_group_numeric_and_name() {
        assert_eq!(parse_group("1234"), Ok(1234));
        assert_eq!(parse_group("root"), Ok(0));
        let message = parse_group("no-such-group-meshcert").unwrap_err();
        assert!(message.contains("no-such-group-meshcert"), "{message}");
    }
}
