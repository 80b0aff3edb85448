//! Reaching the MQTT broker: what every program that talks to it shares (the agent's
//! connection, `trainer rollout`): the broker URL and the rustls client configuration for
//! `mqtts://`, with the broker's CA from a PEM file and, for mutual TLS, a client
//! certificate chain and key.
//!
//! The TLS configuration is built here rather than by rumqttc so that the crypto provider
//! is chosen explicitly (ring): rumqttc's own path calls `ClientConfig::builder()`, which
//! needs a process-wide default provider and panics when both ring and aws-lc-rs are
//! compiled in (as they are once another dependency enables aws-lc-rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// A broker URL or TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker URL {url:?}: {reason}; expected mqtt://HOST:PORT or mqtts://HOST:PORT")]
    Url { url: String, reason: String },
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {}: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Host, port and whether to speak TLS, from a broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    /// A DNS name or an IP address (without brackets); for TLS, the name checked against
    /// the broker's certificate.
    pub host: String,
    pub port: u16,
}

/// Parses `mqtt://HOST[:PORT]` (plain, default port 1883) or `mqtts://HOST[:PORT]` (TLS,
/// default 8883). IPv6 hosts go in brackets. Paths, queries and `user:pass@` are refused:
/// credentials come from [`MqttSettings::username`] and a password file.
pub fn parse_url(url: &str) -> Result<BrokerUrl, BrokerError> {
    let err = |reason: &str| BrokerError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(err("unknown scheme"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(err("a path, query or fragment is not allowed"));
    }
    if rest.contains('@') {
        return Err(err(
            "credentials in the URL are not allowed (use username and password_file)",
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| err("unclosed '['"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| err("expected ':' after ']'"))?,
                ),
            ),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(err("no host"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("the host contains whitespace"));
    }
    let port = match port {
        None => {
            if tls {
                8883
            } else {
                1883
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(err("the port must be a number from 1 to 65535")),
        },
    };
    Ok(BrokerUrl {
        tls,
        host: host.to_owned(),
        port,
    })
}

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> BrokerError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => BrokerError::File {
            what,
            path: path.to_owned(),
            source,
        },
        other => BrokerError::Pem {
            what,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(BrokerError::Pem {
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
) -> Result<Arc<ClientConfig>, BrokerError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA file", ca_file)? {
        roots.add(cert).map_err(|e| BrokerError::Pem {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> BrokerUrl {
        parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn urls() {
        assert_eq!(
            ok("mqtt://127.0.0.1:1883"),
            BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(ok("mqtts://broker.example:8884").port, 8884);
        assert!(ok("mqtts://broker.example").tls);
        assert_eq!(ok("mqtts://broker.example").port, 8883);
        assert_eq!(ok("mqtt://b").port, 1883);
        assert_eq!(ok("mqtt://b:1/").port, 1);
        assert_eq!(ok("mqtt://[::1]:1884").host, "::1");
        assert_eq!(ok("mqtt://[::1]").port, 1883);
        for bad in [
            "tcp://b:1883",
            "http://b",
            "b:1883",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://b:0",
            "mqtt://b:65536",
            "mqtt://b:x",
            "mqtt://b:1883/path",
            "mqtt://b:1883?q=1",
            "mqtt://u:p@b:1883",
            "mqtt://[::1",
            "mqtt://[::1]1883",
            "mqtt://b c:1883",
        ] {
            let e = parse_url(bad).expect_err(bad).to_string();
            assert!(e.contains(bad), "{e}");
            assert!(e.contains("expected mqtt://HOST:PORT"), "{e}");
        }
    }
}
