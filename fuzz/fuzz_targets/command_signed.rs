//! `shared::command::open` past the signature: the input's first byte chooses who signs and
//! how, the rest is the command's bytes, put into an envelope signed by fixed test keys.
//! This reaches the command's JSON and `Command::check` with every input.
//!
//! Mode (first byte & 3):
//! 0: the command key signs `DOMAIN || bytes` (a genuine command): `open` must agree with
//!    parsing the bytes and `check()`ing them, and an opened command must be equal to the
//!    parsed one and survive re-signing;
//! 1: the bundle key signs them: always `wrong_key_role`;
//! 2: a stranger's key signs them: always `bad_signature`;
//! 3: the command key signs the bytes without the domain prefix (a manifest-style
//!    signature): always `bad_signature`.
#![no_main]

use edgecp_fuzz::*;
use libfuzzer_sys::fuzz_target;
use shared::command::{self, Command, MAX_ENVELOPE_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let keys = trusted_keys();
    let (key, expect) = match mode & 3 {
        0 => (command_key(), None),
        1 => (bundle_key(), Some("wrong_key_role")),
        2 => (stranger_key(), Some("bad_signature")),
        _ => (command_key(), Some("bad_signature")),
    };
    let env = if mode & 3 == 3 {
        envelope(bytes, &key, |b| b.to_vec())
    } else {
        envelope(bytes, &key, signed_message)
    };
    let got = command::open(&env, &keys);
    if env.len() > MAX_ENVELOPE_BYTES {
        assert_eq!(got.map_err(|e| e.reason()).unwrap_err(), "too_large");
        return;
    }
    if let Some(reason) = expect {
        match got {
            Ok(cmd) => panic!("opened though {reason} was expected: {cmd:?}"),
            Err(e) => {
                touch_error(&e);
                assert_eq!(e.reason(), reason, "{e}");
            }
        }
        return;
    }
    // what the device should make of a genuine command's bytes
    let parsed = serde_json::from_slice::<Command>(bytes)
        .map_err(|e| e.to_string())
        .and_then(|c| c.check().map(|()| c));
    match (got, parsed) {
        (Ok(cmd), Ok(want)) => {
            assert_eq!(cmd, want);
            assert_opened_command(&cmd);
        }
        (Err(e), Err(_)) => {
            touch_error(&e);
            assert_eq!(e.reason(), "malformed", "{e}");
        }
        (Ok(cmd), Err(why)) => panic!("opened a command that does not parse or check ({why}): {cmd:?}"),
        (Err(e), Ok(want)) => panic!("refused a genuine valid command ({e}): {want:?}"),
    }
});
