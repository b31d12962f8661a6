//! The identity service's public state: the attestations this identity issued, revocation lists
//! and profiles it knows. Everything here is signed, so the file is verified record by record when
//! loaded; it holds no secrets.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IdentityError, Result};
use crate::fsutil::write_atomic;
use crate::keys::PublicKey;
use crate::records::{DeviceAttestation, Profile, RevocationList};

const FORMAT: &str = "kith-identity-state/1";

/// The largest state file we read; a larger one is refused as corrupted.
const MAX_STATE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    format: String,
    /// This device's attestation; `None` while a link request is pending.
    pub this_device: Option<DeviceAttestation>,
    /// Devices this identity attested from this device (including this one), by device key.
    pub devices: BTreeMap<PublicKey, DeviceAttestation>,
    /// The newest known revocation list of each identity.
    pub revocations: BTreeMap<PublicKey, RevocationList>,
    /// The newest known profile of each identity.
    pub profiles: BTreeMap<PublicKey, Profile>,
}

impl State {
    pub fn new(this_device: Option<DeviceAttestation>) -> Self {
        let mut devices = BTreeMap::new();
        if let Some(att) = &this_device {
            devices.insert(att.device, att.clone());
        }
        Self {
            format: FORMAT.into(),
            this_device,
            devices,
            revocations: BTreeMap::new(),
            profiles: BTreeMap::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let corrupted = |why: String| {
            IdentityError::Corrupted(format!("state {} is corrupted: {why}", path.display()))
        };
        let size = std::fs::metadata(path)
            .map_err(|e| IdentityError::storage("read state", path, e))?
            .len();
        if size > MAX_STATE_BYTES {
            return Err(corrupted(format!("{size} bytes is larger than allowed")));
        }
        let bytes =
            std::fs::read(path).map_err(|e| IdentityError::storage("read state", path, e))?;
        let state: State = serde_json::from_slice(&bytes).map_err(|e| corrupted(e.to_string()))?;
        if state.format != FORMAT {
            return Err(corrupted(format!("unknown format {:?}", state.format)));
        }
        // Signatures are checked, not expiry: an expired record is still a true record.
        let verify = |r: Result<()>| match r {
            Err(IdentityError::Expired(_)) | Ok(()) => Ok(()),
            Err(e) => Err(corrupted(e.to_string())),
        };
        let far_past = 0;
        for (key, att) in &state.devices {
            if key != &att.device {
                return Err(corrupted("device entry under the wrong key".into()));
            }
            verify(att.verify(far_past))?;
        }
        for (key, list) in &state.revocations {
            if key != &list.identity {
                return Err(corrupted("revocation list under the wrong key".into()));
            }
            verify(list.verify())?;
        }
        for (key, profile) in &state.profiles {
            if key != &profile.identity {
                return Err(corrupted("profile under the wrong key".into()));
            }
            verify(profile.verify(far_past))?;
        }
        if let Some(att) = &state.this_device {
            verify(att.verify(far_past))?;
        }
        Ok(state)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        write_atomic(path, &json)
    }
}
