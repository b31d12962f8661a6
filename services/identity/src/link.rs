//! Device linking codes, carried by the user between devices.
//!
//! A new device makes a *link request* (its device public key and name); a device holding the
//! identity secret approves it and returns an *approval* (the signed attestation). Both travel as
//! bech32m strings (`kithlink1…`, `kithok1…`), so a mistyped or truncated code is caught by the
//! checksum rather than producing a wrong key.

use bech32::{Bech32m, Hrp};

use crate::error::{IdentityError, Result};
use crate::keys::{PublicKey, Signature};
use crate::records::{DeviceAttestation, MAX_NAME_LEN, check_text};

const REQUEST_HRP: Hrp = Hrp::parse_unchecked("kithlink");
const APPROVAL_HRP: Hrp = Hrp::parse_unchecked("kithok");
const VERSION: u8 = 1;

/// A new device asking to be attested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRequest {
    pub device: PublicKey,
    pub name: String,
}

fn decode(code: &str, hrp: Hrp, what: &str) -> Result<Vec<u8>> {
    let bad = |why: String| IdentityError::InvalidArgument(format!("{what} is not valid: {why}"));
    if code.len() > 1023 {
        return Err(IdentityError::TooLarge(format!(
            "{what} is longer than 1023 characters"
        )));
    }
    let (found, data) = bech32::decode(code.trim()).map_err(|e| bad(e.to_string()))?;
    if found != hrp {
        return Err(bad(format!("it starts with {found}, expected {hrp}")));
    }
    if data.first() != Some(&VERSION) {
        return Err(bad("unknown version".into()));
    }
    Ok(data[1..].to_vec())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        (self.0.len() >= n).then(|| {
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            head
        })
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn name(&mut self) -> Option<String> {
        let len = *self.take(1)?.first()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

impl LinkRequest {
    pub fn new(device: PublicKey, name: &str) -> Result<Self> {
        check_text("device name", name, MAX_NAME_LEN)?;
        Ok(Self {
            device,
            name: name.to_owned(),
        })
    }

    pub fn encode(&self) -> String {
        let mut data = vec![VERSION];
        data.extend_from_slice(self.device.as_bytes());
        data.push(self.name.len() as u8);
        data.extend_from_slice(self.name.as_bytes());
        bech32::encode::<Bech32m>(REQUEST_HRP, &data).expect("a link request fits bech32m")
    }

    pub fn decode(code: &str) -> Result<Self> {
        let data = decode(code, REQUEST_HRP, "link code")?;
        let bad =
            || IdentityError::InvalidArgument("link code is not valid: malformed payload".into());
        let mut r = Reader(&data);
        let device = PublicKey::from_bytes(r.take(32).ok_or_else(bad)?)?;
        let name = r.name().ok_or_else(bad)?;
        if !r.0.is_empty() {
            return Err(bad());
        }
        Self::new(device, &name)
    }
}

/// Encodes the approval (the attestation) for the new device.
pub fn encode_approval(att: &DeviceAttestation) -> String {
    let mut data = vec![VERSION];
    data.extend_from_slice(att.identity.as_bytes());
    data.extend_from_slice(att.device.as_bytes());
    data.extend_from_slice(&att.created_at.to_be_bytes());
    data.extend_from_slice(&att.expires_at.unwrap_or(0).to_be_bytes());
    data.extend_from_slice(&att.signature.0);
    data.push(att.name.len() as u8);
    data.extend_from_slice(att.name.as_bytes());
    bech32::encode::<Bech32m>(APPROVAL_HRP, &data).expect("an approval fits bech32m")
}

/// Decodes an approval and checks its signature (not yet that it is for this device).
pub fn decode_approval(code: &str) -> Result<DeviceAttestation> {
    let data = decode(code, APPROVAL_HRP, "approval code")?;
    let bad =
        || IdentityError::InvalidArgument("approval code is not valid: malformed payload".into());
    let mut r = Reader(&data);
    let identity = PublicKey::from_bytes(r.take(32).ok_or_else(bad)?)?;
    let device = PublicKey::from_bytes(r.take(32).ok_or_else(bad)?)?;
    let created_at = r.u64().ok_or_else(bad)?;
    let expires_at = r.u64().ok_or_else(bad)?;
    let signature = Signature::from_bytes(r.take(64).ok_or_else(bad)?)?;
    let name = r.name().ok_or_else(bad)?;
    if !r.0.is_empty() {
        return Err(bad());
    }
    let att = DeviceAttestation {
        identity,
        device,
        name,
        created_at,
        expires_at: (expires_at != 0).then_some(expires_at),
        signature,
    };
    att.verify(crate::records::now())?;
    Ok(att)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    #[test]
    fn request_round_trips_and_typos_are_caught() {
        let request = LinkRequest::new(SecretKey::generate().public_key(), "laptop").unwrap();
        let code = request.encode();
        assert_eq!(LinkRequest::decode(&code).unwrap(), request);
        let mut typo = code.clone().into_bytes();
        let i = typo.len() - 10;
        typo[i] = if typo[i] == b'x' { b'y' } else { b'x' };
        assert!(LinkRequest::decode(std::str::from_utf8(&typo).unwrap()).is_err());
        assert!(LinkRequest::decode(&code[..code.len() - 1]).is_err());
    }

    #[test]
    fn approval_round_trips_and_forgery_is_refused() {
        let identity = SecretKey::generate();
        let device = SecretKey::generate().public_key();
        let att = DeviceAttestation::issue(&identity, device, "phone", None).unwrap();
        let code = encode_approval(&att);
        assert_eq!(decode_approval(&code).unwrap(), att);
        let mut forged = att.clone();
        forged.name = "evil".into();
        assert!(matches!(
            decode_approval(&encode_approval(&forged)),
            Err(IdentityError::BadSignature(_))
        ));
    }
}
