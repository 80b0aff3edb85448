//! The rustls client configuration for `mqtts://`: the broker's CA from a PEM file and,
//! for mutual TLS, the device's certificate chain and key.
//!
//! Built here rather than by rumqttc so that the crypto provider is chosen explicitly
//! (ring): rumqttc's own path calls `ClientConfig::builder()`, which needs a process-wide
//! default provider and panics when both ring and aws-lc-rs are compiled in (as they are
//! once another dependency enables aws-lc-rs).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::MqttError;

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> MqttError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => MqttError::File {
            what,
            path: path.to_owned(),
            source,
        },
        other => MqttError::Pem {
            what,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(MqttError::Pem {
            what,
            path: path.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// The client configuration: trusts only the certificates in `ca_file` (not the system
/// store: a device talks to its own broker), presents `client` when given.
pub fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, MqttError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA file", ca_file)? {
        roots.add(cert).map_err(|e| MqttError::Pem {
            what: "CA file",
            path: ca_file.to_owned(),
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert_file, key_file)) => {
            let chain = read_certs("client certificate", cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| pem_error("client key", key_file, e))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
