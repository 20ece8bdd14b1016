//! TLS listeners: certificates chosen by SNI (rustls `ResolvesServerCert`), the first one also
//! answering unknown names, and the SNI name kept after the handshake so requests can be
//! routed by it.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

/// Why a certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {cert} / key {key}: {why}")]
    Load {
        cert: String,
        key: String,
        why: String,
    },
    #[error("certificate {0} names no DNS host (subjectAltName or CN)")]
    NoNames(String),
    #[error("no certificates configured")]
    Empty,
}

/// The certificates of the TLS listeners, by name.
pub struct SniCertResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates, by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    names: Vec<String>,
}

impl fmt::Debug for SniCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniCertResolver")
            .field("names", &self.names)
            .finish()
    }
}

impl SniCertResolver {
    /// Loads `(cert, key)` PEM pairs; the first is the default. Names come from each
    /// certificate's subjectAltName DNS entries (or its CN when it has none).
    pub fn load(pairs: &[(PathBuf, PathBuf)]) -> Result<SniCertResolver, TlsError> {
        pingora::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default().ok_or(TlsError::Empty)?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut names = Vec::new();
        let mut default = None;
        for (cert, key) in pairs {
            let (ck, cert_names) = load_pair(provider, cert, key)?;
            let ck = Arc::new(ck);
            for name in cert_names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard
                        .entry(parent.to_owned())
                        .or_insert_with(|| ck.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| ck.clone()),
                };
                names.push(name);
            }
            default.get_or_insert(ck);
        }
        Ok(SniCertResolver {
            exact,
            wildcard,
            default: default.ok_or(TlsError::Empty)?,
            names,
        })
    }

    /// The certificate for an SNI name (or the default one).
    pub fn for_name(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(ck) = self.exact.get(&name) {
            return ck.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl ResolvesServerCert for SniCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.for_name(hello.server_name()))
    }
}

fn load_pair(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<(CertifiedKey, Vec<String>), TlsError> {
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let fail = |why: String| TlsError::Load {
        cert: c.clone(),
        key: k.clone(),
        why,
    };
    // pingora's loader reads both PEM files; it returns None when either holds nothing usable.
    let loaded = pingora::tls::load_certs_and_key_files(&c, &k).map_err(|e| fail(e.to_string()))?;
    let Some((certs, private_key)) = loaded else {
        return Err(fail(
            "no certificate or no private key in the PEM files".into(),
        ));
    };
    let signing = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| fail(format!("unsupported private key: {e}")))?;
    let names = dns_names(certs[0].as_ref()).ok_or_else(|| TlsError::NoNames(c.clone()))?;
    Ok((CertifiedKey::new(certs, signing), names))
}

/// The DNS names a certificate is for: subjectAltName DNS entries, else the subject CN.
fn dns_names(der: &[u8]) -> Option<Vec<String>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        names.push(cn.to_ascii_lowercase());
    }
    Some(names)
}

/// The SNI name a TLS client sent, kept with the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniName(pub String);

/// Records the SNI name after each handshake.
pub struct SniRecorder;

#[async_trait]
impl TlsAccept for SniRecorder {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        tls.server_name().map(|n| {
            Arc::new(SniName(n.trim_end_matches('.').to_ascii_lowercase()))
                as Arc<dyn Any + Send + Sync>
        })
    }
}
