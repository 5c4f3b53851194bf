//! The UDP side of QUIC, for the relay and the connector alike: socket buffer sizes
//! ([`size_buffers`]), the largest datagram a session probes for and accepts ([`MAX_UDP_PAYLOAD`],
//! [`endpoint_config`], [`mtu_discovery`]), and the socket under a QUIC client endpoint, degraded
//! where the network stack refuses one of the options quinn-udp sets.
//!
//! quinn-udp sets up every socket in one go: on Windows don't-fragment, packet info and ECN
//! reporting (`IP_RECVECN`/`IPV6_RECVECN`) for both address families, and it reads
//! `IPV6_V6ONLY` even on IPv4 sockets. If any of these fails the endpoint cannot be created at all,
//! and the connector would fall back to TLS over TCP although UDP works. Wine 8 (used to run the
//! Windows connector in CI) refuses `IP_RECVECN` with `WSAENOPROTOOPT` (10042) and the
//! `IPV6_V6ONLY` read on an IPv4 socket with `WSAEOPNOTSUPP` (10045); some hardened kernels and
//! sandboxes refuse options the same way.
//!
//! [`client_endpoint`] therefore checks quinn-udp's set-up first. When it fails only because an
//! option is unsupported, the endpoint runs on [`PlainUdpSocket`]: plain `send_to`/`recv_from`,
//! one datagram per call, no ECN marks read or written, no don't-fragment (quinn then keeps to its
//! 1200-byte initial datagrams instead of probing the path MTU). QUIC itself, its congestion
//! control and loss recovery are unchanged; only ECN feedback and larger datagrams are lost.
//! Every other error (no UDP at all, no address) is returned as before.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{
    AsyncUdpSocket, Endpoint, EndpointConfig, MtuDiscoveryConfig, Runtime, TokioRuntime, UdpPoller,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::ReadBuf;
use tracing::{debug, warn};

/// Binds a client endpoint on `addr` (dual-stack when `addr` is IPv6, as `Endpoint::client`
/// does), on quinn-udp's socket where the system accepts its options and on a
/// [`PlainUdpSocket`] where it refuses one of them. Needs a tokio runtime.
pub fn client_endpoint(addr: SocketAddr) -> io::Result<Endpoint> {
    let socket = bind(addr)?;
    let (endpoint, _) = wrap(socket, |s| UdpSocketState::new(s.into()).map(drop))?;
    Ok(endpoint)
}

/// The largest UDP payload a session accepts, and on Linux the upper bound of path MTU
/// discovery ([`MTU_UPPER_BOUND`]).
///
/// quinn starts at 1200 bytes and probes upwards. Where the path carries no more than Ethernet's
/// 1500 bytes (most of the internet) it settles just under it (1,466 bytes of payload over IPv4,
/// 1,446 over IPv6, after a few lost probes), and where it carries more (jumbo frames in a data
/// centre or a cloud network, loopback) it sends fewer, larger packets: per-packet work
/// (encryption, acknowledgements, system calls) is most of what a bulk transfer costs. Not
/// higher: quinn hands the kernel up to 10 datagrams in one segmentation-offload call (its
/// private `MAX_TRANSMIT_SEGMENTS`), and Linux refuses a call over 65,507 bytes of payload
/// (EMSGSIZE) and with it every datagram in it. With a bound of 8952 that lost whole batches
/// during a download, quinn took the losses for a black hole in the path and fell back to
/// 1200-byte packets for a minute.
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

// 10 datagrams of MAX_UDP_PAYLOAD in one call stay under the kernel's limit (IPv4 payload; IPv6,
// 65,527, is larger).
const _: () = assert!(MAX_UDP_PAYLOAD as usize * 10 <= 65_507);

/// How far path MTU discovery probes. [`MAX_UDP_PAYLOAD`] on Linux; quinn's default (1452)
/// elsewhere: Windows logs every probe larger than the network card's MTU as a send error (a
/// warning per session each time it probes), and macOS does not forbid fragmentation on the
/// connector's dual-stack socket, so large probes would pass in fragments.
pub const MTU_UPPER_BOUND: u16 = if cfg!(any(target_os = "linux", target_os = "android")) {
    MAX_UDP_PAYLOAD
} else {
    1_452
};

/// What the socket buffers of a session's UDP socket are set to, each way. Linux's default
/// (208 KiB) overflowed during a 1 GiB download on loopback, about 1,000 dropped datagrams
/// per run, each a loss that shrinks the congestion window. The kernel caps the receive size
/// at `net.core.rmem_max` (and the send size at `net.core.wmem_max`) without an error.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Whether `granted`, as [`size_buffers`] returned it, is less than [`SOCKET_BUFFER_BYTES`]:
/// Linux reports twice the size set (it counts its own bookkeeping), other systems the size.
pub fn buffer_capped(granted: usize) -> bool {
    let factor = if cfg!(any(target_os = "linux", target_os = "android")) {
        2
    } else {
        1
    };
    granted < SOCKET_BUFFER_BYTES * factor
}

