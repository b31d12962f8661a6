//! The encrypted keystore: the only place secrets rest on disk.
//!
//! The file is JSON with a public header (format, kind, public keys, KDF parameters) and the
//! secrets encrypted with XChaCha20-Poly1305 under a key stretched from the passphrase with
//! Argon2id. The header is the AEAD's associated data, so it cannot be altered unnoticed, and a
//! BLAKE3 checksum over the whole file tells corruption apart from a wrong passphrase. Secrets
//! are held in zeroising buffers and never serialised through intermediate strings.

use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{IdentityError, Result};
use crate::fsutil::write_atomic;
use crate::keys::{PublicKey, SecretKey};

const FORMAT: &str = "kith-keystore/1";

/// The keystore passphrase, zeroised on drop.
pub type Passphrase = Zeroizing<String>;

/// Argon2id cost, stored in the keystore header. New keystores use [`KdfParams::STRONG`]
/// (64 MiB, 3 passes: above OWASP's minimum recommendation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// The cost used for new keystores.
    pub const STRONG: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };
    /// A cheap cost for test suites only.
    pub const INSECURE_FAST: Self = Self {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };

    /// [`Self::STRONG`], unless `KITH_INSECURE_FAST_KDF=1` asks for [`Self::INSECURE_FAST`]
    /// (read by the `kith` command so its end-to-end tests stay fast).
    pub fn from_env() -> Self {
        if std::env::var_os("KITH_INSECURE_FAST_KDF").is_some_and(|v| v == "1") {
            Self::INSECURE_FAST
        } else {
            Self::STRONG
        }
    }

    /// Bounds checked before any work, so a tampered header cannot make us allocate gigabytes.
    fn validate(&self) -> Result<()> {
        let ok = (8..=1024 * 1024).contains(&self.memory_kib)
            && (1..=16).contains(&self.iterations)
            && (1..=8).contains(&self.parallelism);
        if ok {
            Ok(())
        } else {
            Err(IdentityError::Corrupted(format!(
                "keystore has out-of-range kdf parameters {self:?}"
            )))
        }
    }
}

/// What kind of device this keystore belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeystoreKind {
    /// Created or restored from the 24 words: holds the identity secret.
    Root,
    /// Linked by another device: holds only its device key.
    Linked,
    /// A link request is waiting for approval.
    Pending,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    kind: KeystoreKind,
    identity_public_key: Option<PublicKey>,
    device_public_key: PublicKey,
    kdf: KdfParams,
    salt: String,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(flatten)]
    header: Header,
    ciphertext: String,
    checksum: String,
}

/// The BIP39 root of an identity.
pub struct RootSecret {
    pub entropy: Zeroizing<Vec<u8>>,
    pub bip39_passphrase: Zeroizing<String>,
}

/// Everything secret about this device.
pub struct Secrets {
    pub root: Option<RootSecret>,
    pub device: SecretKey,
}

impl Secrets {
    /// Binary layout: version 1 | device secret (32) | has_root (1) |
    /// [entropy len (1) | entropy | passphrase len (u16) | passphrase].
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(512));
        out.push(1);
        out.extend_from_slice(&self.device.to_bytes()[..]);
        match &self.root {
            None => out.push(0),
            Some(root) => {
                out.push(1);
                out.push(root.entropy.len() as u8);
                out.extend_from_slice(&root.entropy);
                out.extend_from_slice(&(root.bip39_passphrase.len() as u16).to_be_bytes());
                out.extend_from_slice(root.bip39_passphrase.as_bytes());
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || IdentityError::Corrupted("keystore secrets are malformed".into());
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(bad());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(1)? != [1] {
            return Err(bad());
        }
        let mut device = Zeroizing::new([0u8; 32]);
        device.copy_from_slice(take(32)?);
        let root = match take(1)?[0] {
            0 => None,
            1 => {
                let len = take(1)?[0] as usize;
                let entropy = Zeroizing::new(take(len)?.to_vec());
                let pass_len = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
                let pass = std::str::from_utf8(take(pass_len)?).map_err(|_| bad())?;
                Some(RootSecret {
                    entropy,
                    bip39_passphrase: Zeroizing::new(pass.to_owned()),
                })
            }
            _ => return Err(bad()),
        };
        Ok(Self {
            root,
            device: SecretKey::from_bytes(&device),
        })
    }
}

/// The public facts of a keystore, readable without the passphrase.
#[derive(Clone, Debug)]
pub struct KeystoreInfo {
    pub kind: KeystoreKind,
    pub kdf: KdfParams,
    pub identity: Option<PublicKey>,
    pub device: PublicKey,
}

fn derive_key(passphrase: &str, salt: &[u8], params: KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    let argon_params = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|e| IdentityError::Corrupted(format!("keystore kdf parameters: {e}")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| IdentityError::Internal(format!("argon2: {e}")))?;
    Ok(key)
}

fn aad(header: &Header) -> Vec<u8> {
    serde_json::to_vec(header).expect("header serialises")
}

