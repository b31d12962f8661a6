//! The identity service itself: setting up an identity (new words, restored words, or a link from
//! another device), and the [`IdentityApi`] implementation over the unlocked keystore.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use kith_service::Home;
use zeroize::Zeroizing;

use crate::api::*;
use crate::error::{IdentityError, Result};
use crate::ids::{printable_id, search_code};
use crate::keys::{
    Context, IDENTITY_PATH, PublicKey, SecretKey, identity_key_from_seed, verify_batch,
};
use crate::keystore::{self, KdfParams, KeystoreKind, RootSecret, Secrets};
use crate::link::{LinkRequest, decode_approval, encode_approval};
use crate::records::{
    Delegation, DeviceAttestation, MAX_NAME_LEN, Profile, ProfileUpdate, RevocationList,
    check_text, now,
};
use crate::state::State;

/// Default lifetime of a delegated key.
pub const DEFAULT_DELEGATION_TTL: u64 = 30 * 24 * 3600;
/// Longest lifetime of a delegated key.
pub const MAX_DELEGATION_TTL: u64 = 365 * 24 * 3600;

const MNEMONIC_WORDS: usize = 24;

struct Paths {
    keystore: PathBuf,
    state: PathBuf,
}

impl Paths {
    fn new(home: &Home) -> Self {
        let dir = home.service_dir("identity");
        Self {
            keystore: dir.join("keystore.json"),
            state: dir.join("state.json"),
        }
    }
}

/// Options for creating an identity on this device.
pub struct SetupOptions {
    /// This device's name, shown in device lists.
    pub device_name: String,
    /// The optional BIP39 passphrase (the "25th word"); part of the root, not the keystore lock.
    pub bip39_passphrase: Zeroizing<String>,
    /// Replace an existing identity (its files are kept as `*.replaced-<time>`).
    pub force: bool,
    /// Key-stretching cost of the new keystore.
    pub kdf: KdfParams,
}

impl Default for SetupOptions {
    fn default() -> Self {
        Self {
            device_name: String::new(),
            bip39_passphrase: Zeroizing::new(String::new()),
            force: false,
            kdf: KdfParams::STRONG,
        }
    }
}

/// A new identity and the words that restore it (to be shown to the user once).
pub struct NewIdentity {
    pub service: IdentityService,
    pub mnemonic: Zeroizing<String>,
}

/// The identity service over an unlocked keystore.
pub struct IdentityService {
    paths: Paths,
    identity_key: Option<SecretKey>,
    device_key: SecretKey,
    identity: PublicKey,
    attestation: DeviceAttestation,
    state: Mutex<State>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityService")
            .field("identity", &self.identity)
            .field("device", &self.attestation.device)
            .finish_non_exhaustive()
    }
}

/// Parses 24 BIP39 English words, naming the first unknown word or reporting a bad checksum.
pub fn parse_mnemonic(words: &str) -> Result<bip39::Mnemonic> {
    let words: Vec<String> = words.split_whitespace().map(str::to_lowercase).collect();
    if words.len() != MNEMONIC_WORDS {
        return Err(IdentityError::BadMnemonic(format!(
            "expected {MNEMONIC_WORDS} words, got {}",
            words.len()
        )));
    }
    for (i, word) in words.iter().enumerate() {
        if bip39::Language::English.find_word(word).is_none() {
            let shown: String = word.chars().take(32).collect();
            return Err(IdentityError::BadMnemonic(format!(
                "word {} {shown:?} is not in the BIP39 English word list",
                i + 1
            )));
        }
    }
    let joined = Zeroizing::new(words.join(" "));
    bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &joined).map_err(|e| match e {
        bip39::Error::InvalidChecksum => IdentityError::BadChecksum(
            "mnemonic checksum does not match: a word is wrong or the words are out of order"
                .into(),
        ),
        other => IdentityError::BadMnemonic(other.to_string()),
    })
}

fn identity_key_from_root(root: &RootSecret) -> Result<SecretKey> {
    let mnemonic = bip39::Mnemonic::from_entropy(&root.entropy)
        .map_err(|e| IdentityError::Corrupted(format!("keystore entropy: {e}")))?;
    let seed = Zeroizing::new(mnemonic.to_seed_normalized(&root.bip39_passphrase));
    Ok(identity_key_from_seed(&seed))
}

fn check_device_name(name: &str) -> Result<()> {
    check_text("device name", name, MAX_NAME_LEN)?;
    if name.trim().is_empty() {
        return Err(IdentityError::InvalidArgument(
            "device name must not be empty".into(),
        ));
    }
    Ok(())
}

