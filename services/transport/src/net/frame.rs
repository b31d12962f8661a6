//! The datagrams that share the node's UDP socket with QUIC, and how they are told apart.
//!
//! **Demultiplexing.** Every QUIC packet has the high bit (long header) or the "fixed bit" 0x40
//! (short header) set in its first byte (RFC 9000 §17; Kith endpoints never advertise
//! `grease_quic_bit`, so peers never clear it). Every Kith datagram starts with a kind byte below
//! 0x40, so one look at the first byte sends a datagram to quinn or to the node:
//!
//! | first byte | what |
//! |---|---|
//! | `0x01` | a DHT message ([`crate::dht::DhtMessage`], whose version byte is 1) |
//! | `0x10` / `0x11` | a path probe and its answer (hole punching, path checks, address discovery) |
//! | `0x20` – `0x24` | relaying: register, registered, forward, deliver, refused |
//! | `0x40` – `0xff` | QUIC |
//!
//! Layouts (integers big-endian; an address is a family byte 4|6, the IP and a u16 port):
//!
//! ```text
//! Probe            0x10 | nonce u64 | sender key 32 | zero padding to 64 bytes
//! ProbeAck         0x11 | nonce u64 | sender key 32 | observed address | zero padding to 64
//! RelayRegister    0x20 | relay key 32 | peer key 32 | unix ms u64 | ed25519 signature 64
//! RelayRegistered  0x21 | observed address | lifetime seconds u16
//! RelayForward     0x22 | destination key 32 | payload (a QUIC packet)
//! RelayDeliver     0x23 | source key 32 | payload (a QUIC packet)
//! RelayRefused     0x24 | reason u8
//! ```
//!
//! No answer is larger than what it answers: a probe is padded to the size of its answer, and a
//! relay only answers registers (137 bytes) and forwards (at least 33 bytes) with frames no larger.
//! Decoding is total: any bytes give a [`Frame`] or a [`DecodeError`], never a panic.

use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::dht::message::{DecodeError, Reader, Writer, put_addr};
use crate::peer::{PeerId, SecretKey};

/// Kind byte of a DHT message.
pub const KIND_DHT: u8 = 0x01;
/// Kind byte of [`Frame::Probe`].
pub const KIND_PROBE: u8 = 0x10;
/// Kind byte of [`Frame::ProbeAck`].
pub const KIND_PROBE_ACK: u8 = 0x11;
/// Kind byte of [`Frame::RelayRegister`].
pub const KIND_RELAY_REGISTER: u8 = 0x20;
/// Kind byte of [`Frame::RelayRegistered`].
pub const KIND_RELAY_REGISTERED: u8 = 0x21;
/// Kind byte of [`Frame::RelayForward`].
pub const KIND_RELAY_FORWARD: u8 = 0x22;
/// Kind byte of [`Frame::RelayDeliver`].
pub const KIND_RELAY_DELIVER: u8 = 0x23;
/// Kind byte of [`Frame::RelayRefused`].
pub const KIND_RELAY_REFUSED: u8 = 0x24;

/// Size of a probe and of its answer, padding included.
pub const PROBE_LEN: usize = 64;
/// Bytes a relay frame adds in front of the QUIC packet it carries.
pub const RELAY_HEADER_LEN: usize = 33;
/// Largest QUIC packet a relay carries. QUIC's own packets are capped below this (see
/// [`crate::EndpointOptions`]) so that a relayed packet still fits a 1500-byte Ethernet frame.
pub const MAX_RELAY_PAYLOAD: usize = 1472 - RELAY_HEADER_LEN;
/// Length of a [`Frame::RelayRegister`].
pub const REGISTER_LEN: usize = 1 + 32 + 32 + 8 + 64;

/// Domain separation for relay registrations.
const REGISTER_CONTEXT: &[u8] = b"kith-relay-register-v1\0";

/// Whether a datagram is QUIC (as opposed to one of Kith's own frames).
pub fn is_quic(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xc0 != 0)
}

/// Why a relay refused a frame.
pub mod refusal {
    /// The registration's signature, relay key or clock was wrong, or it was replayed.
    pub const BAD_REGISTRATION: u8 = 1;
    /// The sender is not registered (or registered from another address).
    pub const NOT_REGISTERED: u8 = 2;
    /// The destination is not registered with this relay.
    pub const UNKNOWN_DESTINATION: u8 = 3;
    /// The relay is full or the sender is over its rate limit.
    pub const OVER_LIMIT: u8 = 4;
}

