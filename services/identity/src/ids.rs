//! Human-friendly names for identity keys: a checksummed printable id, a short numeric search
//! code, and a safety number two people compare out of band.

use bech32::{Bech32m, Hrp};

use crate::error::{IdentityError, Result};
use crate::keys::PublicKey;

const ID_HRP: Hrp = Hrp::parse_unchecked("kith");

/// The printable id of an identity: bech32m (`kith1…`), whose checksum catches any typo of up to
/// four characters.
pub fn printable_id(key: &PublicKey) -> String {
    bech32::encode::<Bech32m>(ID_HRP, key.as_bytes()).expect("32 bytes fit a bech32m string")
}

/// Parses a printable id (`kith1…`) or a 64-character hex public key.
pub fn parse_id(text: &str) -> Result<PublicKey> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return PublicKey::from_hex(text);
    }
    let (hrp, data) = bech32::decode(text)
        .map_err(|e| IdentityError::InvalidArgument(format!("id {text:?} is not valid: {e}")))?;
    if hrp != ID_HRP {
        return Err(IdentityError::InvalidArgument(format!(
            "id {text:?} has prefix {hrp}, expected kith"
        )));
    }
    // bech32::decode accepts both checksums; a Kith id must be bech32m.
    if printable_id(&PublicKey::from_bytes(&data)?) != text.to_ascii_lowercase() {
        return Err(IdentityError::InvalidArgument(format!(
            "id {text:?} has the wrong checksum variant"
        )));
    }
    PublicKey::from_bytes(&data)
}

/// A short numeric search code in the spirit of DIMP's "number": ten digits grouped
/// `ddd-ddd-dddd`, derived from the key. Easy to read over the phone and to type into a search
/// box; not unique (10^10 codes), so a search by code is always confirmed against the full key.
pub fn search_code(key: &PublicKey) -> String {
    let hash = blake3::derive_key("kith search code v1", key.as_bytes());
    let n = u64::from_be_bytes(hash[..8].try_into().expect("8 bytes")) % 10_000_000_000;
    let digits = format!("{n:010}");
    format!("{}-{}-{}", &digits[..3], &digits[3..6], &digits[6..])
}

/// Iterations of the fingerprint hash: makes searching for a key whose fingerprint collides with
/// a target's costlier (Signal uses 5200 iterations of SHA-512 for the same purpose).
const FINGERPRINT_ITERATIONS: usize = 5200;

/// 30 digits that fingerprint one key.
fn fingerprint_digits(key: &PublicKey) -> String {
    let mut hash = *blake3::hash(key.as_bytes()).as_bytes();
    for _ in 0..FINGERPRINT_ITERATIONS {
        let mut hasher = blake3::Hasher::new_derive_key("kith safety number v1");
        hasher.update(&hash);
        hasher.update(key.as_bytes());
        hash = *hasher.finalize().as_bytes();
    }
    hash.chunks(5)
        .take(6)
        .map(|chunk| {
            let mut wide = [0u8; 8];
            wide[3..].copy_from_slice(chunk);
            format!("{:05}", u64::from_be_bytes(wide) % 100_000)
        })
        .collect()
}

/// The safety number of two identities: 60 digits in twelve groups of five, the same whichever
/// side computes it. If both people read the same number, neither key was swapped in transit.
pub fn safety_number(a: &PublicKey, b: &PublicKey) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let digits = fingerprint_digits(first) + &fingerprint_digits(second);
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).expect("ascii digits"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    #[test]
    fn printable_id_round_trips_and_catches_typos() {
        let key = SecretKey::generate().public_key();
        let id = printable_id(&key);
        assert!(id.starts_with("kith1"));
        assert_eq!(parse_id(&id).unwrap(), key);
        assert_eq!(parse_id(&key.to_hex()).unwrap(), key);
        let mut typo = id.clone().into_bytes();
        let last = typo.len() - 3;
        typo[last] = if typo[last] == b'q' { b'p' } else { b'q' };
        assert!(parse_id(std::str::from_utf8(&typo).unwrap()).is_err());
    }

    #[test]
    fn search_code_shape() {
        let code = search_code(&SecretKey::generate().public_key());
        assert_eq!(code.len(), 12);
        assert_eq!(code.matches('-').count(), 2);
    }

    #[test]
    fn safety_number_is_symmetric_and_distinct() {
        let a = SecretKey::generate().public_key();
        let b = SecretKey::generate().public_key();
        let c = SecretKey::generate().public_key();
        let ab = safety_number(&a, &b);
        assert_eq!(ab, safety_number(&b, &a));
        assert_ne!(ab, safety_number(&a, &c));
        assert_eq!(ab.replace(' ', "").len(), 60);
    }
}