/// The endpoint configuration of both ends of a session, and of the node link: datagrams up to
/// [`MAX_UDP_PAYLOAD`] are accepted (the peer learns it as `max_udp_payload_size`).
pub fn endpoint_config() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's bounds");
    config
}

/// Path MTU discovery up to [`MTU_UPPER_BOUND`], quinn's defaults otherwise.
pub fn mtu_discovery() -> MtuDiscoveryConfig {
    let mut config = MtuDiscoveryConfig::default();
    config.upper_bound(MTU_UPPER_BOUND);
    config
}

/// Asks for [`SOCKET_BUFFER_BYTES`] of socket buffer each way on `socket`, and returns the
/// receive buffer the kernel reports (`None` where it cannot say; on Linux twice the size set,
/// see [`buffer_capped`]). Best effort: a socket that refuses keeps its default.
pub fn size_buffers(socket: &std::net::UdpSocket) -> Option<usize> {
    let socket = socket2::SockRef::from(socket);
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        debug!(error = %e, "cannot set the UDP receive buffer size");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        debug!(error = %e, "cannot set the UDP send buffer size");
    }
    let granted = socket.recv_buffer_size().ok();
    debug!(?granted, send = ?socket.send_buffer_size().ok(), "UDP socket buffers");
    granted
}

/// Whether `e` says a socket option is not supported (as opposed to UDP not working at all).
pub fn is_unsupported_option(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::Unsupported {
        return true;
    }
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    if cfg!(windows) {
        code == WSAENOPROTOOPT || code == WSAEOPNOTSUPP
    } else if cfg!(any(target_os = "linux", target_os = "android")) {
        code == LINUX_ENOPROTOOPT || code == LINUX_EOPNOTSUPP
    } else {
        false
    }
}

/// A UDP socket for quinn without any socket options or ancillary data: one datagram per
/// `send_to`/`recv_from`, no ECN, may fragment. See the module docs for when it is used.
pub struct PlainUdpSocket {
    io: tokio::net::UdpSocket,
}

impl PlainUdpSocket {
    /// Wraps a bound socket. Needs a tokio runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<PlainUdpSocket> {
        socket.set_nonblocking(true)?;
        Ok(PlainUdpSocket {
            io: tokio::net::UdpSocket::from_std(socket)?,
        })
    }
}

/// Binds like `quinn::Endpoint::client`: IPv6 sockets are made dual-stack where possible.
fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        if let Err(e) = socket.set_only_v6(false) {
            debug!(error = %e, "cannot make the UDP socket dual-stack");
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The endpoint on `socket`; `probe` is quinn-udp's set-up (a parameter so tests can make it
/// fail). Also says whether the plain socket is in use.
fn wrap(
    socket: std::net::UdpSocket,
    probe: impl FnOnce(&std::net::UdpSocket) -> io::Result<()>,
) -> io::Result<(Endpoint, bool)> {
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let _ = size_buffers(&socket);
    let (socket, plain): (Arc<dyn AsyncUdpSocket>, bool) = match probe(&socket) {
        // quinn-udp applies its options again here: setting them twice is harmless.
        Ok(()) => (runtime.wrap_udp_socket(socket)?, false),
        Err(e) if is_unsupported_option(&e) => {
            warn!(
                error = %e,
                "the UDP socket refuses an option quinn-udp sets (ECN reporting under Wine): \
                 QUIC runs on a plain UDP socket, without ECN and with 1200-byte datagrams"
            );
            (Arc::new(PlainUdpSocket::new(socket)?), true)
        }
        Err(e) => return Err(e),
    };
    let endpoint = Endpoint::new_with_abstract_socket(endpoint_config(), None, socket, runtime)?;
    Ok((endpoint, plain))
}

/// Windows: `WSAENOPROTOOPT`, an unknown option.
const WSAENOPROTOOPT: i32 = 10042;
/// Windows: `WSAEOPNOTSUPP`, an option not supported for this socket.
const WSAEOPNOTSUPP: i32 = 10045;
/// Linux: `ENOPROTOOPT`.
const LINUX_ENOPROTOOPT: i32 = 92;
/// Linux: `EOPNOTSUPP`.
const LINUX_EOPNOTSUPP: i32 = 95;

// === impl PlainUdpSocket ===

impl AsyncUdpSocket for PlainUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller {
            socket: self,
            fut: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        // `max_transmit_segments` is 1, so `contents` is one datagram.
        match self.io.try_send_to(transmit.contents, transmit.destination) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // As quinn-udp does: a failed send is a lost datagram, which QUIC recovers from.
            Err(e) => {
                debug!(error = %e, destination = %transmit.destination, "UDP send failed");
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut read = ReadBuf::new(buf);
        let addr = match self.io.poll_recv_from(cx, &mut read) {
            Poll::Ready(Ok(addr)) => addr,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let len = read.filled().len();
        *slot = RecvMeta {
            addr,
            len,
            stride: len,
            ecn: None,
            dst_ip: None,
        };
        Poll::Ready(Ok(1))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

impl fmt::Debug for PlainUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainUdpSocket")
            .field("local_addr", &self.io.local_addr().ok())
            .finish()
    }
}

/// Waits for write readiness with its own waker, so that several connections can wait at once.
struct WritablePoller {
    socket: Arc<PlainUdpSocket>,
    fut: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
}

impl UdpPoller for WritablePoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = self.socket.clone();
        let fut = self
            .fut
            .get_or_insert_with(|| Box::pin(async move { socket.io.writable().await }));
        let ready = fut.as_mut().poll(cx);
        if ready.is_ready() {
            self.fut = None;
        }
        ready
    }
}

