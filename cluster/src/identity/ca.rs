//! The cluster CA (ECDSA P-256: rustls and the Go TLS of nats-server 2.9 both accept it) and the
//! board certificates it signs for route TLS.
//!
//! Validity runs from 1975 to 4096 (rcgen's defaults) on purpose: a Raspberry Pi has no
//! real-time clock, and a board that boots offline may believe it is any date; a certificate
//! that "is not yet valid" would cut it off from its cluster. Trust ends by replacing the CA,
//! not by dates.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use super::IdentityError;

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertAndKey {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<hidden>")
            .finish()
    }
}

/// The CA's parameters; derived from the cluster name only, so the issuer can be rebuilt from
/// the stored key when a board certificate is signed later.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "bramble");
    dn.push(DnType::CommonName, format!("bramble cluster {cluster} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A new CA for `cluster`.
pub(super) fn generate_ca(cluster: &str) -> Result<CertAndKey, IdentityError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(IdentityError::Tls)?;
    let cert = ca_params(cluster)
        .self_signed(&key)
        .map_err(IdentityError::Tls)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Signs a certificate for board `name` reachable at `addresses` (IP SANs; the route URLs use
/// addresses), good for TLS server and client authentication (routes are mutual TLS).
pub(super) fn issue(
    cluster: &str,
    ca: &CertAndKey,
    name: &str,
    addresses: &[IpAddr],
) -> Result<CertAndKey, IdentityError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(IdentityError::Tls)?;
    let issuer = Issuer::new(ca_params(cluster), ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(IdentityError::Tls)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "bramble");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.serial_number = Some(rand::random::<[u8; 16]>().to_vec().into());
    params.subject_alt_names = addresses.iter().copied().map(SanType::IpAddress).collect();
    params.subject_alt_names.push(SanType::DnsName(
        name.to_owned().try_into().map_err(IdentityError::Tls)?,
    ));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(IdentityError::Tls)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// SHA-256 of a PEM certificate's DER bytes.
pub(super) fn fingerprint(cert_pem: &str) -> Result<[u8; 32], IdentityError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| IdentityError::BadCertificate)?;
    Ok(Sha256::digest(der.as_ref()).into())
}
