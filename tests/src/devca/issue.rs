//! Leaf issuance and response assembly, including the certificate-shaping
//! faults of [`FaultSpec`].

use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{Issuer, KeyPair};
use time::OffsetDateTime;

use super::csr::CheckedCsr;
use super::fault::FaultSpec;
use super::pki::{self, LeafSpec, SignedLeaf, BACKDATE};
use super::state::CaMaterial;

/// The leaf element that the `garbage-pem` fault returns.
pub const GARBAGE_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n";

/// An issued certificate chain, ready to send.
#[derive(Debug)]
pub struct Issued {
    /// The `cert_chain` of the response.
    pub cert_chain: Vec<String>,
    /// Serial number of the leaf in lowercase hexadecimal.
    pub serial_hex: String,
    /// SPIFFE ID placed in the leaf.
    pub spiffe_id: String,
    /// Validity period of the leaf, from notBefore to notAfter.
    pub lifetime: Duration,
}

/// Signs a leaf for `csr` with lifetime `ttl` and builds the response chain
/// `[leaf, intermediate, trust bundle]`, modified by `faults`.
pub fn issue(
    ca: &CaMaterial,
    csr: &CheckedCsr,
    ttl: Duration,
    faults: &FaultSpec,
    trust_domain: &str,
) -> Result<Issued> {
    let now = OffsetDateTime::now_utc();
    let (not_before, not_after) = if faults.expired_leaf {
        (
            now - Duration::from_secs(2 * 3600),
            now - Duration::from_secs(3600),
        )
    } else if let Some(offset) = faults.not_yet_valid {
        (now + offset, now + offset + ttl)
    } else {
        // Back-dating by a tenth of a short lifetime at most keeps the
        // renewal point of minute-long test certificates in the future.
        (now - BACKDATE.min(ttl / 10), now + ttl)
    };
    let spiffe_id = if faults.other_san {
        format!("spiffe://{trust_domain}/ns/other/sa/other")
    } else {
        csr.spiffe_id.clone()
    };
    let spec = LeafSpec {
        spiffe_id: spiffe_id.clone(),
        not_before,
        not_after,
    };

    let short_lived_intermediate = match faults.intermediate_expires {
        Some(lifetime) => Some(pki::generate_intermediate(&ca.root, lifetime)?),
        None => None,
    };
    let intermediate = short_lived_intermediate
        .as_ref()
        .unwrap_or(&ca.intermediate);

    let leaf = sign_with_faults(&spec, csr, intermediate, faults)?;

    let leaf_pem = if faults.garbage_pem {
        GARBAGE_PEM.to_owned()
    } else {
        leaf.pem
    };
    let mut cert_chain = if faults.short_chain {
        vec![leaf_pem]
    } else {
        vec![
            leaf_pem,
            intermediate.pem.clone(),
            ca.trust_bundle_pem.clone(),
        ]
    };
    if faults.reverse_chain {
        cert_chain.reverse();
    }
    if let Some(bytes) = faults.huge {
        cert_chain.push(junk_pem(bytes));
    }

    let lifetime = (not_after - not_before).try_into().unwrap_or_default();
    Ok(Issued {
        cert_chain,
        serial_hex: leaf.serial_hex,
        spiffe_id,
        lifetime,
    })
}

fn sign_with_faults(
    spec: &LeafSpec,
    csr: &CheckedCsr,
    intermediate: &pki::CaCert,
    faults: &FaultSpec,
) -> Result<SignedLeaf> {
    let other_key = if faults.leaf_other_key {
        Some(KeyPair::generate().context("failed to generate the unrelated leaf key")?)
    } else {
        None
    };
    if faults.broken_chain {
        // Same issuer name and authority key identifier as the real
        // intermediate but a different key: the chain looks right by name
        // and the signature does not verify.
        let rogue_key = KeyPair::generate().context("failed to generate the rogue CA key")?;
        let rogue = Issuer::from_ca_cert_pem(&intermediate.pem, rogue_key)
            .context("failed to parse the intermediate certificate")?;
        return match &other_key {
            Some(key) => pki::sign_leaf(spec, key, &rogue),
            None => pki::sign_leaf(spec, &csr.public_key, &rogue),
        };
    }
    match &other_key {
        Some(key) => pki::sign_leaf(spec, key, &intermediate.issuer),
        None => pki::sign_leaf(spec, &csr.public_key, &intermediate.issuer),
    }
}

/// Builds a PEM-looking block of exactly `bytes` bytes, or `bytes` letters
/// when that is too short for the BEGIN and END lines.
fn junk_pem(bytes: usize) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----\n";
    const END: &str = "\n-----END CERTIFICATE-----\n";
    let overhead = BEGIN.len() + END.len();
    if bytes < overhead {
        return "A".repeat(bytes);
    }
    let body_len = bytes - overhead;
    let mut junk = String::with_capacity(bytes);
    junk.push_str(BEGIN);
    // Lines of 63 letters plus a newline, like base64 PEM bodies.
    for index in 0..body_len {
        junk.push(if index % 64 == 63 { '\n' } else { 'A' });
    }
    junk.push_str(END);
    junk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_has_exact_size() {
        for bytes in [0, 10, 55, 56, 1000, 65_536] {
            let junk = junk_pem(bytes);
            assert_eq!(junk.len(), bytes);
        }
        assert!(junk_pem(1000).starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(junk_pem(1000).ends_with("-----END CERTIFICATE-----\n"));
    }
}
