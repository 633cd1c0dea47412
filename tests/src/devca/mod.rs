//! `meshcert-devca`: a development CA that speaks Istio's
//! `IstioCertificateService` over TLS, authenticates Kubernetes-shaped
//! service-account tokens, checks CSRs like cert-manager istio-csr and can
//! misbehave on purpose through [`fault::FaultSpec`].

pub mod csr;
pub mod fault;
pub mod issue;
pub mod pki;
pub mod server;
pub mod service;
pub mod state;
pub mod token;
