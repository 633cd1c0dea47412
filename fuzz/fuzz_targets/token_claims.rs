//! Fuzzes the decoding of a service-account token's claims and the
//! identity derived from them.

#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use meshcert_common::identity::{SpiffeId, TokenClaims};

fuzz_target!(|data: &[u8]| {
    let Ok(jwt) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(claims) = TokenClaims::decode(jwt) else {
        return;
    };
    if let Some(expires_at) = claims.expires_at() {
        let _ = SystemTime::now().duration_since(expires_at);
    }
    let namespace = claims.namespace();
    let service_account = claims.service_account();
    if let (Some(namespace), Some(service_account)) = (namespace, service_account) {
        if let Ok(spiffe_id) = SpiffeId::new("cluster.local", &namespace, &service_account) {
            assert!(spiffe_id.uri().starts_with("spiffe://cluster.local/ns/"));
        }
    }
});
