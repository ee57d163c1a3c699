//! Helpers for the tests and benchmarks of both binaries (feature `dev`,
//! which only their dev-dependencies turn on): a CA and the certificates
//! it signs, made with rcgen, for the node API's mutual TLS. A failure to
//! make one is a broken test set-up, so it panics.

/// What a leaf certificate is for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// A CA and the certificates it signs.
pub struct Pki {
    /// The CA's certificate, in PEM.
    pub ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// A self-signed CA whose common name is `name`.
    pub fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA");
        Pki {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// A certificate for `dns` (its one name and common name) and its
    /// key, in PEM.
    pub fn leaf_pem(&self, dns: &str, usage: Usage) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![dns.to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns);
        params.extended_key_usages = vec![match usage {
            Usage::Server => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_signed_by_their_ca_and_name_their_host() {
        let pki = Pki::new("test CA");
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let (cert, key) = pki.leaf_pem("node-a.example", Usage::Server);
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.contains("PRIVATE KEY"), "{key}");
        assert_ne!(cert, pki.ca_pem);
        let (other, _) = pki.leaf_pem("node-a.example", Usage::Client);
        assert_ne!(cert, other, "a fresh key and certificate each time");
    }
}
