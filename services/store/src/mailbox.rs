//! Mailboxes: small, encrypted, expiring records that a node keeps for a recipient who may be
//! offline (a join request an offline admin approves later, a message to a sleeping phone).
//!
//! A mailbox is named by its owner's ed25519 public key. Anyone may deposit a record (ciphertext
//! the depositor sealed for the owner: the keeping node cannot read it) of at most
//! [`MAX_RECORD_BYTES`]; it expires after a TTL (48 hours by default, at most 7 days). Only the
//! owner may read and remove records: a fetch or an acknowledgement is signed by the mailbox key
//! over the keeping node's peer id and the current time, so it cannot be replayed elsewhere or
//! later than [`MAX_CLOCK_SKEW`]. Limits per mailbox ([`MAX_RECORDS_PER_MAILBOX`],
//! [`MAX_BYTES_PER_MAILBOX`]), per depositor in a mailbox ([`MAX_RECORDS_PER_DEPOSITOR`]) and in
//! total (the node's quota) bound what strangers can make a node keep.
//!
//! The protocol, ALPN [`MAILBOX_ALPN`], is one request and one reply per stream, each a frame
//! (`u32` big-endian length, then a tag byte and the body), at most [`MAX_FRAME_BYTES`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Store;
use crate::error::StoreError;
use crate::net::{Network, PeerChannel, PeerId};

/// The mailbox protocol.
pub const MAILBOX_ALPN: &str = "kith/mailbox/1";
/// Largest record.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Records one mailbox holds at most.
pub const MAX_RECORDS_PER_MAILBOX: u64 = 256;
/// Bytes one mailbox holds at most.
pub const MAX_BYTES_PER_MAILBOX: u64 = 1024 * 1024;
/// Records one depositor may have waiting in one mailbox.
pub const MAX_RECORDS_PER_DEPOSITOR: u64 = 32;
/// The default lifetime of a record.
pub const DEFAULT_TTL: Duration = Duration::from_secs(48 * 3600);
/// The longest lifetime a record may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Records returned by one fetch at most.
pub const MAX_FETCH_RECORDS: usize = 64;
/// How far a signed request's time may be from the keeper's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Largest protocol frame (a full fetch reply fits).
pub const MAX_FRAME_BYTES: usize = MAX_FETCH_RECORDS * (MAX_RECORD_BYTES + 64) + 64;
/// The node-wide quota on mailbox bytes, unless configured.
pub const DEFAULT_TOTAL_QUOTA: u64 = 256 * 1024 * 1024;

const FETCH_CONTEXT: &[u8] = b"kith-store-mailbox-fetch-v1\0";
const ACK_CONTEXT: &[u8] = b"kith-store-mailbox-ack-v1\0";

const TAG_DEPOSIT: u8 = 1;
const TAG_FETCH: u8 = 2;
const TAG_ACK: u8 = 3;
const TAG_DEPOSITED: u8 = 0x81;
const TAG_RECORDS: u8 = 0x82;
const TAG_ACKED: u8 = 0x83;
const TAG_ERROR: u8 = 0xff;

/// A mailbox: its owner's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxKey([u8; 32]);

impl MailboxKey {
    /// Validates an ed25519 public key (a curve point, not of small order).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, StoreError> {
        let key = crate::log::LogKey::from_slice(bytes)
            .map_err(|_| StoreError::InvalidKey("mailbox key is not a usable ed25519 key"))?;
        Ok(MailboxKey(*key.as_bytes()))
    }

    pub fn of(signing: &SigningKey) -> Self {
        MailboxKey(signing.verifying_key().to_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn verifying(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("validated on creation")
    }
}

impl std::fmt::Display for MailboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for MailboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MailboxKey({self})")
    }
}

/// A record kept in a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// BLAKE3 of the mailbox key and the data: the same record deposited twice is kept once.
    pub id: [u8; 32],
    pub data: Vec<u8>,
    /// Unix seconds.
    pub received_at: u64,
    pub expires_at: u64,
}

/// What a deposit made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deposited {
    pub id: [u8; 32],
    pub expires_at: u64,
}

