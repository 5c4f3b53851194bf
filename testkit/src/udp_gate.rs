//! A UDP forwarder that can be shut like a firewall: it listens on a loopback port and forwards
//! datagrams to the relay's QUIC socket while open, and drops them both ways while closed. Tests
//! put it on the relay's HTTPS port number (the relay's own UDP socket elsewhere), so connectors see
//! "UDP blocked" and "UDP back" without needing network namespaces.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// A running gate; dropping it stops forwarding.
#[derive(Debug)]
pub struct UdpGate {
    open: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpGate {
    /// Listens on `listen` and forwards to `target` (closed at first when `open` is false).
    pub async fn start(listen: SocketAddr, target: SocketAddr, open: bool) -> UdpGate {
        let front = UdpSocket::bind(listen)
            .await
            .expect("bind the gate's UDP port");
        let back = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind upstream socket");
        back.connect(target).await.expect("connect upstream");
        let open = Arc::new(AtomicBool::new(open));
        let flag = open.clone();
        let task = tokio::spawn(async move {
            let client: Mutex<Option<SocketAddr>> = Mutex::new(None);
            let mut a = vec![0u8; 65536];
            let mut b = vec![0u8; 65536];
            loop {
                // Why select: datagrams arrive on either side at any time.
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        if flag.load(Ordering::Relaxed) {
                            *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
                            let _ = back.send(&a[..n]).await;
                        }
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { continue };
                        let to = *client.lock().unwrap_or_else(|p| p.into_inner());
                        if let (true, Some(to)) = (flag.load(Ordering::Relaxed), to) {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                }
            }
        });
        UdpGate { open, task }
    }

    /// Lets datagrams through (`true`) or drops them (`false`).
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Relaxed);
    }
}

impl Drop for UdpGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
