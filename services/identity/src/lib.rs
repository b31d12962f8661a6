//! Kith's identity service.
//!
//! The root of an identity is 24 BIP39 words; the identity key is derived from them by hardened
//! SLIP-0010 on [`keys::IDENTITY_PATH`]. Every device has its own random device key, attested by
//! the identity key and individually revocable through a signed, versioned revocation list.
//! Other services receive scoped keys delegated by the device key; the identity and device
//! secrets never leave this service. Secrets rest only in the encrypted [`keystore`].
//!
//! The API is the [`IdentityApi`] trait; [`IdentityService`] implements it in-process, the gRPC
//! remote client implements it over a socket, and [`IdentityClient`] holds either.

pub mod api;
pub mod daemon;
mod error;
mod fsutil;
pub mod grpc;
pub mod ids;
pub mod keys;
pub mod keystore;
pub mod link;
pub mod passphrase;
pub mod records;
mod service;
mod state;
mod wire;

pub use api::{IdentityApi, IdentityClient, KeyKind};
pub use error::{IdentityError, Result};
pub use service::{
    DEFAULT_DELEGATION_TTL, IdentityService, MAX_DELEGATION_TTL, NewIdentity, SetupOptions,
    parse_mnemonic,
};
