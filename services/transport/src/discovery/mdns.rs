//! mDNS (stub while dns compiles).
/// Largest packet.
pub const MAX_PACKET: usize = 9000;
/// Most records.
pub const MAX_RECORDS: usize = 64;
/// x
#[derive(Debug)]
pub struct Mdns;
/// x
#[derive(Debug)]
pub struct MdnsConfig;
