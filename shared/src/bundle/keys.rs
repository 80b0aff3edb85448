//! ed25519 keys in the standard PEM encodings, so that OpenSSL reads them:
//! public keys as SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), private keys as
//! PKCS#8 (`-----BEGIN PRIVATE KEY-----`). Both encodings of an ed25519 key are a fixed
//! DER prefix followed by the 32 key bytes (RFC 8410), so no ASN.1 library is needed.

use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use super::BundleError;

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an ed25519 PKCS#8 private key (RFC 8410), before the 32 seed bytes.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str, label: &str, path: &Path) -> Result<Vec<u8>, BundleError> {
    let bad = |what: &str| BundleError::Key {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| bad(&format!("no {begin} line")))?;
    let rest = &text[start + begin.len()..];
    let stop = rest
        .find(&end)
        .ok_or_else(|| bad(&format!("no {end} line")))?;
    let b64: String = rest[..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| bad(&format!("bad base64: {e}")))
}

/// A new signing key from the operating system's random source.
pub fn generate() -> Result<SigningKey, BundleError> {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| BundleError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// PKCS#8 PEM of a signing key.
pub fn private_pem(key: &SigningKey) -> String {
    let mut der = PKCS8_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    pem("PRIVATE KEY", &der)
}

/// SubjectPublicKeyInfo PEM of a public key.
pub fn public_pem(key: &VerifyingKey) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    pem("PUBLIC KEY", &der)
}

/// Largest key file read (a PEM key is about 120 bytes; comments and chains fit well).
pub const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// A key file's text: a regular file (a link to one is fine: keys are the owner's
/// configuration, not bundle content), at most [`MAX_KEY_FILE_BYTES`], UTF-8.
fn read(path: &Path) -> Result<String, BundleError> {
    let bytes = super::files::read_bounded(path, MAX_KEY_FILE_BYTES, super::files::Links::Follow)?;
    String::from_utf8(bytes).map_err(|_| BundleError::Key {
        path: path.to_path_buf(),
        what: "is not UTF-8 text (expected a PEM key)".into(),
    })
}

/// Reads a PKCS#8 PEM ed25519 private key.
pub fn read_private(path: &Path) -> Result<SigningKey, BundleError> {
    let der = unpem(&read(path)?, "PRIVATE KEY", path)?;
    match der.strip_prefix(&PKCS8_PREFIX[..]) {
        Some(seed) if seed.len() == 32 => {
            let mut s = [0u8; 32];
            s.copy_from_slice(seed);
            Ok(SigningKey::from_bytes(&s))
        }
        _ => Err(BundleError::Key {
            path: path.to_path_buf(),
            what: "not an ed25519 PKCS#8 private key".into(),
        }),
    }
}

/// Reads a SubjectPublicKeyInfo PEM ed25519 public key.
pub fn read_public(path: &Path) -> Result<VerifyingKey, BundleError> {
    let der = unpem(&read(path)?, "PUBLIC KEY", path)?;
    let bad = |what: String| BundleError::Key {
        path: path.to_path_buf(),
        what,
    };
    match der.strip_prefix(&SPKI_PREFIX[..]) {
        Some(k) if k.len() == 32 => {
            let mut b = [0u8; 32];
            b.copy_from_slice(k);
            VerifyingKey::from_bytes(&b).map_err(|e| bad(format!("invalid ed25519 point: {e}")))
        }
        _ => Err(bad("not an ed25519 SubjectPublicKeyInfo public key".into())),
    }
}

/// Paths of a key pair written by [`write_keypair`].
#[derive(Clone, Debug)]
pub struct KeyPaths {
    pub private: PathBuf,
    pub public: PathBuf,
}

/// Writes `key` as `<dir>/<stem>.key` (PKCS#8, mode 0600 on Unix) and `<dir>/<stem>.pub`.
/// Refuses to overwrite an existing private key.
pub fn write_keypair(key: &SigningKey, dir: &Path, stem: &str) -> Result<KeyPaths, BundleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let private = dir.join(format!("{stem}.key"));
    let public = dir.join(format!("{stem}.pub"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    {
        use std::io::Write;
        let mut f = opts.open(&private).map_err(io(&private))?;
        f.write_all(private_pem(key).as_bytes())
            .map_err(io(&private))?;
    }
    std::fs::write(&public, public_pem(&key.verifying_key())).map_err(io(&public))?;
    Ok(KeyPaths { private, public })
}

/// The key in `dir` named `stem`, created on first use.
pub fn load_or_create(dir: &Path, stem: &str) -> Result<(SigningKey, KeyPaths), BundleError> {
    let private = dir.join(format!("{stem}.key"));
    let public = dir.join(format!("{stem}.pub"));
    if private.exists() {
        let key = read_private(&private)?;
        if !public.exists() {
            std::fs::write(&public, public_pem(&key.verifying_key())).map_err(|source| {
                BundleError::Io {
                    path: public.clone(),
                    source,
                }
            })?;
        }
        return Ok((key, KeyPaths { private, public }));
    }
    let key = generate()?;
    let paths = write_keypair(&key, dir, stem)?;
    Ok((key, paths))
}

/// The 64-byte ed25519 signature of `message`.
pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    key.sign(message).to_bytes()
}