/// One of Kith's own datagrams (everything but QUIC and the DHT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// "Can you hear me on this path?" Punching, path checks and address discovery.
    Probe {
        /// Random; the answer echoes it.
        nonce: u64,
        /// Who is probing.
        sender: PeerId,
    },
    /// "Yes: this is the address your probe came from."
    ProbeAck {
        /// The probe's nonce.
        nonce: u64,
        /// Who answers.
        sender: PeerId,
        /// The probe's source address as the answerer saw it.
        observed: SocketAddr,
    },
    /// "Relay for me; I am `peer`, at the address this comes from."
    RelayRegister(RelayRegistration),
    /// "Registered; renew within `lifetime_secs`."
    RelayRegistered {
        /// The registering socket's address as the relay saw it.
        observed: SocketAddr,
        /// How long the registration lasts unless renewed.
        lifetime_secs: u16,
    },
    /// "Pass this QUIC packet on to `to`." (client to relay)
    RelayForward {
        /// The destination peer, registered with the relay.
        to: PeerId,
        /// An encrypted QUIC packet.
        payload: Vec<u8>,
    },
    /// "`from` sent you this QUIC packet." (relay to client)
    RelayDeliver {
        /// The peer the relay received it from (the QUIC handshake proves it independently).
        from: PeerId,
        /// An encrypted QUIC packet.
        payload: Vec<u8>,
    },
    /// "I will not do that"; one of [`refusal`].
    RelayRefused {
        /// Why.
        reason: u8,
    },
}

/// A signed request to be relayed for: `peer` proves its key to `relay` at a point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRegistration {
    /// The relay it is meant for (a registration cannot be replayed to another relay).
    pub relay: PeerId,
    /// The registering peer.
    pub peer: PeerId,
    /// When it was made, in unix milliseconds (relays refuse stale and replayed ones).
    pub unix_ms: u64,
    /// `peer`'s signature over the context, `relay`, `peer` and `unix_ms`.
    pub signature: [u8; 64],
}

impl RelayRegistration {
    fn signed_bytes(relay: &PeerId, peer: &PeerId, unix_ms: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(REGISTER_CONTEXT.len() + 72);
        bytes.extend_from_slice(REGISTER_CONTEXT);
        bytes.extend_from_slice(relay.as_bytes());
        bytes.extend_from_slice(peer.as_bytes());
        bytes.extend_from_slice(&unix_ms.to_be_bytes());
        bytes
    }

    /// A registration of `secret`'s peer with `relay`, made at `unix_ms`.
    pub fn sign(secret: &SecretKey, relay: PeerId, unix_ms: u64) -> Self {
        let peer = secret.peer_id();
        let signing = SigningKey::from_bytes(&secret.to_bytes());
        let signature = signing
            .sign(&Self::signed_bytes(&relay, &peer, unix_ms))
            .to_bytes();
        Self {
            relay,
            peer,
            unix_ms,
            signature,
        }
    }

    /// Whether the signature is `peer`'s.
    pub fn verify(&self) -> bool {
        self.peer
            .verifying_key()
            .verify_strict(
                &Self::signed_bytes(&self.relay, &self.peer, self.unix_ms),
                &Signature::from_bytes(&self.signature),
            )
            .is_ok()
    }
}

