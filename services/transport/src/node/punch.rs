//! Hole punching, coordinated over a connection both peers already have (through a relay).
//!
//! Both nodes serve [`PUNCH_ALPN`]. The dialler opens one bidirectional stream on a connection
//! to the peer (relayed at first) and the two exchange `Hello`s: their candidate addresses
//! (local and observed public ones) and their NAT's mapping kind. Then they punch in rounds
//! (DCUtR-style, with hyperdht's priming):
//!
//! 1. The round's initiator (the dialler in even rounds, the other side in odd ones: *roles
//!    swap* on retry) sends `Sync` and waits half the connection's round-trip time; the other
//!    side starts as soon as `Sync` arrives. Both therefore fire at about the same moment.
//! 2. Each side first sends **priming** probes with a low TTL to every candidate: they open its
//!    own NAT's mapping towards the peer but expire before the peer's NAT, so the peer's probes,
//!    arriving a moment later, find the mapping instead of creating conntrack state that would
//!    make our NAT pick another port (the conntrack race).
//! 3. Then real probes to every candidate, quickly at first and then slower, until a probe is
//!    answered (the path is *proven* by that round trip and the socket switches the peer's
//!    traffic to it) or the round times out. A probe that arrives from an address we did not
//!    know (the peer's mapping towards us, under an endpoint-dependent NAT) is probed back.
//! 4. The birthday strategy, when one side's NAT is endpoint-dependent and the other's is not:
//!    the endpoint-dependent side opens many extra sockets and sends a priming probe from each
//!    to the peer's public address, so that its NAT holds many mappings towards the peer; the
//!    endpoint-independent side sprays probes at random ports of the peer's public address. A
//!    probe that lands on one of those mappings reaches the extra socket, whose answer proves
//!    the path; QUIC to that peer then runs over that socket. (hyperdht does the same with 256
//!    sockets.) Both halves are bounded per round.
//!
//! Whoever proves a direct path says `Direct`; a side that has proven its path and heard
//! `Direct` stops. The relay stays registered as the fallback.
//!
//! Wire: each message is a type byte, a u16 body length and the body. `Hello` = mapping byte,
//! count byte (≤ [`MAX_CANDIDATES`]), addresses; `Sync` = round byte; `Direct` = empty.

use std::net::SocketAddr;
use std::time::Duration;

use super::nat::Mapping;
use crate::connection::{RecvStream, SendStream};
use crate::dht::message::{DecodeError, Reader, Writer, put_addr};
use crate::error::TransportError;

/// The ALPN of the punch coordination protocol.
pub const PUNCH_ALPN: &[u8] = b"kith/punch/1";
/// Most candidate addresses in a `Hello`.
pub const MAX_CANDIDATES: usize = 16;
/// Largest message body.
const MAX_BODY: usize = 1 + 1 + MAX_CANDIDATES * 19;

const HELLO: u8 = 1;
const SYNC: u8 = 2;
const DIRECT: u8 = 3;

/// How punching proceeds.
#[derive(Clone, Debug)]
pub struct PunchConfig {
    /// IP TTL of priming probes: enough hops to leave our NAT, too few to reach the peer's.
    /// hyperdht uses 5; a lab whose NATs are two hops apart needs 2.
    pub priming_ttl: u32,
    /// Rounds before giving up (roles swap each round).
    pub rounds: u8,
    /// How long one round probes before the next.
    pub round_timeout: Duration,
    /// Interval between probes to each candidate at the start of a round.
    pub fast_interval: Duration,
    /// How many probes are sent at the fast interval before slowing down.
    pub fast_probes: u32,
    /// Interval after the fast probes.
    pub slow_interval: Duration,
    /// Random-port probes per round against an endpoint-dependent peer (0 turns it off).
    pub spray_budget: u32,
    /// Extra sockets an endpoint-dependent side opens against an endpoint-independent peer, the
    /// other half of the birthday strategy (0 turns it off). With 256 sockets and 1024 sprayed
    /// ports a round finds a match with probability 1 − e^(−256·1024/64512) ≈ 98%.
    pub birthday_sockets: usize,
    /// Shortest time between two punch sessions with one peer (per-peer rate limit).
    pub min_interval: Duration,
    /// After every round failed, how long until the rounds start over.
    pub retry_after: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            priming_ttl: 5,
            rounds: 3,
            round_timeout: Duration::from_secs(3),
            fast_interval: Duration::from_millis(20),
            fast_probes: 15,
            slow_interval: Duration::from_millis(200),
            spray_budget: 1024,
            birthday_sockets: 256,
            min_interval: Duration::from_secs(2),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// A punch protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// My candidates and my NAT's mapping.
    Hello {
        /// How my NAT maps.
        mapping: Mapping,
        /// Where I might be reached.
        candidates: Vec<SocketAddr>,
    },
    /// Start round `round` now.
    Sync {
        /// The round.
        round: u8,
    },
    /// I have a proven direct path to you.
    Direct,
}

