//! `shared::command::open` on raw bytes: what arrives over MQTT. Beyond "no panic": a
//! command opens only if its envelope carries the command key's signature over
//! `DOMAIN || command` (checked independently), and an opened command passes `check()`
//! and survives being signed again and reopened.
#![no_main]

use edgecp_fuzz::*;
use libfuzzer_sys::fuzz_target;
use shared::command::{self, MAX_ENVELOPE_BYTES};

fuzz_target!(|data: &[u8]| {
    let keys = trusted_keys();
    match command::open(data, &keys) {
        Ok(cmd) => {
            assert!(
                signed_by_command_key(data),
                "opened without the command key's signature: {}",
                String::from_utf8_lossy(data)
            );
            assert!(data.len() <= MAX_ENVELOPE_BYTES);
            assert_opened_command(&cmd);
        }
        Err(e) => touch_error(&e),
    }
});
