//! The identity service's one error type, shared by local and remote callers.

kith_service::service_error! {
    /// Everything an identity operation can fail with. Each variant's message says what is wrong
    /// in one lowercase line.
    pub enum IdentityError {
        /// A request field is malformed or out of bounds.
        InvalidArgument => (InvalidArgument, "invalid_argument"),
        /// A request or field is larger than allowed.
        TooLarge => (ResourceExhausted, "too_large"),
        /// A mnemonic word is not in the BIP39 English list, or the word count is wrong.
        BadMnemonic => (InvalidArgument, "bad_mnemonic"),
        /// The mnemonic's words are all valid but its checksum does not match.
        BadChecksum => (InvalidArgument, "bad_checksum"),
        /// The keystore passphrase does not open the keystore.
        WrongPassphrase => (PermissionDenied, "wrong_passphrase"),
        /// The keystore or state file is truncated, altered or otherwise unreadable.
        Corrupted => (FailedPrecondition, "corrupted"),
        /// No identity exists in this home yet.
        NoIdentity => (FailedPrecondition, "no_identity"),
        /// An identity already exists and would be overwritten.
        IdentityExists => (AlreadyExists, "identity_exists"),
        /// This device has no identity secret (it was linked, not restored from the words).
        NoIdentitySecret => (PermissionDenied, "no_identity_secret"),
        /// The context string is reserved for the identity service's own records.
        ReservedContext => (PermissionDenied, "reserved_context"),
        /// A signature does not verify.
        BadSignature => (InvalidArgument, "bad_signature"),
        /// An attestation or delegation has expired.
        Expired => (FailedPrecondition, "expired"),
        /// The device has been revoked by its identity.
        Revoked => (PermissionDenied, "revoked"),
        /// A record is older than the one already held.
        Stale => (FailedPrecondition, "stale"),
        /// The record belongs to another identity.
        WrongIdentity => (InvalidArgument, "wrong_identity"),
        /// A delegation was presented for another scope.
        WrongScope => (PermissionDenied, "wrong_scope"),
        /// Nothing is known under that key.
        NotFound => (NotFound, "not_found"),
        /// The operation is not allowed in this state.
        FailedPrecondition => (FailedPrecondition, "failed_precondition"),
        /// Reading or writing the data dir failed.
        Storage => (Internal, "storage"),
    }
}

pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

impl IdentityError {
    pub(crate) fn storage(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        IdentityError::Storage(format!("{what} {}: {err}", path.display()))
    }
}