/// The id of `data` in `mailbox`.
pub fn record_id(mailbox: &MailboxKey, data: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("kith-store mailbox record v1");
    hasher.update(mailbox.as_bytes());
    hasher.update(data);
    *hasher.finalize().as_bytes()
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a deposit's size and TTL (0 = the default) and returns the TTL in seconds.
pub fn check_deposit(data: &[u8], ttl_seconds: u64) -> Result<u64, StoreError> {
    if data.is_empty() {
        return Err(StoreError::Malformed("empty mailbox record"));
    }
    if data.len() > MAX_RECORD_BYTES {
        return Err(StoreError::MailboxFull(format!(
            "record of {} bytes is larger than the maximum of {MAX_RECORD_BYTES}",
            data.len()
        )));
    }
    match ttl_seconds {
        0 => Ok(DEFAULT_TTL.as_secs()),
        t if t > MAX_TTL.as_secs() => Err(StoreError::Malformed(
            "mailbox ttl longer than the maximum of 7 days",
        )),
        t => Ok(t),
    }
}

fn signed_bytes(
    context: &[u8],
    mailbox: &MailboxKey,
    keeper: &PeerId,
    time: u64,
    ids: &[[u8; 32]],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + 72 + ids.len() * 32);
    m.extend_from_slice(context);
    m.extend_from_slice(mailbox.as_bytes());
    m.extend_from_slice(keeper);
    m.extend_from_slice(&time.to_be_bytes());
    for id in ids {
        m.extend_from_slice(id);
    }
    m
}

/// Checks an owner's signed request: the signature under the mailbox key, and the time within
/// [`MAX_CLOCK_SKEW`] of `now`.
fn check_signed(
    context: &[u8],
    mailbox: &MailboxKey,
    keeper: &PeerId,
    time: u64,
    ids: &[[u8; 32]],
    signature: &[u8; 64],
    now: u64,
) -> Result<(), StoreError> {
    if time.abs_diff(now) > MAX_CLOCK_SKEW.as_secs() {
        return Err(StoreError::Malformed(
            "mailbox request time too far from the keeper's clock",
        ));
    }
    mailbox
        .verifying()
        .verify_strict(
            &signed_bytes(context, mailbox, keeper, time, ids),
            &Signature::from_bytes(signature),
        )
        .map_err(|_| StoreError::BadSignature)
}

// --- wire ---------------------------------------------------------------------------------------

async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    tag: u8,
    body: &[u8],
) -> Result<(), StoreError> {
    let len = u32::try_from(body.len() + 1)
        .map_err(|_| StoreError::Protocol("frame too large".into()))?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(tag);
    frame.extend_from_slice(body);
    w.write_all(&frame).await.map_err(net_error)?;
    Ok(())
}

async fn read_frame<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<(u8, Vec<u8>), StoreError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(net_error)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(StoreError::Protocol(format!(
            "mailbox frame of {len} bytes"
        )));
    }
    let mut frame = vec![0u8; len];
    r.read_exact(&mut frame).await.map_err(net_error)?;
    let tag = frame.remove(0);
    Ok((tag, frame))
}

fn net_error(e: std::io::Error) -> StoreError {
    StoreError::Network(format!("mailbox stream: {e}"))
}

/// A cursor over a frame body; every read is bounds-checked.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Protocol("truncated mailbox message".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn end(self) -> Result<(), StoreError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Protocol(
                "trailing bytes in mailbox message".into(),
            ))
        }
    }
}

// --- keeper side --------------------------------------------------------------------------------

/// Serves one mailbox request on `channel` (a stream a peer opened on [`MAILBOX_ALPN`]). `me`
/// is this node's peer id (signed requests must name it); `quota` the node-wide byte quota.
pub async fn serve(
    store: &Store,
    mut channel: PeerChannel,
    me: PeerId,
    quota: u64,
) -> Result<(), StoreError> {
    let (tag, body) = read_frame(&mut channel.recv).await?;
    let reply = handle(store, channel.peer, me, quota, tag, &body).await;
    match reply {
        Ok((tag, body)) => write_frame(&mut channel.send, tag, &body).await?,
        Err(error) => {
            tracing::debug!(peer = %hex::encode(channel.peer), %error, "mailbox request refused");
            let mut message = format!("{}: {error}", error.reason());
            message.truncate(256);
            write_frame(&mut channel.send, TAG_ERROR, message.as_bytes()).await?;
        }
    }
    channel.send.shutdown().await.map_err(net_error)?;
    Ok(())
}