impl Frame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Self::Probe { nonce, sender } => {
                w.u8(KIND_PROBE);
                w.u64(*nonce);
                w.bytes(sender.as_bytes());
            }
            Self::ProbeAck {
                nonce,
                sender,
                observed,
            } => {
                w.u8(KIND_PROBE_ACK);
                w.u64(*nonce);
                w.bytes(sender.as_bytes());
                put_addr(&mut w, observed);
            }
            Self::RelayRegister(r) => {
                w.u8(KIND_RELAY_REGISTER);
                w.bytes(r.relay.as_bytes());
                w.bytes(r.peer.as_bytes());
                w.u64(r.unix_ms);
                w.bytes(&r.signature);
            }
            Self::RelayRegistered {
                observed,
                lifetime_secs,
            } => {
                w.u8(KIND_RELAY_REGISTERED);
                put_addr(&mut w, observed);
                w.bytes(&lifetime_secs.to_be_bytes());
            }
            Self::RelayForward { to, payload } => {
                return relay_frame(KIND_RELAY_FORWARD, to, payload);
            }
            Self::RelayDeliver { from, payload } => {
                return relay_frame(KIND_RELAY_DELIVER, from, payload);
            }
            Self::RelayRefused { reason } => {
                w.u8(KIND_RELAY_REFUSED);
                w.u8(*reason);
            }
        }
        let mut bytes = w.into_bytes();
        if matches!(self, Self::Probe { .. } | Self::ProbeAck { .. }) {
            bytes.resize(PROBE_LEN, 0);
        }
        bytes
    }

    /// Parses a datagram that is not QUIC and not a DHT message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: bytes };
        let kind = r.u8()?;
        let frame = match kind {
            KIND_PROBE | KIND_PROBE_ACK => {
                if bytes.len() != PROBE_LEN {
                    return Err(if bytes.len() < PROBE_LEN {
                        DecodeError::Truncated
                    } else {
                        DecodeError::TrailingBytes(bytes.len() - PROBE_LEN)
                    });
                }
                let nonce = r.u64()?;
                let sender = r.peer()?;
                let frame = if kind == KIND_PROBE {
                    Self::Probe { nonce, sender }
                } else {
                    Self::ProbeAck {
                        nonce,
                        sender,
                        observed: r.addr()?,
                    }
                };
                if r.buf.iter().any(|b| *b != 0) {
                    return Err(DecodeError::InvalidPadding);
                }
                r.buf = &[];
                frame
            }
            KIND_RELAY_REGISTER => Self::RelayRegister(RelayRegistration {
                relay: r.peer()?,
                peer: r.peer()?,
                unix_ms: r.u64()?,
                signature: r.array()?,
            }),
            KIND_RELAY_REGISTERED => Self::RelayRegistered {
                observed: r.addr()?,
                lifetime_secs: u16::from_be_bytes(r.array()?),
            },
            KIND_RELAY_FORWARD | KIND_RELAY_DELIVER => {
                let (peer, payload) = split_relay_frame(bytes)?;
                r.buf = &[];
                if kind == KIND_RELAY_FORWARD {
                    Self::RelayForward {
                        to: peer,
                        payload: payload.to_vec(),
                    }
                } else {
                    Self::RelayDeliver {
                        from: peer,
                        payload: payload.to_vec(),
                    }
                }
            }
            KIND_RELAY_REFUSED => Self::RelayRefused { reason: r.u8()? },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(r.buf.len()));
        }
        Ok(frame)
    }
}

