//! Rollout commands: what the cloud tells a device to run, signed so that a device on an
//! open network obeys only its operators.
//!
//! A command travels as an [`Envelope`]: the command's JSON bytes (base64) and an ed25519
//! signature over `"edgecp-command-v1\n" || bytes`. The prefix separates the two trust
//! roles: a bundle key signs manifests (their raw bytes), a command key signs commands
//! (prefixed bytes), so neither signature can pass for the other, and a device that holds
//! both kinds of key refuses a command that a bundle key signed (`wrong_key_role`). The
//! device checks the signature here ([`open`]); what needs the device's state (fleet,
//! target, validity window, sequence, model floor) is the rollout state machine's
//! (`edge-agent`'s `rollout::machine`). docs/ROLLOUT.md has the format.

use base64::Engine;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `format` of every command.
pub const FORMAT: &str = "edgecp-command";
/// The command format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Largest envelope a device reads (commands are a few hundred bytes).
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024;
/// Most devices one command may list.
pub const MAX_DEVICES: usize = 256;
/// Domain separation: what a command key signs is this prefix and the command's bytes.
const DOMAIN: &[u8] = b"edgecp-command-v1\n";

/// The signed wire form.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The command's JSON, base64 (standard alphabet, padded).
    pub command: String,
    /// ed25519 signature over `DOMAIN || command bytes`, base64.
    pub signature: String,
}

/// Which devices a command is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// Every device of the fleet.
    All,
    /// Devices whose bucket (the device id's hash, 0..100) is below `percent`: raising the
    /// percentage keeps the devices already chosen.
    Percent { percent: u8 },
    /// The devices named.
    Devices { devices: Vec<String> },
}

impl Target {
    /// Whether `device` is one of the targets.
    pub fn includes(&self, device: &str) -> bool {
        match self {
            Target::All => true,
            Target::Percent { percent } => bucket(device) < u32::from(*percent),
            Target::Devices { devices } => devices.iter().any(|d| d == device),
        }
    }
}

/// A device's percentage bucket, 0..100, from the SHA-256 of its id.
pub fn bucket(device: &str) -> u32 {
    let h = Sha256::digest(device.as_bytes());
    let v = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    (v % 100) as u32
}

/// What the device is to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Download, verify, activate and health-check a bundle.
    Rollout {
        model_id: String,
        /// Object-store location of the bundle's folder (`s3://bucket/models/<id>`, ...).
        bundle: String,
        /// SHA-256 (hex) of the bundle's manifest.json: pins the exact signed bundle.
        manifest_sha256: String,
        /// The bundle's size in bytes (manifest, signature and files): the download stops
        /// beyond it.
        bundle_bytes: u64,
        /// The manifest's `created_ms`: a device refuses a model older than its floor.
        model_created_ms: i64,
    },
    /// Go back to the previous model, the one and only way below the model floor.
    Rollback,
}

/// A command, as signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub format: String,
    pub format_version: u32,
    /// Names the rollout in every report (events, status).
    pub rollout_id: String,
    pub fleet: String,
    pub target: Target,
    /// Strictly increasing per fleet: a device refuses one at or below the highest it
    /// accepted (replay).
    pub sequence: u64,
    /// Validity window, milliseconds since the Unix epoch.
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub action: Action,
}

/// Why a command was refused before its content was looked at.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command of {0} bytes: at most {MAX_ENVELOPE_BYTES} are read")]
    TooLarge(usize),
    #[error("the command is not signed: {0}")]
    Unsigned(String),
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("the command's signature does not verify with any trusted command key")]
    BadSignature,
    #[error("the command is signed by a bundle-signing key; commands need a command key")]
    WrongKeyRole,
    #[error("no command-signing key is configured")]
    NoCommandKey,
}

impl CommandError {
    /// A short, stable code for reports.
    pub fn reason(&self) -> &'static str {
        match self {
            CommandError::TooLarge(_) => "too_large",
            CommandError::Unsigned(_) => "unsigned",
            CommandError::Malformed(_) => "malformed",
            CommandError::BadSignature => "bad_signature",
            CommandError::WrongKeyRole => "wrong_key_role",
            CommandError::NoCommandKey => "no_command_key",
        }
    }
}

