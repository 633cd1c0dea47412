//! The issuance path shared by `meshcert-init` and `meshcert-refresher`.
#![forbid(unsafe_code)]

/// Generated Istio CA protobuf messages and gRPC stubs.
#[allow(missing_docs, clippy::all, unreachable_pub, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}
