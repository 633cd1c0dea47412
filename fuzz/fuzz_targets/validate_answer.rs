//! Fuzzes the validation of a CA answer, then checks that a set it accepts
//! passes the published-set validation too, as init and the refresher rely
//! on both agreeing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcert_common::bundle::{validate_answer, validate_files, Expected};
use meshcert_common::identity::SpiffeId;
use meshcert_fuzz::{decode_answer, first_leaf_spki, SPIFFE_ID};

fuzz_target!(|data: &[u8]| {
    let Some(input) = decode_answer(data) else {
        return;
    };
    let (trust_domain, namespace, service_account) = SPIFFE_ID;
    let spiffe_id = SpiffeId::new(trust_domain, namespace, service_account).unwrap();
    let spki = if input.key_from_input {
        first_leaf_spki(&input.elements)
    } else {
        b"not a public key".to_vec()
    };
    let expected = Expected {
        spiffe_id: &spiffe_id,
        public_key_spki: &spki,
        max_clock_skew: input.max_clock_skew,
    };

    let Ok(set) = validate_answer(&input.elements, &expected, input.now) else {
        return;
    };
    assert!(set.valid_from < set.expires_at, "empty validity window");
    assert!(
        set.not_before <= set.valid_from,
        "leaf starts after the path"
    );

    let again = validate_files(&set.chain_pem, &set.root_bundle_pem, &expected, input.now)
        .expect("an accepted answer must pass the published-set validation");
    assert_eq!(again, set, "published-set validation changed the set");
});