async fn handle(
    store: &Store,
    depositor: PeerId,
    me: PeerId,
    quota: u64,
    tag: u8,
    body: &[u8],
) -> Result<(u8, Vec<u8>), StoreError> {
    let mut b = Body(body);
    let now = unix_now();
    match tag {
        TAG_DEPOSIT => {
            let mailbox = MailboxKey::from_slice(b.take(32)?)?;
            let ttl = b.u64()?;
            let data = b.0.to_vec();
            let deposited = store
                .mailbox_put(&mailbox, &depositor, &data, ttl, now, quota)
                .await?;
            let mut out = deposited.id.to_vec();
            out.extend_from_slice(&deposited.expires_at.to_be_bytes());
            Ok((TAG_DEPOSITED, out))
        }
        TAG_FETCH => {
            let mailbox = MailboxKey::from_slice(b.take(32)?)?;
            let time = b.u64()?;
            let signature: [u8; 64] = b.array()?;
            b.end()?;
            check_signed(FETCH_CONTEXT, &mailbox, &me, time, &[], &signature, now)?;
            let records = store
                .mailbox_fetch(&mailbox, now, MAX_FETCH_RECORDS)
                .await?;
            Ok((TAG_RECORDS, encode_records(&records)))
        }
        TAG_ACK => {
            let mailbox = MailboxKey::from_slice(b.take(32)?)?;
            let time = b.u64()?;
            let count = b.u32()? as usize;
            if count > MAX_FETCH_RECORDS {
                return Err(StoreError::Protocol(
                    "acknowledging too many records".into(),
                ));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                ids.push(b.array::<32>()?);
            }
            let signature: [u8; 64] = b.array()?;
            b.end()?;
            check_signed(ACK_CONTEXT, &mailbox, &me, time, &ids, &signature, now)?;
            let removed = store.mailbox_ack(&mailbox, &ids).await?;
            Ok((TAG_ACKED, removed.to_be_bytes().to_vec()))
        }
        other => Err(StoreError::Protocol(format!(
            "unknown mailbox request {other}"
        ))),
    }
}

fn encode_records(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        out.extend_from_slice(&r.id);
        out.extend_from_slice(&r.received_at.to_be_bytes());
        out.extend_from_slice(&r.expires_at.to_be_bytes());
        out.extend_from_slice(&(r.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&r.data);
    }
    out
}

fn decode_records(mailbox: &MailboxKey, body: &[u8]) -> Result<Vec<Record>, StoreError> {
    let mut b = Body(body);
    let count = b.u32()? as usize;
    if count > MAX_FETCH_RECORDS {
        return Err(StoreError::Protocol(
            "too many mailbox records in a reply".into(),
        ));
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let id: [u8; 32] = b.array()?;
        let received_at = b.u64()?;
        let expires_at = b.u64()?;
        let len = b.u32()? as usize;
        if len == 0 || len > MAX_RECORD_BYTES {
            return Err(StoreError::Protocol("mailbox record of a bad size".into()));
        }
        let data = b.take(len)?.to_vec();
        // The keeper cannot substitute records: the id binds mailbox and data.
        if record_id(mailbox, &data) != id {
            return Err(StoreError::Protocol(
                "mailbox record id does not match its data".into(),
            ));
        }
        records.push(Record {
            id,
            data,
            received_at,
            expires_at,
        });
    }
    b.end()?;
    Ok(records)
}

// --- owner and depositor side -------------------------------------------------------------------

async fn exchange(
    network: &dyn Network,
    keeper: PeerId,
    tag: u8,
    body: &[u8],
) -> Result<(u8, Vec<u8>), StoreError> {
    let mut channel = network.open(keeper, MAILBOX_ALPN).await?;
    write_frame(&mut channel.send, tag, body).await?;
    channel.send.shutdown().await.map_err(net_error)?;
    let (tag, body) = read_frame(&mut channel.recv).await?;
    if tag == TAG_ERROR {
        let text = String::from_utf8_lossy(&body);
        let (reason, message) = text.split_once(": ").unwrap_or(("remote", &text));
        return Err(StoreError::Remote {
            reason: reason.to_string(),
            message: message.to_string(),
        });
    }
    Ok((tag, body))
}

/// Deposits `data` in `mailbox` at `keeper`.
pub async fn deposit(
    network: &dyn Network,
    keeper: PeerId,
    mailbox: &MailboxKey,
    data: &[u8],
    ttl_seconds: u64,
) -> Result<Deposited, StoreError> {
    check_deposit(data, ttl_seconds)?;
    let mut body = mailbox.as_bytes().to_vec();
    body.extend_from_slice(&ttl_seconds.to_be_bytes());
    body.extend_from_slice(data);
    let (tag, reply) = exchange(network, keeper, TAG_DEPOSIT, &body).await?;
    let mut b = Body(&reply);
    if tag != TAG_DEPOSITED {
        return Err(StoreError::Protocol(format!(
            "unexpected mailbox reply {tag}"
        )));
    }
    let id: [u8; 32] = b.array()?;
    let expires_at = b.u64()?;
    b.end()?;
    if id != record_id(mailbox, data) {
        return Err(StoreError::Protocol(
            "keeper answered another record id".into(),
        ));
    }
    Ok(Deposited { id, expires_at })
}