fn mapping_byte(mapping: Mapping) -> u8 {
    match mapping {
        Mapping::Unknown => 0,
        Mapping::NoNat => 1,
        Mapping::EndpointIndependent => 2,
        Mapping::EndpointDependent => 3,
    }
}

fn mapping_from(byte: u8) -> Result<Mapping, DecodeError> {
    Ok(match byte {
        0 => Mapping::Unknown,
        1 => Mapping::NoNat,
        2 => Mapping::EndpointIndependent,
        3 => Mapping::EndpointDependent,
        _ => return Err(DecodeError::InvalidFlag),
    })
}

impl Message {
    /// The message's bytes, header included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Writer::default();
        let kind = match self {
            Self::Hello {
                mapping,
                candidates,
            } => {
                body.u8(mapping_byte(*mapping));
                let candidates = &candidates[..candidates.len().min(MAX_CANDIDATES)];
                body.u8(candidates.len() as u8);
                for addr in candidates {
                    put_addr(&mut body, addr);
                }
                HELLO
            }
            Self::Sync { round } => {
                body.u8(*round);
                SYNC
            }
            Self::Direct => DIRECT,
        };
        let body = body.into_bytes();
        let mut bytes = Vec::with_capacity(3 + body.len());
        bytes.push(kind);
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Parses a message from its type and body.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: body };
        let message = match kind {
            HELLO => {
                let mapping = mapping_from(r.u8()?)?;
                let count = r.count(MAX_CANDIDATES, "candidates")?;
                let candidates = (0..count)
                    .map(|_| r.addr())
                    .collect::<Result<Vec<_>, _>>()?;
                Self::Hello {
                    mapping,
                    candidates,
                }
            }
            SYNC => Self::Sync { round: r.u8()? },
            DIRECT => Self::Direct,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(r.buf.len()));
        }
        Ok(message)
    }

    /// Writes the message to a stream.
    pub async fn write(&self, send: &mut SendStream) -> Result<(), TransportError> {
        send.write_all(&self.encode())
            .await
            .map_err(|e| TransportError::Protocol(format!("punch stream: {e}")))
    }

    /// Reads one message from a stream (`None` at a clean end).
    pub async fn read(recv: &mut RecvStream) -> Result<Option<Self>, TransportError> {
        let mut header = [0u8; 3];
        match recv.read_exact(&mut header).await {
            Ok(_) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(e) => return Err(TransportError::Protocol(format!("punch stream: {e}"))),
        }
        let len = u16::from_be_bytes([header[1], header[2]]) as usize;
        if len > MAX_BODY {
            return Err(TransportError::Protocol(format!(
                "punch message of {len} bytes"
            )));
        }
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body)
            .await
            .map_err(|e| TransportError::Protocol(format!("punch stream: {e}")))?;
        Self::decode(header[0], &body)
            .map(Some)
            .map_err(|e| TransportError::Protocol(format!("punch message: {e}")))
    }
}

/// Which side starts round `round`: the dialler starts even rounds, the acceptor odd ones.
pub fn initiates(round: u8, dialler: bool) -> bool {
    round.is_multiple_of(2) == dialler
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_malformed_ones_are_refused() {
        let samples = [
            Message::Hello {
                mapping: Mapping::EndpointDependent,
                candidates: vec![
                    "10.0.0.2:4000".parse().unwrap(),
                    "[2001:db8::2]:4000".parse().unwrap(),
                ],
            },
            Message::Hello {
                mapping: Mapping::Unknown,
                candidates: vec![],
            },
            Message::Sync { round: 2 },
            Message::Direct,
        ];
        for message in samples {
            let bytes = message.encode();
            let len = u16::from_be_bytes([bytes[1], bytes[2]]) as usize;
            assert_eq!(len, bytes.len() - 3);
            assert_eq!(Message::decode(bytes[0], &bytes[3..]).unwrap(), message);
            for cut in 3..bytes.len() {
                assert!(Message::decode(bytes[0], &bytes[3..cut]).is_err());
            }
        }
        assert!(Message::decode(9, &[]).is_err());
        assert!(Message::decode(HELLO, &[7, 0]).is_err(), "unknown mapping");
        assert!(
            Message::decode(HELLO, &[0, 17]).is_err(),
            "too many candidates"
        );
        assert!(Message::decode(DIRECT, &[0]).is_err(), "trailing bytes");
    }

    #[test]
    fn roles_swap_every_round() {
        assert!(initiates(0, true));
        assert!(!initiates(0, false));
        assert!(initiates(1, false));
        assert!(!initiates(1, true));
        assert!(initiates(2, true));
    }
}
