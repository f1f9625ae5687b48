//! Peer authentication: HMAC-SHA256 challenge/response over a shared secret, as
//! DRBD's `cram-hmac-alg` + `shared-secret`.
//!
//! Each side sends a random 32-byte challenge; the other answers with
//! `HMAC-SHA256(secret, "hablock-auth-v1" || challenge || responder node id (u32 BE) || resource)`.
//! Binding the responder's node id means a peer cannot reflect our own challenge
//! back to us and have us compute the answer for it. The secret never crosses
//! the wire.

use super::msg::AUTH_LEN;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const DOMAIN: &[u8] = b"hablock-auth-v1";

/// The answer `responder` gives to `challenge` for `resource`.
pub fn response(secret: &[u8], challenge: &[u8; AUTH_LEN], responder: u32, resource: &str) -> [u8; AUTH_LEN] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(DOMAIN);
    mac.update(challenge);
    mac.update(&responder.to_be_bytes());
    mac.update(resource.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Checks an answer in constant time.
pub fn verify(
    secret: &[u8],
    challenge: &[u8; AUTH_LEN],
    responder: u32,
    resource: &str,
    answer: &[u8; AUTH_LEN],
) -> bool {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(DOMAIN);
    mac.update(challenge);
    mac.update(&responder.to_be_bytes());
    mac.update(resource.as_bytes());
    mac.verify_slice(answer).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_secret_verifies_wrong_does_not() {
        let ch = [42u8; AUTH_LEN];
        let a = response(b"s3cret", &ch, 2, "r0");
        assert!(verify(b"s3cret", &ch, 2, "r0", &a));
        assert!(!verify(b"other", &ch, 2, "r0", &a));
        assert!(
            !verify(b"s3cret", &ch, 1, "r0", &a),
            "reflection with another node id fails"
        );
        assert!(!verify(b"s3cret", &ch, 2, "r1", &a));
        let mut ch2 = ch;
        ch2[0] ^= 1;
        assert!(!verify(b"s3cret", &ch2, 2, "r0", &a));
    }
}