impl fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritablePoller").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_unsupported_options_from_other_failures() {
        let code = if cfg!(windows) {
            WSAENOPROTOOPT
        } else {
            LINUX_ENOPROTOOPT
        };
        assert!(is_unsupported_option(&io::Error::from_raw_os_error(code)));
        let code = if cfg!(windows) {
            WSAEOPNOTSUPP
        } else {
            LINUX_EOPNOTSUPP
        };
        assert!(is_unsupported_option(&io::Error::from_raw_os_error(code)));
        assert!(is_unsupported_option(&io::Error::from(
            io::ErrorKind::Unsupported
        )));
        assert!(!is_unsupported_option(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
        assert!(!is_unsupported_option(&io::Error::from(
            io::ErrorKind::AddrNotAvailable
        )));
    }

    #[tokio::test]
    async fn other_set_up_errors_are_returned() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = wrap(socket, |_| Err(io::ErrorKind::PermissionDenied.into())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[tokio::test]
    async fn the_system_socket_is_used_where_options_work() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (_endpoint, plain) = wrap(socket, |s| UdpSocketState::new(s.into()).map(drop)).unwrap();
        assert!(!plain);
    }

    /// A QUIC connection whose client runs on the plain socket (as under Wine) carries 1 MiB both
    /// ways, from the dual-stack socket to an IPv4 server.
    #[tokio::test]
    async fn quic_works_on_the_plain_socket() {
        let (server, server_addr, cert) = server();
        let socket = bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)))
            .or_else(|_| bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))))
            .unwrap();
        let (client, plain) = wrap(socket, |_| Err(refused())).unwrap();
        assert!(plain);

        let echo = tokio::spawn(async move {
            let incoming = server.accept().await.expect("incoming");
            let conn = incoming.await.expect("handshake");
            let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
            let data = recv.read_to_end(4 << 20).await.expect("read");
            send.write_all(&data).await.expect("write");
            send.finish().expect("finish");
            conn.closed().await;
        });

        let mut roots = quinn::rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        let conn = client
            .connect_with(client_config, server_addr, "localhost")
            .unwrap()
            .await
            .expect("handshake over the plain socket");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let back = recv.read_to_end(4 << 20).await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the echo differs");
        conn.close(0u32.into(), b"done");
        client.wait_idle().await;
        echo.await.unwrap();
    }

    /// Over loopback (MTU 64 KiB) a bulk transfer each way climbs to large datagrams and stays
    /// there: no batch of them is refused by the kernel, so quinn never sees a black hole. With
    /// an upper bound of 8952 this failed: batches over 64 KiB were refused, and the connection
    /// fell back to 1200-byte datagrams.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bulk_transfers_use_large_datagrams_where_the_path_allows() {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = generated.cert.der().clone();
        let key = quinn::rustls::pki_types::PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        );
        let transport = || {
            let mut t = quinn::TransportConfig::default();
            t.mtu_discovery_config(Some(mtu_discovery()));
            Arc::new(t)
        };
        let mut server_config =
            quinn::ServerConfig::with_single_cert(vec![cert.clone()], key.into()).unwrap();
        server_config.transport_config(transport());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let granted = size_buffers(&socket).expect("the receive buffer size");
        if buffer_capped(granted) {
            // With a small receive buffer the burst overflows it, and real losses may look like
            // a black hole: what this test checks needs the buffer the relay asks for.
            // `the_largest_batch_quinn_builds_is_accepted` still checks the batch size.
            eprintln!("skipped: net.core.rmem_max caps the UDP receive buffer ({granted} bytes)");
            return;
        }
        let server = Endpoint::new(
            endpoint_config(),
            Some(server_config),
            socket,
            Arc::new(TokioRuntime),
        )
        .unwrap();
        let server_addr = server.local_addr().unwrap();
        const SIZE: usize = 48 << 20;

        // The server sends SIZE bytes down, then reads SIZE bytes up.
        let serve = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..SIZE / chunk.len() {
                send.write_all(&chunk).await.unwrap();
            }
            send.finish().unwrap();
            let mut up = 0;
            while let Some(c) = recv.read_chunk(usize::MAX, true).await.unwrap() {
                up += c.bytes.len();
            }
            assert_eq!(up, SIZE);
            (conn, server)
        });

        let client = client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut roots = quinn::rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client_config =
            quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        client_config.transport_config(transport());
        let conn = client
            .connect_with(client_config, server_addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"go").await.unwrap();
        let mut down = 2;
        while let Some(c) = recv.read_chunk(usize::MAX, true).await.unwrap() {
            down += c.bytes.len();
        }
        assert_eq!(down, SIZE + 2);
        let chunk = vec![9u8; 64 * 1024];
        for _ in 0..(SIZE - 2) / chunk.len() {
            send.write_all(&chunk).await.unwrap();
        }
        send.write_all(&chunk[..(SIZE - 2) % chunk.len()])
            .await
            .unwrap();
        send.finish().unwrap();
        let (server_conn, _server) = serve.await.unwrap();

        for (side, stats) in [("server", server_conn.stats()), ("client", conn.stats())] {
            let path = stats.path;
            assert!(
                path.current_mtu > 4 * 1452,
                "{side}: path MTU {} (probes sent {}, lost {})",
                path.current_mtu,
                path.sent_plpmtud_probes,
                path.lost_plpmtud_probes
            );
            assert!(path.current_mtu <= MAX_UDP_PAYLOAD);
            assert_eq!(path.black_holes_detected, 0, "{side}: {path:?}");
        }
        conn.close(0u32.into(), b"done");
        client.wait_idle().await;
    }

    /// The largest batch quinn can hand the kernel, 10 datagrams of [`MAX_UDP_PAYLOAD`] in one
    /// segmentation-offload call, is accepted on loopback over IPv4, IPv6 and a v4-mapped
    /// address (from a dual-stack socket, as the connector's). One datagram more is refused
    /// (EMSGSIZE), which shows the test reaches the limit it guards.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_largest_batch_quinn_builds_is_accepted() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let payload = usize::from(MAX_UDP_PAYLOAD);
        let batch = vec![0u8; payload * 11];
        let receivers: Vec<std::net::UdpSocket> = [
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        ]
        .into_iter()
        .filter_map(|a| std::net::UdpSocket::bind(a).ok())
        .collect();
        assert!(!receivers.is_empty());
        let sender = bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
            .or_else(|_| bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
            .unwrap();
        let state = UdpSocketState::new((&sender).into()).unwrap();
        if state.max_gso_segments() < 10 {
            eprintln!("skipped: no segmentation offload here");
            return;
        }
        let dual_stack = sender.local_addr().unwrap().is_ipv6();
        let mut destinations = Vec::new();
        for receiver in &receivers {
            match receiver.local_addr().unwrap() {
                SocketAddr::V4(v4) if dual_stack => {
                    destinations.push(SocketAddr::V4(v4));
                    destinations.push(SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())));
                }
                SocketAddr::V6(_) if !dual_stack => {}
                to => destinations.push(to),
            }
        }
        for destination in destinations {
            let send = |datagrams: usize| {
                state.try_send(
                    (&sender).into(),
                    &quinn::udp::Transmit {
                        destination,
                        ecn: None,
                        contents: &batch[..payload * datagrams],
                        segment_size: Some(payload),
                        src_ip: None,
                    },
                )
            };
            send(10).unwrap_or_else(|e| panic!("10 x {payload} to {destination}: {e}"));
            let refused = send(11).expect_err("11 datagrams are over the limit");
            assert_eq!(refused.raw_os_error(), Some(90), "EMSGSIZE: {refused}");
        }
    }

    /// The error Wine gives for `IP_RECVECN`, in this platform's numbering.
    fn refused() -> io::Error {
        io::Error::from_raw_os_error(if cfg!(windows) {
            WSAENOPROTOOPT
        } else {
            LINUX_ENOPROTOOPT
        })
    }

    /// A QUIC server on 127.0.0.1 with a fresh self-signed certificate for `localhost`.
    fn server() -> (
        Endpoint,
        SocketAddr,
        quinn::rustls::pki_types::CertificateDer<'static>,
    ) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = generated.cert.der().clone();
        let key = quinn::rustls::pki_types::PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        );
        let config = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key.into()).unwrap();
        let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        (endpoint, addr, cert)
    }
}
