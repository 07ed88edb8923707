//! The seam between the engine and the kernel: send one ICMP message,
//! receive one with the kernel's receive time. The engine is generic over
//! it, so rounds, the fast-failure watch and confirmations run in unit
//! tests against a scripted socket under paused tokio time.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;

use super::{IcmpError, SocketKind};

/// One message received.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    /// Its source, when the socket said.
    pub from: Option<IpAddr>,
    /// The kernel's receive time, when it gave one.
    pub kernel: Option<SystemTime>,
}

/// An ICMP socket of one address family.
pub trait IcmpSocket: Send + Sync + 'static {
    /// Sends one ICMP message to `dest`.
    fn send_to(&self, packet: &[u8], dest: IpAddr) -> impl Future<Output = io::Result<()>> + Send;
    /// Waits for the next message; `buf` receives its bytes.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<Received>> + Send;
}

/// The kernel's ICMP socket: raw when allowed, else unprivileged, driven by
/// tokio as a datagram socket (the same readiness and sendto/recvmsg calls,
/// and no unsafe code here).
pub struct KernelSocket {
    socket: tokio::net::UdpSocket,
    /// Room for the timestamp control message, allocated once (one receiver per socket).
    cmsg: std::sync::Mutex<Vec<u8>>,
}

fn current_gid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.gid()).unwrap_or(u32::MAX)
}

impl KernelSocket {
    /// Opens an ICMP (`v6`: ICMPv6) socket, raw first, unprivileged second.
    pub fn open(v6: bool) -> Result<(KernelSocket, SocketKind), IcmpError> {
        let (domain, proto) = if v6 { (Domain::IPV6, Protocol::ICMPV6) } else { (Domain::IPV4, Protocol::ICMPV4) };
        let (socket, kind) = match Socket::new(domain, Type::RAW, Some(proto)) {
            Ok(s) => (s, SocketKind::Raw),
            Err(raw) => match Socket::new(domain, Type::DGRAM, Some(proto)) {
                Ok(s) => (s, SocketKind::Unprivileged),
                Err(dgram) => return Err(IcmpError::NoSocket { raw, dgram, gid: current_gid() }),
            },
        };
        socket.set_nonblocking(true).map_err(IcmpError::Setup)?;
        // A burst of replies from 1,000 targets must not overflow the queue.
        let _ = socket.set_recv_buffer_size(1 << 20);
        // Without kernel timestamps the receiver's own clock is used instead.
        let _ = setsockopt(&socket, sockopt::ReceiveTimestampns, &true);
        let std_socket: std::net::UdpSocket = socket.into();
        let socket = tokio::net::UdpSocket::from_std(std_socket).map_err(IcmpError::Setup)?;
        Ok((KernelSocket { socket, cmsg: std::sync::Mutex::new(nix::cmsg_space!(TimeSpec)) }, kind))
    }
}

fn source(addr: Option<SockaddrStorage>) -> Option<IpAddr> {
    let a = addr?;
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

impl IcmpSocket for KernelSocket {
    async fn send_to(&self, packet: &[u8], dest: IpAddr) -> io::Result<()> {
        self.socket.send_to(packet, SocketAddr::new(dest, 0)).await.map(|_| ())
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let fd = self.socket.as_raw_fd();
        loop {
            self.socket.readable().await?;
            let got = self.socket.try_io(Interest::READABLE, || {
                let mut cmsg = self.cmsg.lock().unwrap_or_else(|p| p.into_inner());
                let mut iov = [IoSliceMut::new(buf)];
                let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut *cmsg), MsgFlags::MSG_DONTWAIT)
                    .map_err(io::Error::from)?;
                let kernel = msg.cmsgs().ok().and_then(|mut it| {
                    it.find_map(|c| match c {
                        ControlMessageOwned::ScmTimestampns(ts) => {
                            Some(UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
                        }
                        _ => None,
                    })
                });
                Ok(Received { len: msg.bytes, from: source(msg.address), kernel })
            });
            match got {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}