fn checksum(header_aad: &[u8], ciphertext_hex: &str) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("kith keystore checksum v1");
    hasher.update(header_aad);
    hasher.update(ciphertext_hex.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// Encrypts and writes the keystore atomically (0600).
pub fn write(
    path: &Path,
    passphrase: &str,
    kdf: KdfParams,
    kind: KeystoreKind,
    identity: Option<PublicKey>,
    secrets: &Secrets,
) -> Result<()> {
    if passphrase.is_empty() {
        return Err(IdentityError::InvalidArgument(
            "keystore passphrase must not be empty".into(),
        ));
    }
    kdf.validate()?;
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let header = Header {
        format: FORMAT.into(),
        kind,
        identity_public_key: identity,
        device_public_key: secrets.device.public_key(),
        kdf,
        salt: hex::encode(salt),
        nonce: hex::encode(nonce),
    };
    let key = derive_key(passphrase, &salt, kdf)?;
    let header_aad = aad(&header);
    let plaintext = secrets.encode();
    let ciphertext = XChaCha20Poly1305::new(key.as_ref().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &header_aad,
            },
        )
        .map_err(|_| IdentityError::Internal("encrypt keystore".into()))?;
    let ciphertext = hex::encode(ciphertext);
    let file = File {
        checksum: checksum(&header_aad, &ciphertext),
        header,
        ciphertext,
    };
    let json = serde_json::to_vec_pretty(&file).expect("keystore serialises");
    write_atomic(path, &json)
}

fn read_file(path: &Path) -> Result<File> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IdentityError::NoIdentity(format!(
                "no identity in {}: run `kith init` or `kith restore` first",
                path.parent()
                    .and_then(Path::parent)
                    .unwrap_or(path)
                    .display()
            )));
        }
        Err(e) => return Err(IdentityError::storage("read keystore", path, e)),
    };
    let file: File = serde_json::from_slice(&bytes).map_err(|e| {
        IdentityError::Corrupted(format!(
            "keystore {} is corrupted or truncated: {e}",
            path.display()
        ))
    })?;
    if file.header.format != FORMAT {
        return Err(IdentityError::Corrupted(format!(
            "keystore {} has unknown format {:?}",
            path.display(),
            file.header.format
        )));
    }
    if checksum(&aad(&file.header), &file.ciphertext) != file.checksum {
        return Err(IdentityError::Corrupted(format!(
            "keystore {} is corrupted: checksum mismatch",
            path.display()
        )));
    }
    Ok(file)
}

/// Reads the public facts without the passphrase.
pub fn info(path: &Path) -> Result<KeystoreInfo> {
    let file = read_file(path)?;
    Ok(KeystoreInfo {
        kind: file.header.kind,
        kdf: file.header.kdf,
        identity: file.header.identity_public_key,
        device: file.header.device_public_key,
    })
}

/// Decrypts the keystore.
pub fn open(path: &Path, passphrase: &str) -> Result<(KeystoreInfo, Secrets)> {
    let file = read_file(path)?;
    let header = &file.header;
    header.kdf.validate()?;
    let corrupted = |what: &str| {
        IdentityError::Corrupted(format!("keystore {} has a bad {what}", path.display()))
    };
    let salt = hex::decode(&header.salt).map_err(|_| corrupted("salt"))?;
    let nonce: [u8; 24] = hex::decode(&header.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| corrupted("nonce"))?;
    let ciphertext = hex::decode(&file.ciphertext).map_err(|_| corrupted("ciphertext"))?;
    let key = derive_key(passphrase, &salt, header.kdf)?;
    let plaintext = Zeroizing::new(
        XChaCha20Poly1305::new(key.as_ref().into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad(header),
                },
            )
            .map_err(|_| {
                IdentityError::WrongPassphrase("wrong passphrase for the keystore".into())
            })?,
    );
    let secrets = Secrets::decode(&plaintext)?;
    if secrets.device.public_key() != header.device_public_key {
        return Err(corrupted("device key"));
    }
    Ok((
        KeystoreInfo {
            kind: header.kind,
            kdf: header.kdf,
            identity: header.identity_public_key,
            device: header.device_public_key,
        },
        secrets,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Secrets {
        Secrets {
            root: Some(RootSecret {
                entropy: Zeroizing::new(vec![7; 32]),
                bip39_passphrase: Zeroizing::new("extra words".into()),
            }),
            device: SecretKey::generate(),
        }
    }

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.json");
        let secrets = sample();
        write(
            &path,
            "correct horse",
            KdfParams::STRONG,
            KeystoreKind::Root,
            None,
            &secrets,
        )
        .unwrap();
        let (info, opened) = open(&path, "correct horse").unwrap();
        assert_eq!(info.kind, KeystoreKind::Root);
        assert_eq!(opened.device.public_key(), secrets.device.public_key());
        let root = opened.root.unwrap();
        assert_eq!(&root.entropy[..], &[7; 32]);
        assert_eq!(root.bip39_passphrase.as_str(), "extra words");
        assert!(matches!(
            open(&path, "wrong"),
            Err(IdentityError::WrongPassphrase(_))
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("extra words"));
    }

    #[test]
    fn truncated_and_tampered_files_are_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.json");
        write(
            &path,
            "pw",
            KdfParams::INSECURE_FAST,
            KeystoreKind::Root,
            None,
            &sample(),
        )
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(matches!(
            open(&path, "pw"),
            Err(IdentityError::Corrupted(_))
        ));
        let mut tampered = String::from_utf8(good.clone()).unwrap();
        tampered = tampered.replacen("\"kind\": \"root\"", "\"kind\": \"linked\"", 1);
        std::fs::write(&path, tampered).unwrap();
        assert!(matches!(
            open(&path, "pw"),
            Err(IdentityError::Corrupted(_))
        ));
    }

    #[test]
    fn empty_passphrase_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.json");
        assert!(matches!(
            write(
                &path,
                "",
                KdfParams::INSECURE_FAST,
                KeystoreKind::Root,
                None,
                &sample()
            ),
            Err(IdentityError::InvalidArgument(_))
        ));
        assert!(!path.exists());
    }
}