/// Builds a relay forward or deliver frame around a QUIC packet without an intermediate copy.
pub fn relay_frame(kind: u8, peer: &PeerId, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RELAY_HEADER_LEN + payload.len());
    bytes.push(kind);
    bytes.extend_from_slice(peer.as_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Splits a relay forward or deliver frame into its peer and its QUIC packet, borrowing: the hot
/// path of relaying and of receiving relayed packets.
pub fn split_relay_frame(bytes: &[u8]) -> Result<(PeerId, &[u8]), DecodeError> {
    if bytes.len() < RELAY_HEADER_LEN + 1 {
        return Err(DecodeError::Truncated);
    }
    let payload = &bytes[RELAY_HEADER_LEN..];
    if payload.len() > MAX_RELAY_PAYLOAD {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if !is_quic(payload) {
        return Err(DecodeError::InvalidFlag);
    }
    let peer =
        PeerId::from_slice(&bytes[1..RELAY_HEADER_LEN]).map_err(|_| DecodeError::InvalidKey)?;
    Ok((peer, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        let secret = SecretKey::from_bytes([7; 32]);
        let relay = SecretKey::from_bytes([9; 32]).peer_id();
        let quic = {
            let mut p = vec![0x40u8; 1200];
            p[1] = 3;
            p
        };
        vec![
            Frame::Probe {
                nonce: 42,
                sender: secret.peer_id(),
            },
            Frame::ProbeAck {
                nonce: 42,
                sender: relay,
                observed: "[2001:db8::1]:4433".parse().unwrap(),
            },
            Frame::ProbeAck {
                nonce: u64::MAX,
                sender: relay,
                observed: "203.0.113.9:1".parse().unwrap(),
            },
            Frame::RelayRegister(RelayRegistration::sign(&secret, relay, 1_700_000_000_000)),
            Frame::RelayRegistered {
                observed: "198.51.100.1:9000".parse().unwrap(),
                lifetime_secs: 60,
            },
            Frame::RelayForward {
                to: relay,
                payload: quic.clone(),
            },
            Frame::RelayDeliver {
                from: secret.peer_id(),
                payload: quic,
            },
            Frame::RelayRefused {
                reason: refusal::OVER_LIMIT,
            },
        ]
    }

    #[test]
    fn every_frame_round_trips_and_is_not_mistaken_for_quic() {
        for frame in samples() {
            let bytes = frame.encode();
            assert!(!is_quic(&bytes), "{frame:?}");
            assert_eq!(Frame::decode(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn answers_are_never_larger_than_what_they_answer() {
        let probe = Frame::Probe {
            nonce: 1,
            sender: SecretKey::from_bytes([1; 32]).peer_id(),
        };
        let ack = Frame::ProbeAck {
            nonce: 1,
            sender: SecretKey::from_bytes([2; 32]).peer_id(),
            observed: "[2001:db8::ffff]:65535".parse().unwrap(),
        };
        assert_eq!(probe.encode().len(), PROBE_LEN);
        assert_eq!(ack.encode().len(), PROBE_LEN);
        let registered = Frame::RelayRegistered {
            observed: "[2001:db8::ffff]:65535".parse().unwrap(),
            lifetime_secs: 1,
        };
        assert!(registered.encode().len() <= REGISTER_LEN);
        let refused = Frame::RelayRefused { reason: 1 };
        assert!(refused.encode().len() <= RELAY_HEADER_LEN + 1);
    }

    #[test]
    fn registrations_verify_only_as_signed() {
        let secret = SecretKey::from_bytes([3; 32]);
        let relay = SecretKey::from_bytes([4; 32]).peer_id();
        let good = RelayRegistration::sign(&secret, relay, 1000);
        assert!(good.verify());
        let mut later = good.clone();
        later.unix_ms += 1;
        assert!(!later.verify());
        let mut other_relay = good.clone();
        other_relay.relay = secret.peer_id();
        assert!(!other_relay.verify());
        let mut forged = good;
        forged.signature[10] ^= 1;
        assert!(!forged.verify());
    }

    #[test]
    fn malformed_frames_are_refused_without_panicking() {
        for frame in samples() {
            let bytes = frame.encode();
            // A relay frame's payload runs to the end of the datagram: any cut that keeps one
            // byte of QUIC is still a (shorter) frame, and QUIC itself rejects the packet.
            let shortest = match frame {
                Frame::RelayForward { .. } | Frame::RelayDeliver { .. } => RELAY_HEADER_LEN + 1,
                _ => bytes.len(),
            };
            for cut in 0..shortest {
                assert!(
                    Frame::decode(&bytes[..cut]).is_err(),
                    "{frame:?} cut at {cut}"
                );
            }
        }
        let mut padded = samples()[0].encode();
        padded[63] = 1;
        assert_eq!(Frame::decode(&padded), Err(DecodeError::InvalidPadding));
        // A relay frame must carry QUIC and at most one Ethernet frame's worth of it.
        let peer = SecretKey::from_bytes([5; 32]).peer_id();
        let not_quic = relay_frame(KIND_RELAY_FORWARD, &peer, &[0x01; 100]);
        assert!(Frame::decode(&not_quic).is_err());
        let huge = relay_frame(
            KIND_RELAY_FORWARD,
            &peer,
            &vec![0x40; MAX_RELAY_PAYLOAD + 1],
        );
        assert!(matches!(
            Frame::decode(&huge),
            Err(DecodeError::TooLarge(_))
        ));
        assert_eq!(Frame::decode(&[0x3f]), Err(DecodeError::UnknownKind(0x3f)));
        let mut rng = rand::thread_rng();
        for _ in 0..20_000 {
            let len = rand::Rng::gen_range(&mut rng, 0..200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rand::Rng::r#gen(&mut rng)).collect();
            if let Some(first) = bytes.first_mut() {
                *first = [KIND_PROBE, KIND_PROBE_ACK, 0x20, 0x21, 0x22, 0x23, 0x24][len % 7];
            }
            let _ = Frame::decode(&bytes);
        }
    }
}
