//! The one place where the transport creates its UDP socket.
//!
//! Kith uses ONE UDP socket for everything: QUIC, the DHT's messages, the hole-punching probes
//! and relaying, so that the mapping a NAT shows the DHT (and that other peers learn and punch
//! towards) is exactly the one QUIC traffic uses. Every socket the transport binds is made here
//! and nowhere else, and shared through [`crate::net::MuxSocket`]. Bound to `[::]` it is
//! dual-stack: one socket, one port, for IPv4 and IPv6.

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::debug;

use crate::error::TransportError;

/// Creates and binds the endpoint's UDP socket, asking the kernel for `buffer_bytes` of send and
/// receive buffer (it may grant less: Linux caps requests at `net.core.{r,w}mem_max`).
///
/// Larger buffers absorb bursts at high throughput, where the default (~200 KiB) drops packets
/// that QUIC then has to retransmit. A refused size is not an error: the socket still works.
pub fn bind_udp_socket(addr: SocketAddr, buffer_bytes: usize) -> Result<UdpSocket, TransportError> {
    let bind_error = |source| TransportError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_error)?;
    if addr.is_ipv6() {
        // Explicit, so that behaviour does not depend on the host's bindv6only setting: `[::]`
        // is dual-stack (one socket for both families, IPv4 peers appear as IPv4-mapped), a
        // specific IPv6 address is IPv6 only.
        socket
            .set_only_v6(!addr.ip().is_unspecified())
            .map_err(bind_error)?;
    }
    if buffer_bytes > 0 {
        if let Err(error) = socket.set_recv_buffer_size(buffer_bytes) {
            debug!(%error, "udp receive buffer not raised");
        }
        if let Err(error) = socket.set_send_buffer_size(buffer_bytes) {
            debug!(%error, "udp send buffer not raised");
        }
    }
    socket.bind(&addr.into()).map_err(bind_error)?;
    debug!(
        %addr,
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "udp socket bound"
    );
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_an_ephemeral_loopback_port_with_larger_buffers() {
        let socket = bind_udp_socket("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        let addr = socket.local_addr().unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        let socket = Socket::from(socket);
        // Linux doubles the request for bookkeeping and caps it at rmem_max; whatever it grants
        // must not be below the ~200 KiB default.
        assert!(socket.recv_buffer_size().unwrap() >= 200 * 1024);
    }

    #[test]
    fn the_unspecified_ipv6_address_is_dual_stack() {
        let socket = bind_udp_socket("[::]:0".parse().unwrap(), 0).unwrap();
        let port = socket.local_addr().unwrap().port();
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.send_to(b"over v4", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 16];
        let (len, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"over v4");
        assert_eq!(from.ip().to_canonical(), v4.local_addr().unwrap().ip());
    }

    #[test]
    fn a_taken_port_is_a_bind_error() {
        let first = bind_udp_socket("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let addr = first.local_addr().unwrap();
        assert!(matches!(
            bind_udp_socket(addr, 0),
            Err(TransportError::Bind { .. })
        ));
    }
}