/// Keys a device trusts, by role.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    pub bundle: Vec<VerifyingKey>,
    pub command: Vec<VerifyingKey>,
}

impl TrustedKeys {
    /// A key in both roles defeats the separation; refuse such a configuration.
    pub fn check(&self) -> Result<(), String> {
        if self.bundle.is_empty() {
            return Err("no bundle-signing key: a device needs one to verify bundles".into());
        }
        for k in &self.command {
            if self.bundle.contains(k) {
                return Err(
                    "the same key is listed as a bundle key and as a command key: give each role its own key"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn signed_message(command: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + command.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(command);
    m
}

impl Command {
    /// Checks what holds for any command whatever the device (names, sizes, window).
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", self.format));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {}, this device reads {FORMAT_VERSION}",
                self.format_version
            ));
        }
        segment("rollout_id", &self.rollout_id)?;
        segment("fleet", &self.fleet)?;
        if self.not_after_ms <= self.not_before_ms {
            return Err(format!(
                "not_after_ms {} is not after not_before_ms {}",
                self.not_after_ms, self.not_before_ms
            ));
        }
        match &self.target {
            Target::All => {}
            Target::Percent { percent } if *percent <= 100 => {}
            Target::Percent { percent } => {
                return Err(format!("target percent {percent} is above 100"))
            }
            Target::Devices { devices } => {
                if devices.is_empty() || devices.len() > MAX_DEVICES {
                    return Err(format!(
                        "target lists {} devices, expected 1 to {MAX_DEVICES}",
                        devices.len()
                    ));
                }
                for d in devices {
                    segment("target device", d)?;
                }
            }
        }
        if let Action::Rollout {
            model_id,
            bundle,
            manifest_sha256,
            bundle_bytes,
            ..
        } = &self.action
        {
            segment("model_id", model_id)?;
            if model_id.starts_with('.') {
                return Err(format!("model_id {model_id:?} starts with '.'"));
            }
            if bundle.is_empty() || bundle.len() > 1024 || bundle.chars().any(char::is_control) {
                return Err("bundle: expected a location of 1 to 1024 printable characters".into());
            }
            if manifest_sha256.len() != 64
                || !manifest_sha256
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return Err("manifest_sha256: expected 64 lowercase hex digits".into());
            }
            if *bundle_bytes == 0 {
                return Err("bundle_bytes is 0".into());
            }
        }
        Ok(())
    }

    /// Signs the command with a command key.
    pub fn sign(&self, key: &SigningKey) -> Result<Envelope, CommandError> {
        self.check().map_err(CommandError::Malformed)?;
        let bytes = serde_json::to_vec(self).map_err(|e| CommandError::Malformed(e.to_string()))?;
        let sig = crate::bundle::keys::sign(key, &signed_message(&bytes));
        let env = Envelope {
            command: b64().encode(&bytes),
            signature: b64().encode(sig),
        };
        // `check` allows more than a device reads (256 devices of 128 characters): refuse
        // here what every device would refuse as too large
        let len = serde_json::to_vec(&env)
            .map_err(|e| CommandError::Malformed(e.to_string()))?
            .len();
        if len > MAX_ENVELOPE_BYTES {
            return Err(CommandError::TooLarge(len));
        }
        Ok(env)
    }
}

/// An id, fleet or device name: one MQTT topic level and one path component, so
/// `[A-Za-z0-9._-]`, 1 to 128 characters.
pub fn segment(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{what} {s:?}: expected 1 to 128 characters from [A-Za-z0-9._-]"
        ));
    }
    Ok(())
}