/// Refuses to replace an identity unless forced; when forced, keeps the old files aside.
fn prepare_to_write(paths: &Paths, force: bool) -> Result<()> {
    if !paths.keystore.exists() {
        return Ok(());
    }
    if !force {
        return Err(IdentityError::IdentityExists(format!(
            "an identity already exists in {}; pass --force to replace it (the old files are kept)",
            paths.keystore.parent().expect("has parent").display()
        )));
    }
    let stamp = now();
    for path in [&paths.keystore, &paths.state] {
        if path.exists() {
            let aside = path.with_extension(format!("json.replaced-{stamp}"));
            std::fs::rename(path, &aside)
                .map_err(|e| IdentityError::storage("move aside", path, e))?;
        }
    }
    Ok(())
}

impl IdentityService {
    /// Creates a new identity from fresh 256-bit entropy.
    pub fn init(home: &Home, passphrase: &str, options: SetupOptions) -> Result<NewIdentity> {
        let mut entropy = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut entropy[..]);
        let mnemonic =
            bip39::Mnemonic::from_entropy(&entropy[..]).expect("32 bytes is valid entropy");
        let words = Zeroizing::new(mnemonic.to_string());
        let service = Self::create_root(home, passphrase, &mnemonic, options)?;
        Ok(NewIdentity {
            service,
            mnemonic: words,
        })
    }

    /// Restores an identity from its words; this device gets a new device key.
    pub fn restore(
        home: &Home,
        passphrase: &str,
        words: &str,
        options: SetupOptions,
    ) -> Result<Self> {
        let mnemonic = parse_mnemonic(words)?;
        Self::create_root(home, passphrase, &mnemonic, options)
    }

    fn create_root(
        home: &Home,
        passphrase: &str,
        mnemonic: &bip39::Mnemonic,
        options: SetupOptions,
    ) -> Result<Self> {
        check_device_name(&options.device_name)?;
        if passphrase.is_empty() {
            return Err(IdentityError::InvalidArgument(
                "keystore passphrase must not be empty".into(),
            ));
        }
        let paths = Paths::new(home);
        let root = RootSecret {
            entropy: Zeroizing::new(mnemonic.to_entropy()),
            bip39_passphrase: options.bip39_passphrase,
        };
        let identity_key = identity_key_from_root(&root)?;
        let device_key = SecretKey::generate();
        let attestation = DeviceAttestation::issue(
            &identity_key,
            device_key.public_key(),
            &options.device_name,
            None,
        )?;
        prepare_to_write(&paths, options.force)?;
        let state = State::new(Some(attestation.clone()));
        state.save(&paths.state)?;
        let secrets = Secrets {
            root: Some(root),
            device: device_key,
        };
        keystore::write(
            &paths.keystore,
            passphrase,
            options.kdf,
            KeystoreKind::Root,
            Some(identity_key.public_key()),
            &secrets,
        )?;
        Ok(Self {
            paths,
            identity: identity_key.public_key(),
            identity_key: Some(identity_key),
            device_key: secrets.device,
            attestation,
            state: Mutex::new(state),
        })
    }

    /// Starts linking this device to an identity held by another device: returns the request to
    /// carry to that device. Calling it again returns the same request.
    pub fn begin_link(home: &Home, passphrase: &str, options: SetupOptions) -> Result<LinkRequest> {
        let device_name = options.device_name.as_str();
        check_device_name(device_name)?;
        let paths = Paths::new(home);
        if paths.keystore.exists()
            && keystore::info(&paths.keystore)?.kind == KeystoreKind::Pending
            && !options.force
        {
            let (info, _) = keystore::open(&paths.keystore, passphrase)?;
            return LinkRequest::new(info.device, device_name);
        }
        let device_key = SecretKey::generate();
        let request = LinkRequest::new(device_key.public_key(), device_name)?;
        prepare_to_write(&paths, options.force)?;
        State::new(None).save(&paths.state)?;
        let secrets = Secrets {
            root: None,
            device: device_key,
        };
        keystore::write(
            &paths.keystore,
            passphrase,
            options.kdf,
            KeystoreKind::Pending,
            None,
            &secrets,
        )?;
        Ok(request)
    }

    /// Finishes linking with the approval code from the approving device.
    pub fn finish_link(home: &Home, passphrase: &str, approval_code: &str) -> Result<Self> {
        let paths = Paths::new(home);
        let (info, secrets) = keystore::open(&paths.keystore, passphrase)?;
        if info.kind != KeystoreKind::Pending {
            return Err(IdentityError::FailedPrecondition(
                "no link request is pending on this device: run `kith device link` first".into(),
            ));
        }
        let attestation = decode_approval(approval_code)?;
        if attestation.device != info.device {
            return Err(IdentityError::WrongIdentity(
                "approval code is for another device's link request".into(),
            ));
        }
        let state = State::new(Some(attestation.clone()));
        state.save(&paths.state)?;
        keystore::write(
            &paths.keystore,
            passphrase,
            info.kdf,
            KeystoreKind::Linked,
            Some(attestation.identity),
            &secrets,
        )?;
        Ok(Self {
            paths,
            identity: attestation.identity,
            identity_key: None,
            device_key: secrets.device,
            attestation,
            state: Mutex::new(state),
        })
    }

    /// Opens this home's identity with the keystore passphrase.
    pub fn open(home: &Home, passphrase: &str) -> Result<Self> {
        let paths = Paths::new(home);
        let (info, secrets) = keystore::open(&paths.keystore, passphrase)?;
        let identity_key = match (&info.kind, &secrets.root) {
            (KeystoreKind::Pending, _) => {
                return Err(IdentityError::FailedPrecondition(
                    "this device's link request is still waiting for approval: run `kith device link --finish CODE`".into(),
                ));
            }
            (KeystoreKind::Root, Some(root)) => Some(identity_key_from_root(root)?),
            (KeystoreKind::Linked, None) => None,
            _ => {
                return Err(IdentityError::Corrupted(
                    "keystore kind does not match its secrets".into(),
                ));
            }
        };
        let identity = info
            .identity
            .ok_or_else(|| IdentityError::Corrupted("keystore has no identity key".into()))?;
        if identity_key
            .as_ref()
            .is_some_and(|k| k.public_key() != identity)
        {
            return Err(IdentityError::Corrupted(
                "keystore words do not derive its identity key".into(),
            ));
        }
        let state = State::load(&paths.state)?;
        let attestation = state
            .this_device
            .clone()
            .filter(|a| a.device == info.device && a.identity == identity)
            .ok_or_else(|| {
                IdentityError::Corrupted("state does not hold this device's attestation".into())
            })?;
        Ok(Self {
            paths,
            identity,
            identity_key,
            device_key: secrets.device,
            attestation,
            state: Mutex::new(state),
        })
    }

    pub fn identity(&self) -> PublicKey {
        self.identity
    }

    pub fn attestation(&self) -> &DeviceAttestation {
        &self.attestation
    }

    fn key(&self, kind: KeyKind) -> Result<&SecretKey> {
        match (kind, &self.identity_key) {
            (KeyKind::Identity, None) => Err(IdentityError::NoIdentitySecret(
                "this device holds no identity secret (it was linked, not restored from the words); sign with the device key".into(),
            )),
            (KeyKind::Identity | KeyKind::Preferred, Some(key)) => Ok(key),
            (KeyKind::Preferred | KeyKind::Device, _) => Ok(&self.device_key),
        }
    }

    fn identity_key(&self) -> Result<&SecretKey> {
        self.key(KeyKind::Identity)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to a copy of the state and persists it; the in-memory state changes only
    /// if the write succeeded, so a failed write changes nothing.
    fn update_state<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut guard = self.lock_state();
        let mut next = guard.clone();
        let out = change(&mut next)?;
        next.save(&self.paths.state)?;
        *guard = next;
        Ok(out)
    }

    fn check_not_revoked(&self, state: &State, attestation: &DeviceAttestation) -> Result<()> {
        if let Some(list) = state.revocations.get(&attestation.identity)
            && list.is_revoked(&attestation.device)
        {
            return Err(IdentityError::Revoked(format!(
                "device {} was revoked by its identity (revocation list version {})",
                attestation.device, list.version
            )));
        }
        Ok(())
    }

    /// Takes a newer valid revocation list into `state`; an older one is `Stale`.
    fn merge_revocations(state: &mut State, list: RevocationList) -> Result<bool> {
        list.verify()?;
        match state.revocations.get(&list.identity) {
            Some(known) if known.version > list.version => Err(IdentityError::Stale(format!(
                "revocation list version {} is older than the known version {}",
                list.version, known.version
            ))),
            Some(known) if known.version == list.version => {
                if known == &list {
                    Ok(false)
                } else {
                    Err(IdentityError::Stale(format!(
                        "a different revocation list with version {} is already known",
                        list.version
                    )))
                }
            }
            _ => {
                state.revocations.insert(list.identity, list);
                Ok(true)
            }
        }
    }

    fn scoped_secret(&self, scope: &str) -> Zeroizing<[u8; 32]> {
        let mut hasher = blake3::Hasher::new_derive_key("kith delegated key v1");
        hasher.update(&self.device_key.to_bytes()[..]);
        hasher.update(scope.as_bytes());
        Zeroizing::new(*hasher.finalize().as_bytes())
    }
}

