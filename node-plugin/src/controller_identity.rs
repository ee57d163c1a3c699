//! The node API serves the controller only.
//!
//! The TLS handshake already refused any client without a certificate of
//! the configured CA. The same CA signs every node's certificate too, so
//! that alone would let one node's key drive another node: this
//! interceptor also requires the client's verified certificate to be
//! valid for the controller's name (see [`blksnap_node_api::identity`]).

use rustls_pki_types::{CertificateDer, DnsName, ServerName};
use tonic::{Request, Status};

/// Admits a call only from a client whose certificate names the controller.
#[derive(Debug, Clone)]
pub struct ControllerOnly {
    name: DnsName<'static>,
}

impl ControllerOnly {
    /// The check for the controller of `driver_name`.
    pub fn new(driver_name: &str) -> crate::Result<Self> {
        let text = blksnap_node_api::identity::controller_name(driver_name);
        let name = DnsName::try_from(text.clone())
            .map_err(|_| crate::Error::Config(format!("{text:?} is not a DNS name")))?;
        Ok(ControllerOnly { name })
    }

    /// Whether `cert`, the client's end-entity certificate, is valid for
    /// the controller's name.
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), Status> {
        let cert = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| Status::unauthenticated(format!("client certificate unreadable: {e}")))?;
        cert.verify_is_valid_for_subject_name(&ServerName::DnsName(self.name.clone()))
            .map_err(|_| {
                Status::permission_denied(format!(
                    "the client certificate is not the controller's ({}): the node API serves only the controller",
                    self.name.as_ref()
                ))
            })
    }
}

impl tonic::service::Interceptor for ControllerOnly {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        self.check(leaf)?;
        Ok(request)
    }
}