/// Reads an envelope and checks its signature against the command keys. A command that
/// verifies with a bundle key instead is refused as `WrongKeyRole`.
pub fn open(bytes: &[u8], keys: &TrustedKeys) -> Result<Command, CommandError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(CommandError::TooLarge(bytes.len()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| CommandError::Malformed(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| CommandError::Malformed("expected a JSON object".into()))?;
    if !obj.contains_key("signature") {
        return Err(CommandError::Unsigned(if obj.contains_key("action") {
            "a bare command without an envelope".into()
        } else {
            "no signature field".into()
        }));
    }
    let env: Envelope =
        serde_json::from_value(value).map_err(|e| CommandError::Malformed(e.to_string()))?;
    if env.signature.is_empty() {
        return Err(CommandError::Unsigned("empty signature".into()));
    }
    let cmd_bytes = b64()
        .decode(env.command.as_bytes())
        .map_err(|e| CommandError::Malformed(format!("command: bad base64: {e}")))?;
    let sig_bytes: [u8; 64] = b64()
        .decode(env.signature.as_bytes())
        .map_err(|e| CommandError::Malformed(format!("signature: bad base64: {e}")))?
        .try_into()
        .map_err(|_| CommandError::Malformed("signature: expected 64 bytes".into()))?;
    let sig = Signature::from_bytes(&sig_bytes);
    let msg = signed_message(&cmd_bytes);
    if keys.command.is_empty() {
        return Err(CommandError::NoCommandKey);
    }
    if !keys
        .command
        .iter()
        .any(|k| k.verify_strict(&msg, &sig).is_ok())
    {
        if keys
            .bundle
            .iter()
            .any(|k| k.verify_strict(&msg, &sig).is_ok())
        {
            return Err(CommandError::WrongKeyRole);
        }
        return Err(CommandError::BadSignature);
    }
    let cmd: Command =
        serde_json::from_slice(&cmd_bytes).map_err(|e| CommandError::Malformed(e.to_string()))?;
    cmd.check().map_err(CommandError::Malformed)?;
    Ok(cmd)
}

/// Whether a manifest signature was made by a command key rather than a bundle key: a
/// device reports such a bundle as `wrong_key_role` rather than as a bad signature.
pub fn manifest_signed_by_command_key(manifest: &[u8], sig: &[u8], keys: &TrustedKeys) -> bool {
    let Ok(sig) = <[u8; 64]>::try_from(sig) else {
        return false;
    };
    let sig = Signature::from_bytes(&sig);
    keys.command
        .iter()
        .any(|k| k.verify_strict(manifest, &sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    pub(crate) fn sample() -> Command {
        Command {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            rollout_id: "r-1".into(),
            fleet: "lab".into(),
            target: Target::All,
            sequence: 7,
            not_before_ms: 1_000,
            not_after_ms: 2_000,
            action: Action::Rollout {
                model_id: "m-1".into(),
                bundle: "s3://b/models/m-1".into(),
                manifest_sha256: "ab".repeat(32),
                bundle_bytes: 1234,
                model_created_ms: 5,
            },
        }
    }

    fn keys() -> TrustedKeys {
        TrustedKeys {
            bundle: vec![key(1).verifying_key()],
            command: vec![key(2).verifying_key()],
        }
    }

    #[test]
    fn a_signed_command_opens_and_every_forgery_is_refused_with_its_reason() {
        let env = sample().sign(&key(2)).unwrap();
        let bytes = serde_json::to_vec(&env).unwrap();
        assert_eq!(open(&bytes, &keys()).unwrap(), sample());

        // signed by the bundle key: the role is wrong, not merely the signature
        let env_b = serde_json::to_vec(&sample().sign(&key(1)).unwrap()).unwrap();
        assert_eq!(
            open(&env_b, &keys()).unwrap_err().reason(),
            "wrong_key_role"
        );
        // signed by a stranger
        let env_s = serde_json::to_vec(&sample().sign(&key(9)).unwrap()).unwrap();
        assert_eq!(open(&env_s, &keys()).unwrap_err().reason(), "bad_signature");
        // a changed command under the old signature
        let mut other = sample();
        other.sequence = 8;
        let tampered = Envelope {
            command: b64().encode(serde_json::to_vec(&other).unwrap()),
            signature: env.signature.clone(),
        };
        let t = serde_json::to_vec(&tampered).unwrap();
        assert_eq!(open(&t, &keys()).unwrap_err().reason(), "bad_signature");
        // a bare command, an empty signature
        let bare = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(open(&bare, &keys()).unwrap_err().reason(), "unsigned");
        let empty = serde_json::to_vec(&Envelope {
            command: env.command.clone(),
            signature: String::new(),
        })
        .unwrap();
        assert_eq!(open(&empty, &keys()).unwrap_err().reason(), "unsigned");
        // the manifest signature of a bundle key over the same bytes is not a command
        // signature (domain separation)
        let raw = b64().decode(&env.command).unwrap();
        let manifest_style = Envelope {
            command: env.command.clone(),
            signature: b64().encode(crate::bundle::keys::sign(&key(2), &raw)),
        };
        let m = serde_json::to_vec(&manifest_style).unwrap();
        assert_eq!(open(&m, &keys()).unwrap_err().reason(), "bad_signature");
        // too large, not JSON, an unknown field
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(open(&big, &keys()).unwrap_err().reason(), "too_large");
        assert_eq!(
            open(b"\xff\x00", &keys()).unwrap_err().reason(),
            "malformed"
        );
        let mut v = serde_json::to_value(&env).unwrap();
        v["extra"] = 1.into();
        let x = serde_json::to_vec(&v).unwrap();
        assert_eq!(open(&x, &keys()).unwrap_err().reason(), "malformed");
        // no command key configured
        let only_bundle = TrustedKeys {
            command: vec![],
            ..keys()
        };
        assert_eq!(
            open(&bytes, &only_bundle).unwrap_err().reason(),
            "no_command_key"
        );
    }

    #[test]
    fn commands_with_impossible_fields_are_refused_by_name() {
        let bad = |f: &dyn Fn(&mut Command), needle: &str| {
            let mut c = sample();
            f(&mut c);
            let e = c.check().unwrap_err();
            assert!(e.contains(needle), "{e} should name {needle}");
        };
        bad(&|c| c.fleet = "a/b".into(), "fleet");
        bad(&|c| c.fleet = "+".into(), "fleet");
        bad(&|c| c.rollout_id = String::new(), "rollout_id");
        bad(&|c| c.not_after_ms = c.not_before_ms, "not_after_ms");
        bad(&|c| c.target = Target::Percent { percent: 101 }, "percent");
        bad(
            &|c| c.target = Target::Devices { devices: vec![] },
            "devices",
        );
        bad(
            &|c| {
                c.target = Target::Devices {
                    devices: vec!["ok".into(), "#".into()],
                }
            },
            "target device",
        );
        bad(
            &|c| {
                if let Action::Rollout { model_id, .. } = &mut c.action {
                    *model_id = "..".into();
                }
            },
            "model_id",
        );
        bad(
            &|c| {
                if let Action::Rollout {
                    manifest_sha256, ..
                } = &mut c.action
                {
                    *manifest_sha256 = "AB".repeat(32);
                }
            },
            "manifest_sha256",
        );
        bad(&|c| c.format_version = 2, "format_version");
    }

    #[test]
    fn percentage_buckets_are_stable_and_spread() {
        let n = 10_000;
        let ids: Vec<String> = (0..n).map(|i| format!("dev-{i}")).collect();
        let in10 = ids
            .iter()
            .filter(|d| Target::Percent { percent: 10 }.includes(d))
            .count();
        assert!((800..1200).contains(&in10), "{in10} of {n} in a 10% bucket");
        // raising the percentage keeps every device already chosen
        for d in &ids {
            if (Target::Percent { percent: 10 }).includes(d) {
                assert!((Target::Percent { percent: 20 }).includes(d));
            }
        }
        assert!(!Target::Percent { percent: 0 }.includes("dev-1"));
        assert!(Target::Percent { percent: 100 }.includes("dev-1"));
    }

    #[test]
    fn a_command_too_large_for_a_device_is_not_signed() {
        let many = |n: usize| Command {
            target: Target::Devices {
                devices: (0..n).map(|i| format!("{i:0>128}")).collect(),
            },
            ..sample()
        };
        let env = many(80).sign(&key(2)).unwrap();
        assert!(open(&serde_json::to_vec(&env).unwrap(), &keys()).is_ok());
        // within check()'s limits, beyond what a device reads
        assert!(many(MAX_DEVICES).check().is_ok());
        let e = many(MAX_DEVICES).sign(&key(2)).unwrap_err();
        assert_eq!(e.reason(), "too_large", "{e}");
    }

    #[test]
    fn a_key_in_both_roles_is_refused() {
        let k = TrustedKeys {
            bundle: vec![key(1).verifying_key()],
            command: vec![key(1).verifying_key()],
        };
        assert!(k.check().unwrap_err().contains("each role"));
        assert!(keys().check().is_ok());
    }
}
