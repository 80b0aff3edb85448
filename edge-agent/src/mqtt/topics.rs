//! The agent's topic names, and the check that a device id or fleet name is one topic level.
//!
//! Pure functions: the IO task and the tests share them, so the names are written once.

/// Longest device id or fleet name accepted, in bytes. Topics stay short (brokers and ACL
/// patterns handle them in full) and the id doubles as the MQTT client id.
pub const MAX_SEGMENT_BYTES: usize = 64;

/// Where an inbound message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `devices/<id>/cmd`: a command for this device only.
    Device,
    /// `fleet/<fleet>/rollout`: a rollout for the whole fleet (normally retained).
    Fleet,
}

/// Why a device id or fleet name cannot be a topic level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is {len} bytes long; at most {MAX_SEGMENT_BYTES} are allowed")]
    TooLong {
        what: &'static str,
        value: String,
        len: usize,
    },
    #[error(
        "{what} {value:?} contains {found:?}, which cannot be part of an MQTT topic level \
         (no '+', '#', '/', NUL or control characters)"
    )]
    Forbidden {
        what: &'static str,
        value: String,
        found: char,
    },
}

/// Checks that `value` can be one MQTT topic level: a wildcard or separator would make the
/// agent subscribe to (or publish on) other devices' topics.
pub fn validate_segment(what: &'static str, value: &str) -> Result<(), SegmentError> {
    if value.is_empty() {
        return Err(SegmentError::Empty { what });
    }
    if value.len() > MAX_SEGMENT_BYTES {
        return Err(SegmentError::TooLong {
            what,
            value: value.chars().take(MAX_SEGMENT_BYTES).collect(),
            len: value.len(),
        });
    }
    // Control characters are legal in MQTT but make logs and ACL files unreadable.
    if let Some(found) = value
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/') || c.is_control())
    {
        return Err(SegmentError::Forbidden {
            what,
            value: value.to_owned(),
            found,
        });
    }
    Ok(())
}

/// `devices/<id>/cmd`: per-device commands (subscribed, QoS 1).
pub fn cmd(device_id: &str) -> String {
    format!("devices/{device_id}/cmd")
}

/// `fleet/<fleet>/rollout`: signed rollout commands for the fleet (subscribed, QoS 1).
pub fn rollout(fleet: &str) -> String {
    format!("fleet/{fleet}/rollout")
}

/// `devices/<id>/status`: retained state, QoS 1; also the last will's topic.
pub fn status(device_id: &str) -> String {
    format!("devices/{device_id}/status")
}

/// `devices/<id>/events`: rollout progress, QoS 1.
pub fn events(device_id: &str) -> String {
    format!("devices/{device_id}/events")
}

/// `devices/<id>/telemetry`: counters and figures, QoS 0.
pub fn telemetry(device_id: &str) -> String {
    format!("devices/{device_id}/telemetry")
}

/// Which subscription an inbound topic belongs to; `None` for anything else (a broker may
/// deliver stray messages, e.g. from an old persistent session's subscriptions).
pub fn classify(topic: &str, device_id: &str, fleet: &str) -> Option<Source> {
    let mut levels = topic.split('/');
    let found = match (levels.next(), levels.next(), levels.next()) {
        (Some("devices"), Some(id), Some("cmd")) if id == device_id => Source::Device,
        (Some("fleet"), Some(f), Some("rollout")) if f == fleet => Source::Fleet,
        _ => return None,
    };
    levels.next().is_none().then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(cmd("d1"), "devices/d1/cmd");
        assert_eq!(rollout("f"), "fleet/f/rollout");
        assert_eq!(status("d1"), "devices/d1/status");
        assert_eq!(events("d1"), "devices/d1/events");
        assert_eq!(telemetry("d1"), "devices/d1/telemetry");
    }

    #[test]
    fn classify_own_topics_only() {
        assert_eq!(classify("devices/d1/cmd", "d1", "f"), Some(Source::Device));
        assert_eq!(classify("fleet/f/rollout", "d1", "f"), Some(Source::Fleet));
        assert_eq!(classify("devices/d2/cmd", "d1", "f"), None);
        assert_eq!(classify("fleet/g/rollout", "d1", "f"), None);
        assert_eq!(classify("devices/d1/cmd/x", "d1", "f"), None);
        assert_eq!(classify("devices/d1/status", "d1", "f"), None);
        assert_eq!(classify("devices/d1", "d1", "f"), None);
        assert_eq!(classify("", "d1", "f"), None);
        assert_eq!(classify("/devices/d1/cmd", "d1", "f"), None);
        // a fleet named like a device must not mix the two
        assert_eq!(
            classify("fleet/d1/rollout", "d1", "d1"),
            Some(Source::Fleet)
        );
        assert_eq!(classify("devices/f/cmd", "d1", "f"), None);
    }

    #[test]
    fn segments() {
        assert!(validate_segment("device id", "jetson-07_a.b").is_ok());
        assert_eq!(
            validate_segment("device id", ""),
            Err(SegmentError::Empty { what: "device id" })
        );
        for bad in ["a+b", "a#", "a/b", "a\0b", "a\nb"] {
            let e = validate_segment("fleet", bad).unwrap_err();
            assert!(matches!(e, SegmentError::Forbidden { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("fleet"), "{e}");
        }
        let long = "x".repeat(MAX_SEGMENT_BYTES + 1);
        assert!(matches!(
            validate_segment("device id", &long),
            Err(SegmentError::TooLong { len, .. }) if len == MAX_SEGMENT_BYTES + 1
        ));
        assert!(validate_segment("device id", &"x".repeat(MAX_SEGMENT_BYTES)).is_ok());
    }
}