fn check_batch(sizes: impl ExactSizeIterator<Item = usize>) -> Result<()> {
    let count = sizes.len();
    if count > MAX_BATCH_ITEMS {
        return Err(IdentityError::TooLarge(format!(
            "batch has {count} items; at most {MAX_BATCH_ITEMS} allowed"
        )));
    }
    let total: usize = sizes.sum();
    if total > MAX_BATCH_BYTES {
        return Err(IdentityError::TooLarge(format!(
            "batch holds {total} message bytes; at most {MAX_BATCH_BYTES} allowed"
        )));
    }
    Ok(())
}

fn check_message(message: &[u8]) -> Result<()> {
    if message.len() > MAX_SIGN_MESSAGE {
        return Err(IdentityError::TooLarge(format!(
            "message is {} bytes; at most {MAX_SIGN_MESSAGE} allowed (sign a hash of larger data)",
            message.len()
        )));
    }
    Ok(())
}

#[async_trait]
impl IdentityApi for IdentityService {
    async fn show(&self) -> Result<IdentityInfo> {
        Ok(IdentityInfo {
            identity: self.identity,
            device: self.attestation.device,
            id: printable_id(&self.identity),
            search_code: search_code(&self.identity),
            derivation_path: IDENTITY_PATH.to_owned(),
            attestation: self.attestation.clone(),
            holds_identity_secret: self.identity_key.is_some(),
        })
    }

