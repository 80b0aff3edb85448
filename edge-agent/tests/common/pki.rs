//! A throwaway PKI for TLS tests (rcgen): a CA, the broker's certificate for 127.0.0.1 and
//! localhost, client certificates whose common name is the MQTT identity, and a rogue CA
//! with a client certificate of its own.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// For the device (common name: its id).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// For the cloud side (`trainer rollout`), common name "operator".
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
    /// Issued by `rogue_ca`, common name: the device's id.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
    pub rogue_ca: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(p, key))
}

fn leaf(
    names: Vec<String>,
    cn: &str,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(names).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap();
    p
}

/// Writes a fresh PKI into `dir` for the device `device`.
pub fn pki(dir: &Path, device: &str) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let (ca_cert, issuer) = ca("edge test CA");
    let (rogue_ca_cert, rogue_issuer) = ca("rogue CA");
    let (sc, sk) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "broker",
        &issuer,
    );
    let (cc, ck) = leaf(vec![], device, &issuer);
    let (oc, ok) = leaf(vec![], "operator", &issuer);
    let (rc, rk) = leaf(vec![], device, &rogue_issuer);
    Pki {
        ca: write(dir, "ca.pem", &ca_cert.pem()),
        server_cert: write(dir, "server.pem", &sc),
        server_key: write(dir, "server.key", &sk),
        client_cert: write(dir, "client.pem", &cc),
        client_key: write(dir, "client.key", &ck),
        operator_cert: write(dir, "operator.pem", &oc),
        operator_key: write(dir, "operator.key", &ok),
        rogue_cert: write(dir, "rogue.pem", &rc),
        rogue_key: write(dir, "rogue.key", &rk),
        rogue_ca: write(dir, "rogue-ca.pem", &rogue_ca_cert.pem()),
    }
}

impl Pki {
    /// Mosquitto listener options for TLS with a required client certificate whose common
    /// name becomes the MQTT username.
    pub fn mosquitto_tls(&self) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n",
            self.ca.display(),
            self.server_cert.display(),
            self.server_key.display()
        )
    }
}
