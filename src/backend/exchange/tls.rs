//! TLS for the EWS endpoint: rustls (ring) trusting the system roots plus the
//! connection's `trusted_ca_pem`, or nothing at all when the connection opts
//! out with `accept_invalid_certs`; and the `tls-server-end-point` channel
//! binding (RFC 5929) that NTLM needs under Exchange's Extended Protection.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::domain::ExchangeSettings;

/// The system's roots, loaded once per process (reading the store takes a few
/// milliseconds and it does not change under a running server). When the
/// system has none (a bare container), the Mozilla roots stand in.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration for `settings`. `Err` explains a bad
/// `trusted_ca_pem` (a configuration error: permanent).
pub fn client_config(settings: &ExchangeSettings) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let mut config = if settings.accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = system_roots().clone();
        if !settings.trusted_ca_pem.trim().is_empty() {
            let mut count = 0;
            for cert in CertificateDer::pem_slice_iter(settings.trusted_ca_pem.as_bytes()) {
                let cert = cert
                    .map_err(|e| format!("trusted_ca_pem is not a valid PEM certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("trusted_ca_pem holds an unusable certificate: {e}"))?;
                count += 1;
            }
            if count == 0 {
                return Err("trusted_ca_pem holds no PEM certificate".into());
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // IIS does Windows authentication over HTTP/1.1 only; we speak nothing else.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))
}

/// `accept_invalid_certs`: any certificate, any name. Handshake signatures are
/// still checked, so the session key really belongs to whoever holds the
/// presented certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a TLS failure means for a delivery.
pub enum TlsFailure {
    /// The certificate was refused: retrying cannot help.
    Certificate(String),
    /// The peer does not speak TLS (or no common version): a configuration
    /// error, permanent.
    Protocol(String),
    /// The connection broke during the handshake: worth retrying.
    Io(String),
}

pub fn classify_handshake_error(e: &std::io::Error) -> TlsFailure {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => TlsFailure::Certificate(format!(
            "the server's TLS certificate was refused ({c:?}); add the issuing CA to \
             trusted_ca_pem, or set accept_invalid_certs for a lab server"
        )),
        Some(
            err @ (rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }),
        ) => TlsFailure::Protocol(format!(
            "the server does not speak TLS on this port ({err}); if it serves plain HTTP \
             only, set allow_plain_http"
        )),
        Some(err @ (rustls::Error::AlertReceived(_) | rustls::Error::PeerIncompatible(_))) => {
            TlsFailure::Protocol(format!("TLS handshake refused by the server: {err}"))
        }
        Some(err) => TlsFailure::Protocol(format!("TLS handshake failed: {err}")),
        None => TlsFailure::Io(format!("TLS handshake failed: {e}")),
    }
}

/// RFC 5929 `tls-server-end-point` application data: the prefix and the hash
/// of the server's certificate, with the certificate's own signature hash
/// (SHA-256 for MD5, SHA-1 and anything unrecognised).
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    let algorithm = match signature_algorithm_oid(cert_der) {
        Some(oid) if oid == OID_ECDSA_SHA384 || oid == OID_RSA_SHA384 => &ring::digest::SHA384,
        Some(oid) if oid == OID_ECDSA_SHA512 || oid == OID_RSA_SHA512 => &ring::digest::SHA512,
        _ => &ring::digest::SHA256,
    };
    let digest = ring::digest::digest(algorithm, cert_der);
    let mut out = b"tls-server-end-point:".to_vec();
    out.extend_from_slice(digest.as_ref());
    out
}

// DER contents of the signature algorithm OIDs that select another hash.
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
const OID_RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const OID_RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];

/// `Certificate.signatureAlgorithm.algorithm`: SEQUENCE { tbsCertificate,
/// SEQUENCE { OID, params }, signature }. A few lines of DER rather than an
/// X.509 parser dependency.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _tbs, rest) = der_tlv(certificate)?;
    let (tag, algorithm, _) = der_tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_tlv(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER tag-length-value: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_certificate_signature() {
        let p256 = cert_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        let cb = tls_server_end_point(&p256);
        assert!(cb.starts_with(b"tls-server-end-point:"));
        assert_eq!(cb.len(), 21 + 32);
        assert_eq!(
            &cb[21..],
            ring::digest::digest(&ring::digest::SHA256, &p256).as_ref()
        );

        let p384 = cert_with(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(signature_algorithm_oid(&p384), Some(OID_ECDSA_SHA384));
        assert_eq!(tls_server_end_point(&p384).len(), 21 + 48);
    }

    #[test]
    fn garbage_is_hashed_with_sha256() {
        assert_eq!(tls_server_end_point(b"\x30\x84").len(), 21 + 32);
        assert_eq!(signature_algorithm_oid(b""), None);
    }

    #[test]
    fn a_bad_trusted_ca_pem_is_explained() {
        let mut s = crate::domain::ExchangeSettings {
            server: crate::domain::ExchangeServer::parse("mail.example.com").unwrap(),
            version: crate::domain::ExchangeVersion::Exchange2016,
            auth: crate::domain::ExchangeAuth::None,
            username: String::new(),
            password: None,
            domain: String::new(),
            save_copy: false,
            allow_plain_http: false,
            trusted_ca_pem: "not a certificate".into(),
            accept_invalid_certs: false,
            timeout: None,
        };
        let e = client_config(&s).err().unwrap();
        assert!(e.contains("trusted_ca_pem"), "{e}");
        s.trusted_ca_pem.clear();
        assert!(client_config(&s).is_ok());
    }
}