    async fn sign(&self, key: KeyKind, context: Context, message: Bytes) -> Result<SignedMessage> {
        context.check_caller()?;
        check_message(&message)?;
        let key = self.key(key)?;
        let (signature, signed_bytes) = key.sign(&context, &message);
        Ok(SignedMessage {
            public_key: key.public_key(),
            signature,
            signed_bytes,
        })
    }

    async fn sign_batch(&self, key: KeyKind, items: Vec<SignItem>) -> Result<BatchSignature> {
        check_batch(items.iter().map(|i| i.message.len()))?;
        for item in &items {
            item.context.check_caller()?;
        }
        let key = self.key(key)?;
        let signatures = items
            .iter()
            .map(|i| key.sign(&i.context, &i.message).0)
            .collect();
        Ok(BatchSignature {
            public_key: key.public_key(),
            signatures,
        })
    }

    async fn verify(&self, item: VerifyItem) -> Result<()> {
        check_message(&item.message)?;
        item.public_key
            .verify(&item.context, &item.message, &item.signature)
    }

    async fn verify_batch(&self, items: Vec<VerifyItem>) -> Result<()> {
        check_batch(items.iter().map(|i| i.message.len()))?;
        let items: Vec<_> = items
            .into_iter()
            .map(|i| (i.public_key, i.context, i.message.to_vec(), i.signature))
            .collect();
        verify_batch(&items)
    }

    async fn list_devices(&self) -> Result<DeviceList> {
        let state = self.lock_state();
        let revocations = state.revocations.get(&self.identity).cloned();
        let devices = state
            .devices
            .values()
            .map(|att| DeviceEntry {
                attestation: att.clone(),
                revoked: revocations
                    .as_ref()
                    .is_some_and(|r| r.is_revoked(&att.device)),
                this_device: att.device == self.attestation.device,
            })
            .collect();
        Ok(DeviceList {
            devices,
            revocations,
        })
    }

    async fn approve_link(
        &self,
        request: LinkRequest,
        expires_at: Option<u64>,
    ) -> Result<LinkApproval> {
        let identity_key = self.identity_key()?;
        let attestation =
            DeviceAttestation::issue(identity_key, request.device, &request.name, expires_at)?;
        self.update_state(|state| {
            if state
                .revocations
                .get(&self.identity)
                .is_some_and(|r| r.is_revoked(&request.device))
            {
                return Err(IdentityError::Revoked(format!(
                    "device {} was revoked; it cannot be linked again",
                    request.device
                )));
            }
            state.devices.insert(request.device, attestation.clone());
            Ok(())
        })?;
        tracing::info!(device = %request.device, name = %request.name, "approved device link");
        Ok(LinkApproval {
            approval_code: encode_approval(&attestation),
            attestation,
        })
    }

