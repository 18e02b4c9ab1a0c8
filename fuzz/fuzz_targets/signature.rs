//! Fuzzes the `X-Hub-Signature-256` parser and verifier with arbitrary headers, bodies
//! and keys, checking them against a plain HMAC-SHA256 computed here.
//!
//! Invariants: the parser accepts exactly `sha256=` and 64 hex digits of either case;
//! a header verifies exactly when its digest is the HMAC of the body under one of the
//! configured secrets; `sign` always verifies under its own key and never under a key
//! HMAC treats as different; one flipped bit of the body, or of the header other than
//! a letter's case, is refused.
#![no_main]

use arbitrary::Arbitrary;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use xhubd_fuzz::secret::Secret;
use xhubd_fuzz::webhook::signature::{parse_header, sign, verify, SignatureError};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    key: &'a [u8],
    other_key: &'a [u8],
    header: &'a [u8],
    flip: usize,
    body: &'a [u8],
}

/// The lowercase hex HMAC-SHA256 of `body` under `key`.
fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The key HMAC-SHA256 really uses: hashed when longer than the 64-byte block, then
/// padded with zeros. Two keys with the same block sign every body alike.
fn key_block(key: &[u8]) -> [u8; 64] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    block
}

/// The contract's header grammar, written out independently of the parser.
fn well_formed(header: &[u8]) -> bool {
    header.len() == 71
        && header.starts_with(b"sha256=")
        && header[7..].iter().all(u8::is_ascii_hexdigit)
}

fuzz_target!(|input: Input<'_>| {
    let Input {
        key,
        other_key,
        header,
        flip,
        body,
    } = input;
    let both = [Secret::new(key), Secret::new(other_key)];
    let only_other = [Secret::new(other_key)];

    // The parser against the grammar, and the digest against the hex it came from.
    match parse_header(header) {
        Ok(digest) => {
            assert!(well_formed(header), "accepted a malformed header");
            assert_eq!(
                hex::encode(digest),
                String::from_utf8_lossy(&header[7..]).to_ascii_lowercase()
            );
        }
        Err(e) => {
            assert!(!well_formed(header), "refused a well-formed header");
            assert_eq!(e, SignatureError::Malformed);
        }
    }

    // An arbitrary header verifies exactly when it is one of the secrets' HMACs.
    let expected = if !well_formed(header) {
        Err(SignatureError::Malformed)
    } else {
        let given = String::from_utf8_lossy(&header[7..]).to_ascii_lowercase();
        if given == hmac_hex(key, body) || given == hmac_hex(other_key, body) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    };
    assert_eq!(verify(Some(header), body, &both), expected);
    assert_eq!(verify(None, body, &both), Err(SignatureError::Missing));
    if well_formed(header) {
        assert_eq!(
            verify(Some(header), body, &[]),
            Err(SignatureError::Mismatch)
        );
    }

    // What `xhubd sign` prints verifies under its key, in either case.
    let signed = sign(key, body);
    assert_eq!(signed, format!("sha256={}", hmac_hex(key, body)));
    assert_eq!(verify(Some(signed.as_bytes()), body, &both), Ok(()));
    let upper = format!("sha256={}", signed[7..].to_ascii_uppercase());
    assert_eq!(verify(Some(upper.as_bytes()), body, &both), Ok(()));

    // Never under another key, unless HMAC itself cannot tell the two keys apart.
    let under_other = verify(Some(signed.as_bytes()), body, &only_other);
    if key_block(key) == key_block(other_key) {
        assert_eq!(under_other, Ok(()));
    } else {
        assert_eq!(under_other, Err(SignatureError::Mismatch));
    }

    // One flipped bit of the body is refused.
    if !body.is_empty() {
        let bit = flip % (body.len() * 8);
        let mut changed = body.to_vec();
        changed[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            verify(Some(signed.as_bytes()), &changed, &both[..1]),
            Err(SignatureError::Mismatch)
        );
    }

    // One flipped bit of the header is refused, unless it only changes a hex letter's
    // case (the contract accepts either case).
    let bit = flip % (signed.len() * 8);
    let mut changed = signed.clone().into_bytes();
    changed[bit / 8] ^= 1 << (bit % 8);
    let outcome = verify(Some(&changed), body, &both[..1]);
    if bit / 8 >= 7 && changed.eq_ignore_ascii_case(signed.as_bytes()) {
        assert_eq!(outcome, Ok(()));
    } else {
        assert!(outcome.is_err(), "a changed header verified: {changed:?}");
    }
});