/// Reads the owner's mailbox at `keeper` (at most [`MAX_FETCH_RECORDS`] records, oldest first).
pub async fn fetch(
    network: &dyn Network,
    keeper: PeerId,
    owner: &SigningKey,
) -> Result<Vec<Record>, StoreError> {
    let mailbox = MailboxKey::of(owner);
    let time = unix_now();
    let signature = owner.sign(&signed_bytes(FETCH_CONTEXT, &mailbox, &keeper, time, &[]));
    let mut body = mailbox.as_bytes().to_vec();
    body.extend_from_slice(&time.to_be_bytes());
    body.extend_from_slice(&signature.to_bytes());
    let (tag, reply) = exchange(network, keeper, TAG_FETCH, &body).await?;
    if tag != TAG_RECORDS {
        return Err(StoreError::Protocol(format!(
            "unexpected mailbox reply {tag}"
        )));
    }
    decode_records(&mailbox, &reply)
}

/// Removes records the owner has read from its mailbox at `keeper`; returns how many were removed.
pub async fn ack(
    network: &dyn Network,
    keeper: PeerId,
    owner: &SigningKey,
    ids: &[[u8; 32]],
) -> Result<u64, StoreError> {
    if ids.len() > MAX_FETCH_RECORDS {
        return Err(StoreError::Malformed(
            "acknowledging more than 64 mailbox records",
        ));
    }
    let mailbox = MailboxKey::of(owner);
    let time = unix_now();
    let signature = owner.sign(&signed_bytes(ACK_CONTEXT, &mailbox, &keeper, time, ids));
    let mut body = mailbox.as_bytes().to_vec();
    body.extend_from_slice(&time.to_be_bytes());
    body.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        body.extend_from_slice(id);
    }
    body.extend_from_slice(&signature.to_bytes());
    let (tag, reply) = exchange(network, keeper, TAG_ACK, &body).await?;
    if tag != TAG_ACKED {
        return Err(StoreError::Protocol(format!(
            "unexpected mailbox reply {tag}"
        )));
    }
    let mut b = Body(&reply);
    let removed = b.u64()?;
    b.end()?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deposits_are_bounded() {
        assert!(check_deposit(b"", 0).is_err());
        assert_eq!(check_deposit(b"x", 0).unwrap(), DEFAULT_TTL.as_secs());
        assert_eq!(check_deposit(b"x", 60).unwrap(), 60);
        assert!(check_deposit(b"x", MAX_TTL.as_secs() + 1).is_err());
        assert!(check_deposit(&vec![0; MAX_RECORD_BYTES], 0).is_ok());
        assert!(matches!(
            check_deposit(&vec![0; MAX_RECORD_BYTES + 1], 0),
            Err(StoreError::MailboxFull(_))
        ));
    }

    #[test]
    fn signed_requests_bind_keeper_time_and_ids() {
        let owner = SigningKey::from_bytes(&[7; 32]);
        let mailbox = MailboxKey::of(&owner);
        let keeper = [1u8; 32];
        let ids = [[2u8; 32]];
        let now = 1_000_000;
        let sig = owner
            .sign(&signed_bytes(ACK_CONTEXT, &mailbox, &keeper, now, &ids))
            .to_bytes();
        check_signed(ACK_CONTEXT, &mailbox, &keeper, now, &ids, &sig, now + 10).unwrap();
        // Another keeper, another time, other ids, another context, a stale time: refused.
        assert!(check_signed(ACK_CONTEXT, &mailbox, &[3; 32], now, &ids, &sig, now).is_err());
        assert!(check_signed(ACK_CONTEXT, &mailbox, &keeper, now + 1, &ids, &sig, now).is_err());
        assert!(check_signed(ACK_CONTEXT, &mailbox, &keeper, now, &[[4; 32]], &sig, now).is_err());
        assert!(check_signed(FETCH_CONTEXT, &mailbox, &keeper, now, &ids, &sig, now).is_err());
        assert!(check_signed(ACK_CONTEXT, &mailbox, &keeper, now, &ids, &sig, now + 301).is_err());
    }

    #[test]
    fn record_replies_are_checked() {
        let mailbox = MailboxKey::of(&SigningKey::from_bytes(&[9; 32]));
        let data = b"sealed".to_vec();
        let record = Record {
            id: record_id(&mailbox, &data),
            data,
            received_at: 1,
            expires_at: 2,
        };
        let encoded = encode_records(std::slice::from_ref(&record));
        assert_eq!(
            decode_records(&mailbox, &encoded).unwrap(),
            vec![record.clone()]
        );
        // A substituted record, truncation, trailing bytes: refused.
        let mut forged = encoded.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(decode_records(&mailbox, &forged).is_err());
        assert!(decode_records(&mailbox, &encoded[..encoded.len() - 1]).is_err());
        let mut longer = encoded;
        longer.push(0);
        assert!(decode_records(&mailbox, &longer).is_err());
    }
}