    async fn revoke_device(&self, device: PublicKey, reason: String) -> Result<RevocationList> {
        let identity_key = self.identity_key()?;
        if device == self.attestation.device {
            return Err(IdentityError::FailedPrecondition(
                "refusing to revoke the device you are on; revoke it from another device".into(),
            ));
        }
        let list = self.update_state(|state| {
            let list = RevocationList::extend(
                identity_key,
                state.revocations.get(&self.identity),
                device,
                &reason,
            )?;
            state.revocations.insert(self.identity, list.clone());
            Ok(list)
        })?;
        tracing::info!(%device, version = list.version, "revoked device");
        Ok(list)
    }

    async fn verify_device(
        &self,
        attestation: DeviceAttestation,
        revocations: Option<RevocationList>,
    ) -> Result<()> {
        attestation.verify(now())?;
        if let Some(list) = revocations {
            if list.identity != attestation.identity {
                return Err(IdentityError::WrongIdentity(
                    "revocation list belongs to another identity".into(),
                ));
            }
            list.verify()?;
            let revoked = list.is_revoked(&attestation.device);
            // Learn a newer list; an older or conflicting one is simply not kept.
            let _ = self.update_state(|state| Self::merge_revocations(state, list.clone()));
            if revoked {
                return Err(IdentityError::Revoked(format!(
                    "device {} was revoked by its identity (revocation list version {})",
                    attestation.device, list.version
                )));
            }
        }
        self.check_not_revoked(&self.lock_state(), &attestation)
    }

    async fn import_revocations(&self, revocations: RevocationList) -> Result<()> {
        self.update_state(|state| Self::merge_revocations(state, revocations))
            .map(|_| ())
    }

    async fn set_profile(&self, update: ProfileUpdate) -> Result<Profile> {
        update.validate()?;
        self.update_state(|state| {
            let version = state
                .profiles
                .get(&self.identity)
                .map_or(1, |p| p.version + 1);
            let profile =
                Profile::sign(&self.device_key, self.attestation.clone(), version, update)?;
            state.profiles.insert(self.identity, profile.clone());
            Ok(profile)
        })
    }

    async fn get_profile(&self, identity: Option<PublicKey>) -> Result<Profile> {
        let identity = identity.unwrap_or(self.identity);
        self.lock_state()
            .profiles
            .get(&identity)
            .cloned()
            .ok_or_else(|| {
                if identity == self.identity {
                    IdentityError::NotFound(
                        "no profile set yet: run `kith profile set --name NAME`".into(),
                    )
                } else {
                    IdentityError::NotFound(format!(
                        "no profile known for {}",
                        printable_id(&identity)
                    ))
                }
            })
    }

    async fn import_profile(&self, profile: Profile) -> Result<()> {
        profile.verify(now())?;
        self.update_state(|state| {
            self.check_not_revoked(state, &profile.signer)?;
            match state.profiles.get(&profile.identity) {
                Some(known) if known == &profile => Ok(()),
                Some(known) if known.version >= profile.version => {
                    Err(IdentityError::Stale(format!(
                        "profile version {} is not newer than the known version {}",
                        profile.version, known.version
                    )))
                }
                _ => {
                    state.profiles.insert(profile.identity, profile);
                    Ok(())
                }
            }
        })
    }

    async fn delegate(
        &self,
        scope: String,
        ttl_seconds: Option<NonZeroU64>,
    ) -> Result<DelegatedKey> {
        let scope_ctx = Context::new(&scope)?;
        let ttl = ttl_seconds.map_or(DEFAULT_DELEGATION_TTL, NonZeroU64::get);
        if ttl > MAX_DELEGATION_TTL {
            return Err(IdentityError::InvalidArgument(format!(
                "delegation lifetime must be 1 to {MAX_DELEGATION_TTL} seconds"
            )));
        }
        let secret = self.scoped_secret(scope_ctx.as_str());
        let scoped_key = SecretKey::from_bytes(&secret).public_key();
        let delegation = Delegation::issue(
            &self.device_key,
            self.attestation.clone(),
            scoped_key,
            &scope,
            now() + ttl,
        );
        tracing::info!(%scope, key = %scoped_key, "delegated scoped key");
        Ok(DelegatedKey { delegation, secret })
    }

    async fn verify_delegation(&self, delegation: Delegation, scope: String) -> Result<()> {
        delegation.verify(&scope, now())?;
        self.check_not_revoked(&self.lock_state(), &delegation.device)
    }
}
